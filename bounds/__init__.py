"""Pure, stateless, batched functions for certified bounds, attacks and robustness scores.

Nothing here imports from the rest of the repository, so every function works on any ``nn.Module``.

- Bounds and certification (Amoeba): :func:`interval_bounds`, :func:`margin_lower_bounds`, :func:`certify`
  -> :class:`Certificate`; CROWN linear relaxation: :func:`crown_margin_bounds`, :func:`linear_margin_bounds`
  (``certify(..., method="crown")``); alpha-CROWN (optimised ReLU slopes): :func:`alpha_crown_margin_bounds`,
  :func:`alpha_linear_margin_bounds` (``certify(..., method="alpha-crown")``).
- Attacks: :func:`fgsm`, :func:`bim`, :func:`pgd`, :func:`carlini_wagner_l2` -> :class:`AttackResult`;
  bound-guided attacks (Amoeba Algorithm 2): :func:`guided_masks`, :func:`guided_attack`.
- Scores: :func:`acts_score` (ACTS), :func:`clever_score` (CLEVER), :func:`overlap_percent`, :func:`score_auroc`.
- Analysis: :func:`geometric_mean_width`, :func:`explorer_map`, :func:`bound_heatmap`,
  :func:`pairwise_cosine_similarity`, :func:`pairwise_wasserstein_distance`, :func:`perturbation_distances`.
"""

from bounds.acts import acts_score
from bounds.alpha_crown import AlphaOptions, alpha_crown_margin_bounds, alpha_linear_margin_bounds
from bounds.alpha_search import AlphaWarmStart
from bounds.analysis import (
    bound_heatmap,
    explorer_map,
    geometric_mean_width,
    mean_certified_width,
    pairwise_cosine_similarity,
    pairwise_wasserstein_distance,
)
from bounds.attacks import AttackResult, bim, carlini_wagner_l2, fgsm, pgd
from bounds.certificate import Certificate
from bounds.certify import certify
from bounds.clever import clever_score
from bounds.crown import LinearMarginBound, crown_margin_bounds, linear_margin_bounds
from bounds.errors import UnsupportedLayerError
from bounds.guided_attack import guided_attack, guided_masks, perturbation_distances
from bounds.interval import check_supported, interval_bounds
from bounds.margins import margin_lower_bounds
from bounds.modes import evaluation_mode
from bounds.normalization import InputNormalization
from bounds.overlap import overlap_percent, score_auroc

__all__ = [
    "AlphaOptions",
    "AlphaWarmStart",
    "AttackResult",
    "Certificate",
    "InputNormalization",
    "LinearMarginBound",
    "UnsupportedLayerError",
    "acts_score",
    "alpha_crown_margin_bounds",
    "alpha_linear_margin_bounds",
    "bim",
    "bound_heatmap",
    "carlini_wagner_l2",
    "certify",
    "check_supported",
    "clever_score",
    "crown_margin_bounds",
    "evaluation_mode",
    "explorer_map",
    "fgsm",
    "geometric_mean_width",
    "guided_attack",
    "guided_masks",
    "interval_bounds",
    "linear_margin_bounds",
    "margin_lower_bounds",
    "mean_certified_width",
    "overlap_percent",
    "pairwise_cosine_similarity",
    "pairwise_wasserstein_distance",
    "perturbation_distances",
    "pgd",
    "score_auroc",
]
