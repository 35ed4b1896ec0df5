"""Evaluation metrics: anomaly localization and disentanglement (pure).

Import as ``from eval import metrics``; the package re-exports the public
functions of ``localization``, ``pixel_scores`` and the disentanglement
metrics (one module each: ``factor_vae``, ``beta_vae``, ``mig``, ``dci``,
``sap``; their shared sampling in ``sampling``; the suite and the code table
in ``disentanglement``). Dummy ground-truth data for tests lives in
``eval.metrics.testing``.
"""

from eval.metrics.beta_vae import compute_beta_vae
from eval.metrics.dci import compute_dci
from eval.metrics.disentanglement import (
  MetricResult,
  compute_all,
  evaluate_suite,
  suite_sample_sizes,
  tabulate,
)
from eval.metrics.factor_vae import (
  FACTOR_VAE_CONVENTIONS,
  FactorVAEConvention,
  compute_factor_vae,
)
from eval.metrics.localization import (
  aupro,
  best_iou,
  image_auroc,
  localization_report,
  pixel_auroc,
  roc_curve,
)
from eval.metrics.mig import compute_mig
from eval.metrics.pixel_scores import (
  PixelScores,
  PixelScoresState,
  pixel_scores,
)
from eval.metrics.sap import compute_sap

__all__ = [
  "FACTOR_VAE_CONVENTIONS",
  "FactorVAEConvention",
  "MetricResult",
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
  "evaluate_suite",
  "image_auroc",
  "localization_report",
  "pixel_auroc",
  "pixel_scores",
  "roc_curve",
  "suite_sample_sizes",
  "tabulate",
]
