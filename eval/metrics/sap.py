"""Separated Attribute Predictability (SAP) of Kumar et al. (2018).

Inputs, checks and sampling: ``eval.metrics.sampling``.

References:
  Kumar et al., "Variational Inference of Disentangled Latent Concepts from
  Unlabeled Observations", ICLR 2018, section 3.
  google-research/disentanglement_lib: evaluation/metrics/sap_score.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn.svm

from eval.metrics import sampling

__all__ = ["compute_sap"]


def _r2_matrix(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """Squared correlations ``[D, F]``; 0 for a constant code dimension."""
  codes_c = codes - codes.mean(axis=0)
  factors_c = factors - factors.mean(axis=0)
  n = codes.shape[0] - 1
  cov = codes_c.T @ factors_c / n
  var_code = (codes_c**2).sum(axis=0) / n
  var_factor = (factors_c**2).sum(axis=0) / n
  with np.errstate(divide="ignore", invalid="ignore"):
    r2 = cov**2 / (var_code[:, None] * var_factor[None, :])
  return np.where(var_code[:, None] > 1e-12, r2, 0.0)


def _svm_column(
  codes: np.ndarray,
  factor: np.ndarray,
  codes_test: np.ndarray,
  factor_test: np.ndarray,
) -> np.ndarray:
  """Test accuracy ``[D]`` of a 1-D linear SVM per code dimension."""
  column = np.zeros(codes.shape[1])
  for i in range(codes.shape[1]):
    classifier = sklearn.svm.LinearSVC(C=0.01, class_weight="balanced")
    classifier.fit(codes[:, i : i + 1], factor)
    prediction = classifier.predict(codes_test[:, i : i + 1])
    column[i] = np.mean(prediction == factor_test)
  return column


def compute_sap(
  ground_truth_data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  *,
  num_train: int = 10_000,
  num_test: int = 5_000,
  continuous_factors: bool = False,
  n_jobs: int = 1,
  batch_size: int = sampling.DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """Separated Attribute Predictability (SAP).

  Score matrix ``S [D, F]``: for discrete factors (default, as
  disentanglement_lib) the test accuracy of a linear SVM (``C = 0.01``,
  balanced classes) predicting factor ``k`` from code dimension ``d`` alone;
  for continuous factors the squared correlation. SAP is the mean over
  factors of the gap between the two highest scores of the factor's column.

  Args:
    ground_truth_data, representation_function, random_state, batch_size:
      as in ``eval.metrics.sampling`` (``D >= 2`` codes).
    num_train: training points.
    num_test: test points (discrete factors only; drawn either way).
    continuous_factors: treat factors as continuous (R^2 scores).
    n_jobs: threads for the per-factor SVM fits (same scores).

  Returns:
    Dict with ``sap_score``.

  Examples:
    >>> from tests import ground_truth
    >>> scores = compute_sap(ground_truth.IdentityData(),
    ...                      ground_truth.identity_representation,
    ...                      np.random.RandomState(0), num_train=500,
    ...                      num_test=100, continuous_factors=True)
    >>> round(scores["sap_score"], 2)
    1.0

  Raises:
    ValueError: ``D < 2``, a factor constant in the training sample, or
      malformed inputs.
  """
  codes, factors, codes_test, factors_test = sampling.sample_train_test_codes(
    ground_truth_data,
    representation_function,
    random_state,
    metric="SAP",
    min_codes=2,
    num_train=num_train,
    num_test=num_test,
    n_jobs=n_jobs,
    batch_size=batch_size,
  )
  if continuous_factors:
    matrix = _r2_matrix(codes, factors)
  else:
    columns = sampling.map_fits(
      _svm_column,
      (
        (codes, factors[:, j], codes_test, factors_test[:, j])
        for j in range(factors.shape[1])
      ),
      n_jobs,
      what="SAP: 1-D LinearSVC fits",
    )
    matrix = np.stack(columns, axis=1)
  top = np.sort(matrix, axis=0)
  return {"sap_score": float(np.mean(top[-1] - top[-2]))}
