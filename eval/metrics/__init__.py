"""Evaluation metrics: anomaly localization and disentanglement (pure).

Import as ``from eval import metrics``; the package re-exports the public
functions of ``localization``, ``pixel_scores`` and ``disentanglement``.
Dummy ground-truth data for tests lives in ``eval.metrics.testing``.
"""

from eval.metrics.disentanglement import (
  FACTOR_VAE_CONVENTIONS,
  FactorVAEConvention,
  compute_all,
  compute_beta_vae,
  compute_dci,
  compute_factor_vae,
  compute_mig,
  compute_sap,
  tabulate,
)
from eval.metrics.localization import (
  aupro,
  best_iou,
  image_auroc,
  localization_report,
  pixel_auroc,
  roc_curve,
)
from eval.metrics.pixel_scores import (
  PixelScores,
  PixelScoresState,
  pixel_scores,
)

__all__ = [
  "FACTOR_VAE_CONVENTIONS",
  "FactorVAEConvention",
  "PixelScores",
  "PixelScoresState",
  "aupro",
  "best_iou",
  "compute_all",
  "compute_beta_vae",
  "compute_dci",
  "compute_factor_vae",
  "compute_mig",
  "compute_sap",
  "image_auroc",
  "localization_report",
  "pixel_auroc",
  "pixel_scores",
  "roc_curve",
  "tabulate",
]
