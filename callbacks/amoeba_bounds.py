"""Lightning callback that certifies a fixed validation subset with Amoeba bounds and logs widths and maps."""

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from typing_extensions import override

from bounds.analysis import (
    bound_heatmap,
    certified_fraction,
    explorer_map,
    geometric_mean_width,
    mean_width_over_certified,
    width_ratios,
)
from bounds.certificate import KINDS, Kind
from bounds.certify import certify
from bounds.errors import UnsupportedLayerError
from bounds.interval import check_supported
from bounds.margins import METHODS, Method
from callbacks.arguments import check_positive
from callbacks.base import ValidationSubsetCallback
from callbacks.figures import colormap_grid
from callbacks.gathering import Rows

_FIELDS = ("width", "certified", "eps_lower", "eps_upper")
_IMAGE_FIELDS = ("inputs", "heatmap", "explorer")


def _images(kind: str) -> str:
    """The name of the store of ``kind``'s image rows."""
    return f"{kind}/images"


class AmoebaBoundCallback(ValidationSubsetCallback):
    """Certify the first ``num_examples`` validation examples every ``every_n_epochs`` epochs and log the bounds.

    For each kind (``"uniform"``, ``"nonuniform"``, ``"asymmetric"``) the callback calls
    :func:`bounds.certify.certify` on the selected examples of each validation batch
    (``on_validation_batch_end``), gathers the per-example results from every rank and logs, in
    ``on_validation_epoch_end``:

    - ``val/amoeba/<kind>/mean_width``: mean geometric-mean box width over the certified examples
      (0 when none is certified);
    - ``val/amoeba/<kind>/certified_fraction``: certified share of the subset;
    - ``val/amoeba/ratio_asymmetric_uniform`` and ``val/amoeba/ratio_asymmetric_nonuniform``: ratio of the
      mean widths, when both kinds run and the denominator is positive;
    - TensorBoard histograms ``val/amoeba/<kind>/eps_lower``, ``.../eps_upper`` (per-pixel radii of the
      certified examples) and ``.../width`` (per-example geometric-mean widths);
    - TensorBoard images of the first ``num_image_examples`` examples: ``val/amoeba/inputs``,
      ``val/amoeba/<kind>/heatmap`` (``1 - (eps1 + eps2)``, Amoeba Figure 4) and
      ``val/amoeba/asymmetric/explorer`` (``eps2 - eps1``, diverging colours; the symmetric kinds have none).
      Histograms and images go to the ``TensorBoardLogger`` among ``trainer.loggers``; without one they are
      skipped, with one warning (the scalars reach every logger).

    **Labels**: the true labels are certified, so a misclassified example counts as not certified and
    ``certified_fraction`` is the verified accuracy of the subset at margin ``delta``.

    **Subset**: the examples whose index in the validation dataset (first validation dataloader) is below
    ``num_examples``, the same on every epoch and for every world size (under DDP each rank certifies its own
    share, identified through its ``DistributedSampler``). Images show the examples with index below
    ``num_image_examples``.

    **Schedule**: during ``fit`` it runs on epochs ``0, n, 2n, ...`` (``epoch % every_n_epochs == 0``), never
    during the sanity check or a ``fast_dev_run`` (its loggers are off), and at most once per global step (a
    resumed run does not log a step twice); under ``trainer.validate`` it always runs.

    **Network**: ``model_attribute`` if given, else ``pl_module.model`` if it is an ``nn.Module``, else
    ``pl_module``. Its forward must trace into operators the bound engine supports (:mod:`bounds.engine`:
    custom forwards, functional calls and residual connections are fine, with ``ibp`` and ``crown``; ``alpha-crown``
    needs a chain of layers);
    otherwise one warning names the operator, its path and source line, and the callback does nothing for the
    rest of the run (training goes on). Any error raised while certifying is turned into a warning too, and the
    callback stops.

    **Side effects**: none on training: the network's submodule modes, its parameters' ``requires_grad`` flags
    and the global ``torch``/``numpy``/``random`` states are restored, and no gradient is written. Works inside
    ``fit`` (``no_grad``), under ``trainer.validate`` (``inference_mode``) and under DDP.

    **Cost** (defaults, measured by ``benchmarks/bench_callbacks.py`` on the quickstart ``robust_lenet``): 16
    examples, uniform and asymmetric, every 4th epoch; see that script for the measured share of an epoch.

    Args:
        kinds: Certification kinds to run (distinct, any of ``"uniform"``, ``"nonuniform"``, ``"asymmetric"``).
        num_examples: Size of the fixed subset: validation examples with dataset index ``< num_examples``.
        every_n_epochs: Run on epochs divisible by this during ``fit``.
        batch_size: Examples certified together (``None``: a validation batch's selected examples at once).
        delta: Margin the certificates prove (``lower[y] - upper[j] >= delta``).
        clip_to_input_range: Certify boxes intersected with the input range (widths of the clipped boxes).
        num_image_examples: Examples shown in the image grids (``0``: no images); capped at ``num_examples``.
        seed: Seed passed to :func:`~bounds.certify.certify`.
        model_attribute: Dotted attribute path of the network inside the LightningModule, or a list of them
            chained in order (e.g. ``["normalize", "net"]`` when ``forward`` applies ``normalize`` then ``net``).
        input_range: ``(low, high)`` of valid inputs; default the datamodule's ``input_range``, else the module's
            ``hparams.input_range``, else ``(-1, 1)`` (the bisection bracket; boxes are not clipped unless asked).
        iterations: Augmented-Lagrangian iterations of the non-uniform and asymmetric kinds (cost is about
            linear in it).
        method: Bound method: ``"ibp"`` (interval propagation), ``"crown"`` (linear relaxation: much wider
            boxes, slower: about 0.13 s per LeNet example for the asymmetric kind on one CPU thread, README) or
            ``"alpha-crown"`` (CROWN with optimised ReLU slopes, :mod:`bounds.alpha_crown`: boxes never smaller than
            ``"crown"``'s, slower).
        crown_rounds: CROWN relaxations per example (``method="crown"`` or ``"alpha-crown"``; fewer: faster,
            narrower boxes).

    Raises:
        ValueError: On invalid arguments.
    """

    work: ClassVar[str] = "certification"
    prefers_inner_model: ClassVar[bool] = True

    def __init__(
        self,
        kinds: Sequence[Kind] = ("uniform", "asymmetric"),
        num_examples: int = 16,
        every_n_epochs: int = 4,
        batch_size: int | None = None,
        delta: float = 1e-4,
        clip_to_input_range: bool = False,
        num_image_examples: int = 8,
        seed: int = 0,
        model_attribute: str | Sequence[str] | None = None,
        input_range: tuple[float, float] | None = None,
        iterations: int = 100,
        method: Method = "ibp",
        crown_rounds: int = 4,
    ) -> None:
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        if not kinds or len(set(kinds)) != len(kinds) or any(kind not in KINDS for kind in kinds):
            raise ValueError(f"kinds must be distinct values among {KINDS}, got {kinds!r}")
        if batch_size is not None:
            check_positive("batch_size", batch_size)
        if not delta > 0:
            raise ValueError(f"delta must be positive, got {delta!r}")
        check_positive("num_image_examples", num_image_examples, minimum=0)
        check_positive("iterations", iterations, minimum=0)
        check_positive("crown_rounds", crown_rounds)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        stores = {**{kind: _FIELDS for kind in kinds}, **{_images(kind): _IMAGE_FIELDS for kind in kinds}}
        super().__init__(stores, num_examples=num_examples, every_n_epochs=every_n_epochs, seed=seed,
                         model_attribute=model_attribute, input_range=input_range)
        self.kinds: tuple[str, ...] = kinds
        self.batch_size = batch_size
        self.delta = float(delta)
        self.clip_to_input_range = bool(clip_to_input_range)
        self.num_image_examples = min(num_image_examples, num_examples)
        self.iterations = iterations
        self.method = method
        self.crown_rounds = crown_rounds
        self._range: tuple[float, float] = (-1.0, 1.0)
        self._uses_inner = False
        self._warned_unsupported = False

    # ----------------------------------------------------------------------------------------- state

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {"kinds": self.kinds}

    @override
    def _extra_state(self) -> dict[str, Any]:
        """The certification kinds are part of the subset's definition."""
        return {"kinds": list(self.kinds)}

    # ----------------------------------------------------------------------------------------- setup

    @override
    def check_network(self, network: nn.Module, where: str) -> bool:
        """Check that the bound engine supports the network (else warn once: the callback stays idle)."""
        self._uses_inner = where == "pl_module.model"
        try:
            check_supported(network)
        except UnsupportedLayerError as error:
            if not self._warned_unsupported:
                self._warned_unsupported = True
                source = f" ({error.source})" if error.source else ""
                reason = f": {error.reason}" if error.reason else ""
                rank_zero_warn(
                    f"{type(self).__name__} is disabled: the bound engine cannot bound {where}: unsupported "
                    f"operator {error.layer_type} at '{self._qualified_path(error.path)}'{source}{reason}. "
                    "Certification needs a network whose forward traces into supported operators (README: "
                    "'Supported operators'); pass model_attribute to name another one. Training continues."
                )
            return False
        return True

    @override
    def complete_input_range(self, found: tuple[float, float] | None) -> tuple[float, float]:
        """The found range, else ``(-1, 1)`` (the bisection bracket); clipping needs a known range."""
        if found is None and self.clip_to_input_range:
            raise ValueError(f"{type(self).__name__}(clip_to_input_range=True) needs input_range: pass it, or use "
                             "a datamodule or module that defines input_range")
        return found if found is not None else (-1.0, 1.0)

    def _qualified_path(self, path: str) -> str:
        """The dotted path of a layer inside the LightningModule (``pl_module.net.3``) from its path in the network."""
        names = self.model_attribute
        if names is not None and len(names) > 1:
            head, _, rest = path.partition(".")
            if head.isdigit() and int(head) < len(names):
                return f"pl_module.{names[int(head)]}" + (f".{rest}" if rest else "")
            return path or "<root>"
        inner = "pl_module.model" if self._uses_inner else "pl_module"
        base = f"pl_module.{names[0]}" if names is not None else inner
        return f"{base}.{path}" if path else base

    # ----------------------------------------------------------------------------------------- rows

    def certify_batch(self, x: Tensor, y: Tensor, index: Tensor) -> None:
        """Certify examples ``x`` (labels ``y``, dataset indices ``index``) with every kind and store the results."""
        self.process_batch(x, y, index)

    @override
    def compute_rows(self, network: nn.Module, x: Tensor, y: Tensor | None, index: Tensor) -> dict[str, Rows]:
        """Certify ``x`` with every kind: widths, certified flags and radii, and the image rows of the shown examples.

        Override point for subclasses that want other per-example quantities.
        """
        assert y is not None
        y = y.long()
        show = index < self.num_image_examples
        rows: dict[str, Rows] = {}
        for kind in self.kinds:
            cert = certify(network, x, y, kind=kind, delta=self.delta, clip_to_input_range=self.clip_to_input_range,
                           input_range=self._range, seed=self.seed, iterations=self.iterations,
                           batch_size=self.batch_size, method=self.method, crown_rounds=self.crown_rounds)
            rows[kind] = {"index": index, "width": geometric_mean_width(cert), "certified": cert.certified,
                          "eps_lower": cert.eps_lower, "eps_upper": cert.eps_upper}
            if bool(show.any()):
                mask = show.to(x.device)
                rows[_images(kind)] = {"index": index[show], "inputs": x[mask], "heatmap": bound_heatmap(cert)[mask],
                                       "explorer": explorer_map(cert)[mask]}
        return rows

    # ----------------------------------------------------------------------------------------- summaries

    @override
    def summarise(self, results: dict[str, dict[str, Tensor]]) -> dict[str, float]:
        """Mean certified width and certified share per kind, and the asymmetric-to-symmetric width ratios."""
        scalars: dict[str, float] = {}
        mean_width: dict[str, float] = {}
        for kind in self.kinds:
            result = results[kind]
            certified = result["certified"][:, 0] > 0.5 if result["index"].numel() else torch.zeros(0, dtype=torch.bool)
            widths = result["width"][:, 0] if result["index"].numel() else torch.zeros(0)
            mean_width[kind] = mean_width_over_certified(widths, certified)
            scalars[f"val/amoeba/{kind}/mean_width"] = mean_width[kind]
            scalars[f"val/amoeba/{kind}/certified_fraction"] = certified_fraction(certified)
        for other, ratio in width_ratios(mean_width).items():
            scalars[f"val/amoeba/ratio_asymmetric_{other}"] = ratio
        return scalars

    @override
    def write_tensorboard(self, writer: SummaryWriter, results: dict[str, dict[str, Tensor]], step: int) -> None:
        """Histograms of the certified examples' radii and widths; heatmap, Explorer and input grids."""
        for kind in self.kinds:
            result = results[kind]
            if result["index"].numel() == 0:
                continue
            certified = result["certified"][:, 0] > 0.5
            if bool(certified.any()):
                writer.add_histogram(f"val/amoeba/{kind}/eps_lower", result["eps_lower"][certified].cpu(), step)
                writer.add_histogram(f"val/amoeba/{kind}/eps_upper", result["eps_upper"][certified].cpu(), step)
                writer.add_histogram(f"val/amoeba/{kind}/width", result["width"][certified, 0].cpu(), step)
        shape = self._image_shape()
        for position, kind in enumerate(self.kinds):
            picture = results[_images(kind)]
            if picture["index"].numel() == 0 or shape is None:
                continue
            count = picture["index"].numel()
            if position == 0:
                low, high = self._range
                inputs = ((picture["inputs"].view(count, *shape) - low) / (high - low)).clamp(0, 1).cpu()
                writer.add_image("val/amoeba/inputs", colormap_grid(inputs, cmap="gray", scaling="full"), step)
            writer.add_image(f"val/amoeba/{kind}/heatmap", colormap_grid(picture["heatmap"].view(count, *shape),
                                                                         cmap="magma"), step)
            if kind == "asymmetric":
                writer.add_image(f"val/amoeba/{kind}/explorer", colormap_grid(picture["explorer"].view(count, *shape),
                                                                              cmap="coolwarm", symmetric=True), step)

    def _image_shape(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` of the validation inputs (``(H, W)`` as one channel), ``None`` for non-image inputs."""
        shape = self._input_shape
        if shape is not None and len(shape) == 2:
            return (1, *shape)
        return shape if shape is not None and len(shape) == 3 else None
