"""figure2.py: every certified box of the 2-D model stays inside its point's decision region."""

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)

import figure2


def test_figure2_boxes_stay_in_their_decision_regions(tmp_path: Path) -> None:
    result = figure2.main(["--config", "synthetic2d.yaml", "--trainer.max_epochs=6",
                           "--model.init_args.eval_attack_steps=2", "--trainer.enable_progress_bar=false",
                           "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    certificates, points = result["certificates"], result["points"]
    assert points.shape == (20, 2)
    for kind, cert in certificates.items():
        assert int(cert.certified.sum()) >= 15, kind
        assert int(result["violations"][kind].sum()) == 0, kind
    # Asymmetric boxes are at least as large as the symmetric ones (the figure's point).
    widths = {k: (c.eps_lower + c.eps_upper).prod(dim=1) for k, c in certificates.items()}
    both = certificates["asymmetric"].certified & certificates["uniform"].certified
    assert bool((widths["asymmetric"][both] >= widths["uniform"][both] * (1 - 1e-6)).all())
    # A much finer grid inside every certified box agrees.
    model = result["model"]
    for kind, cert in certificates.items():
        assert int(figure2.box_grid_violations(model, cert, points, resolution=101).sum()) == 0, kind
    assert Path(result["figure"]).stat().st_size > 0
    run_dir = Path(result["figure"]).parent
    events = EventAccumulator(str(run_dir), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload()
    assert "figure2/boxes" in events.Tags()["images"]
    assert torch.isfinite(points).all()
