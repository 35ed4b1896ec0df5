"""Disentanglement, completeness and informativeness (DCI).

Inputs, checks and sampling: ``eval.metrics.sampling``.

References:
  Eastwood & Williams, "A Framework for the Quantitative Evaluation of
  Disentangled Representations", ICLR 2018, section 2.
  google-research/disentanglement_lib: evaluation/metrics/dci.py.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.stats
import sklearn.ensemble

from eval.metrics import sampling

__all__ = ["IMPORTANCE_MODELS", "compute_dci"]

_LOG = logging.getLogger(__name__)

# The classifiers whose feature importances form the DCI matrix.
IMPORTANCE_MODELS = ("gbt", "random_forest")


def _fit_factor(
  codes_train: np.ndarray,
  factor_train: np.ndarray,
  codes_test: np.ndarray,
  factor_test: np.ndarray,
  importance: str,
  seed: int,
) -> tuple[np.ndarray, float, float]:
  """Importances ``[D]`` and train/test accuracy of one factor's classifier."""
  if importance == "gbt":  # disentanglement_lib's, with its defaults.
    model = sklearn.ensemble.GradientBoostingClassifier(random_state=seed)
  else:
    model = sklearn.ensemble.RandomForestClassifier(
      n_estimators=50, max_features=None, min_samples_leaf=2, random_state=seed
    )
  model.fit(codes_train, factor_train)
  return (
    np.abs(model.feature_importances_),
    float(np.mean(model.predict(codes_train) == factor_train)),
    float(np.mean(model.predict(codes_test) == factor_test)),
  )


def _dci_scores(importance: np.ndarray) -> tuple[float, float]:
  """Disentanglement and completeness of an importance matrix ``[D, F]``."""
  num_codes, num_factors = importance.shape
  if num_factors > 1:
    per_code = 1.0 - scipy.stats.entropy(importance.T + 1e-11, base=num_factors)
  else:
    per_code = np.ones(num_codes)
  if num_codes > 1:
    per_factor = 1.0 - scipy.stats.entropy(importance + 1e-11, base=num_codes)
  else:
    per_factor = np.ones(num_factors)
  weights = importance if importance.sum() > 0 else np.ones_like(importance)
  code_weight = weights.sum(axis=1) / weights.sum()
  factor_weight = weights.sum(axis=0) / weights.sum()
  return (
    float(np.sum(per_code * code_weight)),
    float(np.sum(per_factor * factor_weight)),
  )


def compute_dci(
  ground_truth_data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  *,
  num_train: int = 10_000,
  num_test: int = 5_000,
  importance: str = "gbt",
  n_jobs: int = 1,
  batch_size: int = sampling.DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """Disentanglement, completeness and informativeness (DCI).

  One classifier per factor predicts it from the codes; its feature
  importances form ``R [D, F]``. Disentanglement is ``sum_d rho_d (1 -
  H_F(R_d.))`` with ``rho_d`` the share of dimension ``d`` in the total
  importance; completeness is the same with the roles of codes and factors
  swapped; informativeness is the mean classification accuracy.

  Importance models (``IMPORTANCE_MODELS``; timings in bench/README.md):
  ``"gbt"``, sklearn's ``GradientBoostingClassifier`` with its defaults as
  in disentanglement_lib (its numbers; slow with many factor values), or
  ``"random_forest"`` (50 trees, every feature at each split,
  ``min_samples_leaf=2``): about ten times faster, its own numbers.

  Args:
    ground_truth_data, representation_function, random_state, batch_size:
      as in ``eval.metrics.sampling``.
    num_train: training points.
    num_test: test points.
    importance: the importance model, one of ``IMPORTANCE_MODELS``.
    n_jobs: threads for the per-factor fits (same scores).

  Returns:
    Dict with ``disentanglement``, ``completeness``,
    ``informativeness_train`` and ``informativeness_test`` (accuracies).

  Examples:
    >>> from tests import ground_truth
    >>> scores = compute_dci(ground_truth.IdentityData(),
    ...                      ground_truth.identity_representation,
    ...                      np.random.RandomState(0), num_train=200,
    ...                      num_test=100, importance="random_forest")
    >>> scores["disentanglement"] > 0.9, scores["completeness"] > 0.9
    (True, True)

  Raises:
    ValueError: an unknown importance model, a factor constant in the
      training sample, or malformed inputs.
  """
  if importance not in IMPORTANCE_MODELS:
    raise ValueError(
      f"importance must be one of {IMPORTANCE_MODELS}, got {importance!r}."
    )
  codes_train, factors_train, codes_test, factors_test = (
    sampling.sample_train_test_codes(
      ground_truth_data,
      representation_function,
      random_state,
      metric="DCI",
      min_codes=1,
      num_train=num_train,
      num_test=num_test,
      n_jobs=n_jobs,
      batch_size=batch_size,
    )
  )
  num_factors = factors_train.shape[1]
  _LOG.info("DCI: fitting %d %s classifiers", num_factors, importance)
  seed = sampling.seed_from(random_state)
  fits = sampling.map_fits(
    _fit_factor,
    [
      (codes_train, f_train, codes_test, f_test, importance, seed)
      for f_train, f_test in zip(factors_train.T, factors_test.T, strict=True)
    ],
    n_jobs,
    what=f"DCI: {importance} fits",
  )
  importances, train_accuracies, test_accuracies = zip(*fits, strict=True)
  disentanglement, completeness = _dci_scores(np.stack(importances, axis=1))
  return {
    "disentanglement": disentanglement,
    "completeness": completeness,
    "informativeness_train": float(np.mean(train_accuracies)),
    "informativeness_test": float(np.mean(test_accuracies)),
  }
