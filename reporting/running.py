"""Certification, the attacks report and the ACTS report as one Lightning test loop (the running of ``certify.py``).

Running through ``trainer.test`` lets ``certify.py`` use devices, strategies and nodes like training does. This is
the one LightningModule outside :mod:`lightning_modules`: it trains nothing, it runs the reports.
"""

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from bounds.certificate import Certificate
from bounds.certify import certify
from callbacks.gathering import Rows, gather_unique_rows
from reporting.acts.running import ACTSProtocol
from reporting.attacks.running import AttackReport, select_certificate
from reporting.options import CertifyOptions


class CertificationTask(LightningModule):
    """Certify every test batch with each requested kind; optionally attack and ACTS-score subsets of it.

    After ``trainer.test(task, dataloaders=...)`` these attributes hold the gathered results (the same on every
    rank), CPU tensors sorted by dataset index, every example once (:func:`gather_unique_rows`):

    - ``results``: kind -> ``index``, ``eps_lower``, ``eps_upper``, ``certified``, ``seconds`` (per example: the
      batch's wall time divided by its size);
    - ``attack_results``: ``"<attack>/<variant>"`` -> rows of :meth:`AttackReport.run` (empty without a report);
    - ``acts_results``: rows of :meth:`ACTSProtocol.run` (empty without a protocol).

    The guided attacks reuse the batch's certificates: a kind they need (``nonuniform``, ``asymmetric``) that
    ``kinds`` lacks is certified for the attacked examples only, and not reported as a certification result.
    ``kinds`` may be empty (e.g. only the ACTS report on an ImageNet model).

    Progress: after each batch the test progress bar (Lightning's TQDM bar) shows the examples per second of this
    rank and the estimated time left, and after the first batch an estimate of the whole run's time is logged
    (rank 0): the seconds per example of the certification, the attacks and the ACTS protocol so far (after the
    first batch: that batch's) times the number of examples each part runs on (``num_examples``, and the sizes of
    ``attack_indices`` and ``acts_indices``), divided by the number of ranks.

    Args:
        model: The classifier to certify (an ``nn.Module`` mapping inputs to logits).
        options: The ``certify`` options: the kinds, delta, clipping and bound method of the certification, and the
            two reports (each runs on the first ``num_examples`` of ``indices`` when enabled).
        indices: Dataset indices of the test loop, in order (the reports' subsets are taken from its start).
        input_range: ``(low, high)`` of valid inputs.
    """

    def __init__(self, model: nn.Module, options: CertifyOptions, indices: Sequence[int],
                 input_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.model = model
        self.options = options
        self.kinds = list(options.kinds)
        self.input_range = (float(input_range[0]), float(input_range[1]))
        attacks, acts = options.attacks, options.acts
        self.attack_report = AttackReport(attacks, self.input_range, options.seed) if attacks.enabled else None
        self.attack_indices = set(int(i) for i in indices[: attacks.num_examples])
        self.acts_protocol = ACTSProtocol(acts, self.input_range, options.seed) if acts.enabled else None
        self.acts_indices = set(int(i) for i in indices[: acts.num_examples])
        self.num_examples = len(indices)
        self._parts: dict[str, list[Rows]] = {}
        self._attack_parts: dict[str, list[Rows]] = {}
        self._acts_parts: list[Rows] = []
        self._clock: dict[str, float] = {}
        self._done = 0
        self.results: dict[str, Rows] = {}
        self.attack_results: dict[str, Rows] = {}
        self.acts_results: Rows = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped model."""
        return self.model(x)

    def on_test_epoch_start(self) -> None:
        """Forget the results of an earlier run."""
        self._parts = {kind: [] for kind in self.kinds}
        self._attack_parts = {}
        self._acts_parts = []
        self.results, self.attack_results, self.acts_results = {}, {}, {}
        self._clock = {"start": time.perf_counter(), "certify": 0.0, "attacks": 0.0, "acts": 0.0}
        self._done = 0

    def _certify(self, x: Tensor, y: Tensor, kind: str) -> Certificate:
        o = self.options
        return certify(self.model, x, y, kind=kind, delta=o.delta, clip_to_input_range=o.clip_to_input_range,
                       input_range=self.input_range, method=o.method, crown_rounds=o.crown_rounds)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Certify one batch with every kind, then run the reports on their subsets; keep per-example rows."""
        with torch.inference_mode(False):
            index, x, y = (t.clone() for t in batch)
        tick = self._tick(x)
        certificates: dict[str, Certificate] = {}
        for kind in self.kinds:
            cert = self._certify(x, y, kind)
            certificates[kind] = cert
            self._parts[kind].append(
                {
                    "index": index.detach(),
                    "eps_lower": cert.eps_lower.detach(),
                    "eps_upper": cert.eps_upper.detach(),
                    "certified": cert.certified.detach(),
                    "seconds": torch.full_like(index, cert.seconds_per_example, dtype=torch.float64),
                }
            )
        tick = self._account("certify", len(index) if self.kinds else 0, tick, x)
        with torch.inference_mode(False):
            if self.attack_report is not None:
                rows = self._subset(index, self.attack_indices)
                if rows.numel():
                    guides = {kind: select_certificate(certificates[kind], rows) if kind in certificates
                              else self._certify(x[rows], y[rows], kind)
                              for kind in ("nonuniform", "asymmetric")}
                    results = self.attack_report.run(self.model, index[rows], x[rows], y[rows], guides)
                    for key, value in results.items():
                        self._attack_parts.setdefault(key, []).append(value)
                tick = self._account("attacks", rows.numel(), tick, x)
            if self.acts_protocol is not None:
                rows = self._subset(index, self.acts_indices)
                if rows.numel():
                    self._acts_parts.append(self.acts_protocol.run(self.model, index[rows], x[rows], y[rows]))
                self._account("acts", rows.numel(), tick, x)
        self._done += len(index)

    @staticmethod
    def _tick(x: Tensor) -> float:
        """The wall-clock time after the queued GPU work on ``x``'s device."""
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter()

    def _account(self, part: str, count: int, since: float, x: Tensor) -> float:
        """Add the time since ``since`` and ``count`` examples to ``part``'s running totals; return the time now."""
        now = self._tick(x)
        self._clock[part] = self._clock.get(part, 0.0) + now - since
        self._clock[f"{part}_count"] = self._clock.get(f"{part}_count", 0.0) + count
        return now

    def estimated_seconds(self) -> float:
        """Estimated wall-clock time of the whole test loop on this rank, from the running seconds per example."""
        world = max(self.trainer.world_size, 1)
        total = self.num_examples
        sizes = {"certify": total if self.kinds else 0,
                 "attacks": min(len(self.attack_indices), total) if self.attack_report is not None else 0,
                 "acts": min(len(self.acts_indices), total) if self.acts_protocol is not None else 0}
        seconds = 0.0
        for part, size in sizes.items():
            done = self._clock.get(f"{part}_count", 0.0)
            if done > 0:
                seconds += self._clock[part] / done * size / world
        return seconds

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Show examples per second in the progress bar; log the estimated total time after the first batch."""
        elapsed = time.perf_counter() - self._clock.get("start", time.perf_counter())
        rate = self._done / max(elapsed, 1e-9)
        estimate = self.estimated_seconds()
        left = timedelta(seconds=round(max(estimate - elapsed, 0.0)))
        bar = self.trainer.progress_bar_callback
        if isinstance(bar, TQDMProgressBar):
            try:
                bar.test_progress_bar.set_postfix_str(f"{rate:.3g} examples/s, about {left} left")
            except TypeError:  # the bar is not shown (e.g. disabled in this process)
                pass
        if batch_idx == 0:
            parts = ", ".join(f"{part} {self._clock[part] / self._clock[f'{part}_count']:.3g} s/example"
                              for part in ("certify", "attacks", "acts") if self._clock.get(f"{part}_count", 0) > 0)
            rank_zero_info(f"certify: first batch of {self._done} examples in {elapsed:.1f} s ({rate:.3g} examples/s; "
                           f"{parts or 'nothing to run'}); estimated total time {timedelta(seconds=round(estimate))}")

    @staticmethod
    def _subset(index: Tensor, chosen: set[int]) -> Tensor:
        """Positions in the batch whose dataset index is in ``chosen``."""
        keep = [position for position, value in enumerate(index.tolist()) if value in chosen]
        return torch.tensor(keep, dtype=torch.long, device=index.device)

    def on_test_epoch_end(self) -> None:
        """Gather every rank's rows (all ranks take part, in the same order), de-duplicated by index and sorted."""
        world_size = self.trainer.world_size
        for kind, parts in self._parts.items():
            self.results[kind] = gather_unique_rows(parts, world_size)
        if self.attack_report is not None:
            # Every rank must take part in the same collectives: the keys come from the report, not the local rows.
            for key in self.attack_report.keys():
                self.attack_results[key] = gather_unique_rows(self._attack_parts.get(key, []), world_size)
        if self.acts_protocol is not None:
            self.acts_results = gather_unique_rows(self._acts_parts, world_size)
