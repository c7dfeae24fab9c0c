"""Amoeba Figure 2: train the 2-D FCNN and draw the uniform, non-uniform and asymmetric boxes of 20 test points.

``python figure2.py --config synthetic2d.yaml`` trains the model of ``configs/synthetic2d.yaml`` (any train.py
option works, e.g. ``--trainer.max_epochs 20``), certifies 20 random correctly classified test points with the
three kinds, and writes ``figure2.png`` into the run's log folder and the same figure under ``figure2/boxes`` in
its TensorBoard. Every box is then checked on a fine grid of points (corners included) to lie inside its point's
decision region; the number of grid points that leave it is printed and must be zero.
"""

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from torch import nn

import train
from bounds.analysis import geometric_mean_width  # noqa: E402
from bounds.certificate import Certificate  # noqa: E402
from bounds.certify import certify  # noqa: E402

KIND_STYLES = {
    "uniform": {"edgecolor": "red", "linestyle": ":", "linewidth": 1.6},
    "nonuniform": {"edgecolor": "cyan", "linestyle": "--", "linewidth": 1.4},
    "asymmetric": {"edgecolor": "gold", "linestyle": "-", "linewidth": 1.6},
}


def box_grid_violations(model: nn.Module, cert: Certificate, x: torch.Tensor, resolution: int = 41) -> torch.Tensor:
    """Count, per example, the points of a ``resolution x resolution`` grid over its box that change class.

    The grid includes the four corners and the edges of ``[x - eps_lower, x + eps_upper]``; only certified
    examples are checked (others count 0).

    Args:
        model: The 2-D classifier.
        cert: Certificate of ``x`` (2-D inputs ``(B, 2)``).
        x: The certified points.
        resolution: Grid points per axis.

    Returns:
        ``(B,)`` counts of grid points whose predicted class differs from the certified label.
    """
    t = torch.linspace(0, 1, resolution)
    grid_u, grid_v = torch.meshgrid(t, t, indexing="ij")
    fractions = torch.stack([grid_u.flatten(), grid_v.flatten()], dim=1)
    lower, upper = x - cert.eps_lower, x + cert.eps_upper
    points = lower[:, None, :] + fractions[None] * (upper - lower)[:, None, :]
    with torch.no_grad():
        predicted = model(points.reshape(-1, 2)).argmax(dim=1).reshape(x.shape[0], -1)
    wrong = (predicted != cert.labels[:, None]).sum(dim=1)
    return torch.where(cert.certified, wrong, torch.zeros_like(wrong))


def draw_figure2(
    model: nn.Module,
    x: torch.Tensor,
    certificates: dict[str, Certificate],
    input_range: tuple[float, float] = (-1.0, 1.0),
    resolution: int = 400,
) -> Figure:
    """Decision regions of a 2-D classifier with the certified boxes of each kind (Amoeba Figure 2).

    Args:
        model: The 2-D classifier.
        x: The certified points ``(B, 2)``.
        certificates: Kind -> certificate of ``x``.
        input_range: Plotted square ``[low, high]^2``.
        resolution: Pixels per axis of the decision-region image.

    Returns:
        The matplotlib figure.
    """
    low, high = input_range
    axis = torch.linspace(low, high, resolution)
    grid_x, grid_y = torch.meshgrid(axis, axis, indexing="xy")
    with torch.no_grad():
        regions = model(torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)).argmax(dim=1)
    regions = regions.reshape(resolution, resolution).numpy()
    fig = Figure(figsize=(7, 7))
    ax = fig.subplots()
    ax.imshow(regions, origin="lower", extent=(low, high, low, high), cmap="tab10", alpha=0.25, vmin=0, vmax=9)
    ax.contour(grid_x.numpy(), grid_y.numpy(), regions, levels=sorted(set(regions.flatten().tolist())),
               colors="black", linewidths=0.6)
    for kind, cert in certificates.items():
        for b in range(x.shape[0]):
            if not bool(cert.certified[b]):
                continue
            corner = (x[b] - cert.eps_lower[b]).tolist()
            size = (cert.eps_lower[b] + cert.eps_upper[b]).tolist()
            ax.add_patch(Rectangle(corner, size[0], size[1], fill=False, **KIND_STYLES[kind]))
    ax.scatter(x[:, 0], x[:, 1], s=8, color="black", zorder=3)
    for b in range(x.shape[0]):
        ax.annotate(str(b), x[b].tolist(), fontsize=7, xytext=(2, 2), textcoords="offset points")
    handles = [Line2D([], [], color=s["edgecolor"], linestyle=s["linestyle"], label=k)
               for k, s in KIND_STYLES.items() if k in certificates]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_title("Certified boxes: uniform (red), non-uniform (cyan), asymmetric (gold)")
    return fig


def main(args: Sequence[str] | None = None, num_points: int = 20, seed: int = 0) -> dict[str, object]:
    """Train the 2-D model, certify ``num_points`` test points, draw and check Figure 2.

    Args:
        args: train.py arguments (``None``: ``sys.argv``); the config must use 2-D inputs.
        num_points: Test points to certify and draw.
        seed: Seed of the random choice of the test points (the certification draws no random numbers).

    Returns:
        ``{"figure": path, "certificates": {...}, "points": x, "violations": {kind: counts}, "model": network}``.

    Raises:
        ValueError: If the configured data is not 2-D.
    """
    cli = train.main(args)
    datamodule = cli.datamodule
    if tuple(datamodule.input_shape) != (2,):
        raise ValueError(f"figure2.py needs 2-D inputs, got input_shape={datamodule.input_shape}")
    model = cli.model.model.eval()
    test_x = torch.stack([torch.as_tensor(datamodule.test_set[i][0]) for i in range(len(datamodule.test_set))])
    test_y = torch.tensor([int(datamodule.test_set[i][1]) for i in range(len(datamodule.test_set))])
    with torch.no_grad():
        correct = (model(test_x).argmax(dim=1) == test_y).nonzero().flatten()
    chosen = correct[torch.randperm(len(correct), generator=torch.Generator().manual_seed(seed))[:num_points]]
    x, y = test_x[chosen], test_y[chosen]
    input_range = tuple(datamodule.input_range)
    certificates = {kind: certify(model, x, y, kind=kind, input_range=input_range)
                    for kind in ("uniform", "nonuniform", "asymmetric")}
    violations = {kind: box_grid_violations(model, cert, x) for kind, cert in certificates.items()}
    fig = draw_figure2(model, x, certificates, input_range)
    out_dir = Path(cli.trainer.log_dir or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "figure2.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    for logger in cli.trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("figure2/boxes", fig, global_step=cli.trainer.global_step)
            logger.experiment.flush()
    for kind, cert in certificates.items():
        width = geometric_mean_width(cert)[cert.certified]
        cli.trainer.print(f"{kind:>10}: certified {int(cert.certified.sum())}/{len(x)}, mean geometric width "
                          f"{float(width.mean()) if len(width) else 0.0:.4f}, grid points outside the decision "
                          f"region: {int(violations[kind].sum())}")
    cli.trainer.print(f"Figure written to {path}")
    return {"figure": path, "certificates": certificates, "points": x, "violations": violations, "model": model}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
