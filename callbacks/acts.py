"""Lightning callback that logs ACTS scores (adversarial converging time) of a fixed validation subset."""

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from bounds.acts import DEFAULT_C, acts_score
from bounds.attacks import bim, fgsm, per_example_pgd
from bounds.overlap import overlap_percent, score_auroc
from callbacks.arguments import check_positive
from callbacks.base import ValidationSubsetCallback
from callbacks.gathering import Rows

_STORES = {"scores": ("score", "success")}


class ACTSCallback(ValidationSubsetCallback):
    """Log Adversarial Converging Time Scores (ACTS, :func:`bounds.acts.acts_score`) of a fixed validation subset.

    On the examples of the fixed subset the callback runs the attack (FGSM, BIM or l_inf PGD) away from the
    model's own prediction, computes each example's ACTS from the attack's steps, gathers the scores from every
    rank and logs, in ``on_validation_epoch_end``:

    - ``val/acts/mean`` and ``val/acts/median``: of all scores (an example no competing class can reach scores
      ``C = bounds.acts.DEFAULT_C``);
    - ``val/acts/unreachable_fraction``: share of examples scored ``C``;
    - ``val/acts/attack_success_rate``: share of examples whose prediction the attack changed;
    - ``val/acts/overlap_percent``: Overlap% (ACTS paper Section 4.2, :func:`bounds.overlap.overlap_percent`)
      of the scores of attacked and surviving examples, on ``bins`` bins spanning the scores below ``C``;
    - ``val/acts/auroc``: AUROC of the score as a predictor of attack success (:func:`bounds.overlap.score_auroc`),
      only when both attacked and surviving examples occur;
    - TensorBoard histogram ``val/acts/scores`` of the scores below ``C`` (skipped, with one warning, when no
      logger is a ``TensorBoardLogger``).

    **Labels**: ACTS is defined around the predicted class (Eq. 1), so the attack moves away from the model's
    prediction and "success" means the prediction changed (misclassified examples are not counted as attacked).

    **Subset, schedule, side effects**: as :class:`~callbacks.AmoebaBoundCallback`: the validation examples with
    dataset index below ``num_examples`` (the same for every world size), epochs ``epoch % every_n_epochs == 0``
    during ``fit``, always under ``trainer.validate``, never in the sanity check or a ``fast_dev_run``; RNG
    states, modes and ``requires_grad`` flags are restored. PGD's random start is drawn per example from
    ``(seed, index)``, so scores do not depend on batching or on the number of ranks, and are the same on every
    epoch for the same weights.

    **Network**: ``model_attribute`` if given, else the LightningModule itself (its ``forward`` must map inputs
    to logits); any architecture works, no interval propagation is involved (``torch.func.jvp`` must support
    its layers). An error raised while scoring is turned into a warning and the callback stops.

    Args:
        attack: ``"fgsm"``, ``"bim"`` or ``"pgd"`` (l_inf).
        eps: l_inf radius of the attack.
        step_size: Step of BIM/PGD (default ``eps / 2``, the paper's setting).
        steps: Steps of BIM/PGD (3 in the paper).
        top_k: Number of most probable competing classes in ACTS's minimum (10 in the paper).
        num_examples: Size of the fixed subset: validation examples with dataset index ``< num_examples``.
        every_n_epochs: Run on epochs divisible by this during ``fit``.
        bins: Bins of the Overlap% histograms and of the TensorBoard histogram.
        seed: Seed of PGD's per-example random starts.
        model_attribute: Dotted attribute path of the classifier inside the LightningModule, or a list of them
            chained in order; default the LightningModule itself.
        input_range: ``(low, high)`` the attack clamps to; default the datamodule's ``input_range``, else the
            module's ``hparams.input_range``, else unbounded.

    Raises:
        ValueError: On invalid arguments.
    """

    work: ClassVar[str] = "scoring"

    def __init__(
        self,
        attack: Literal["fgsm", "bim", "pgd"] = "pgd",
        eps: float = 0.1,
        step_size: float | None = None,
        steps: int = 3,
        top_k: int = 10,
        num_examples: int = 100,
        every_n_epochs: int = 1,
        bins: int = 20,
        seed: int = 0,
        model_attribute: str | Sequence[str] | None = None,
        input_range: tuple[float, float] | None = None,
    ) -> None:
        if attack not in ("fgsm", "bim", "pgd"):
            raise ValueError(f"attack must be 'fgsm', 'bim' or 'pgd', got {attack!r}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be positive or None, got {step_size!r}")
        check_positive("steps", steps)
        check_positive("top_k", top_k)
        check_positive("bins", bins)
        super().__init__(_STORES, num_examples=num_examples, every_n_epochs=every_n_epochs, seed=seed,
                         model_attribute=model_attribute, input_range=input_range)
        self.attack = attack
        self.eps = float(eps)
        self.step_size = float(step_size) if step_size is not None else self.eps / 2
        self.steps = steps
        self.top_k = top_k
        self.bins = bins

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"attack": self.attack, "eps": self.eps}

    def score_batch(self, x: Tensor, index: Tensor) -> None:
        """Attack examples ``x`` (dataset indices ``index``), score them and store scores and attack outcomes."""
        self.process_batch(x, None, index)

    @override
    def compute_rows(self, network: nn.Module, x: Tensor, y: Tensor | None, index: Tensor) -> dict[str, Rows]:
        """Attack ``x`` away from the model's prediction and score it: rows ``score`` and ``success``.

        Override point for subclasses that want another attack or score.
        """
        with torch.no_grad():
            predicted = network(x).argmax(dim=1)
        if self.attack == "pgd":
            result = per_example_pgd(network, x, predicted, index, eps=self.eps, step_size=self.step_size,
                                     steps=self.steps, seed=self.seed, input_range=self._range)
        elif self.attack == "bim":
            result = bim(network, x, predicted, eps=self.eps, step_size=self.step_size, steps=self.steps,
                         input_range=self._range)
        else:
            result = fgsm(network, x, predicted, self.eps, input_range=self._range)
        scores = acts_score(network, x, predicted, attack=result, top_k=self.top_k)
        return {"scores": {"index": index, "score": scores, "success": result.success}}

    @staticmethod
    def _scores(results: dict[str, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """The gathered scores (float64, CPU) and attack outcomes (bool)."""
        result = results["scores"]
        return result["score"][:, 0].double().cpu(), result["success"][:, 0].cpu() > 0.5

    @override
    def summarise(self, results: dict[str, dict[str, Tensor]]) -> dict[str, float] | None:
        """Mean, median, unreachable share, attack success rate, Overlap% and (when defined) AUROC of the scores."""
        if results["scores"]["index"].numel() == 0:
            return None
        scores, attacked = self._scores(results)
        reachable = scores < DEFAULT_C
        scalars = {
            "val/acts/mean": float(scores.mean()),
            "val/acts/median": float(scores.median()),
            "val/acts/unreachable_fraction": float((~reachable).double().mean()),
            "val/acts/attack_success_rate": float(attacked.double().mean()),
        }
        finite = scores[reachable]
        score_range = (float(finite.min()), float(finite.max())) if finite.numel() else None
        scalars["val/acts/overlap_percent"] = overlap_percent(scores, attacked, bins=self.bins, range=score_range)
        auroc = score_auroc(scores, attacked)
        if not math.isnan(auroc):
            scalars["val/acts/auroc"] = auroc
        return scalars

    @override
    def write_tensorboard(self, writer: SummaryWriter, results: dict[str, dict[str, Tensor]], step: int) -> None:
        """The histogram of the reachable scores (below ``C``)."""
        scores, _ = self._scores(results)
        finite = scores[scores < DEFAULT_C]
        if finite.numel():
            writer.add_histogram("val/acts/scores", finite.float(), step, bins="auto")
