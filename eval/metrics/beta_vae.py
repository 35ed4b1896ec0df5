"""The BetaVAE disentanglement metric of Higgins et al. (2017).

Inputs, checks and sampling: ``eval.metrics.sampling``.

References:
  Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a
  Constrained Variational Framework", ICLR 2017, section 3.
  google-research/disentanglement_lib: evaluation/metrics/beta_vae.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn.linear_model

from eval.metrics import sampling

__all__ = ["compute_beta_vae"]


def _fit_classifier(
  features: np.ndarray, labels: np.ndarray, seed: int
) -> sklearn.linear_model.LogisticRegression:
  # sklearn's default 100 L-BFGS iterations stopped short on a trained
  # FactorVAE's codes; the objective is strictly convex, so more iterations
  # only reach the optimum disentanglement_lib's classifier aims at.
  model = sklearn.linear_model.LogisticRegression(
    random_state=seed, max_iter=5000
  )
  return model.fit(features, labels)


def _points(
  ground_truth_data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  num_points: int,
  num_per_point: int,
  batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Features ``mean |z(x1) - z(x2)|`` over pairs sharing one factor, and
  that factor's index (the labels)."""
  num_factors = ground_truth_data.num_factors
  labels = sampling.integers(random_state, num_factors, num_points)
  shape = (num_points, num_per_point, num_factors)
  factors1 = sampling.sample_factors(
    ground_truth_data, num_points * num_per_point, random_state
  ).reshape(shape)
  factors2 = sampling.sample_factors(
    ground_truth_data, num_points * num_per_point, random_state
  ).reshape(shape)
  points = np.arange(num_points)
  factors2[points, :, labels] = factors1[points, :, labels]
  pairs = np.stack([factors1, factors2], axis=2)  # [P, L, 2, F]

  def feature(codes: np.ndarray) -> np.ndarray:
    codes = codes.reshape(codes.shape[0], num_per_point, 2, -1)
    return np.abs(codes[:, :, 0] - codes[:, :, 1]).mean(axis=1)

  pairs = pairs.reshape(num_points, 2 * num_per_point, num_factors)
  features = sampling.represent_groups(
    ground_truth_data, representation_function, pairs, random_state,
    batch_size, feature,
  )  # fmt: skip
  return features, labels


def compute_beta_vae(
  ground_truth_data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  *,
  num_per_point: int = 64,
  num_train: int = 10_000,
  num_eval: int = 5_000,
  batch_size: int = sampling.DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """The BetaVAE metric: accuracy of a linear classifier of the fixed factor.

  A point fixes one random factor ``k`` across ``num_per_point`` pairs of
  images; its feature is ``mean |z(x1) - z(x2)|`` over the pairs, its label
  ``k``. A logistic regression (disentanglement_lib's, with iterations to
  converge) is fit on ``num_train`` points, scored on ``num_eval`` more.

  Args:
    ground_truth_data, representation_function, random_state, batch_size:
      as in ``eval.metrics.sampling``.
    num_per_point: pairs per point (64 in disentanglement_lib).
    num_train: training points.
    num_eval: evaluation points.

  Returns:
    Dict with ``train_accuracy`` and ``eval_accuracy``.

  Examples:
    >>> from tests import ground_truth
    >>> compute_beta_vae(ground_truth.IdentityData(),
    ...                  ground_truth.identity_representation,
    ...                  np.random.RandomState(0), num_per_point=20,
    ...                  num_train=300, num_eval=200)
    {'train_accuracy': 1.0, 'eval_accuracy': 1.0}

  Raises:
    ValueError: all training points fix the same factor, or malformed
      inputs.
  """
  data = sampling.check_inputs(
    ground_truth_data,
    random_state,
    num_per_point=num_per_point,
    num_train=num_train,
    num_eval=num_eval,
    batch_size=batch_size,
  )
  args = (num_per_point, batch_size)
  train_x, train_y = _points(
    data, representation_function, random_state, num_train, *args
  )
  if np.unique(train_y).size < 2:
    raise ValueError(
      f"All {num_train} training points fix the same factor; increase "
      "num_train."
    )
  (model,) = sampling.map_fits(
    _fit_classifier,
    [(train_x, train_y, sampling.seed_from(random_state))],
    1,
    what="BetaVAE: logistic regression",
  )
  eval_x, eval_y = _points(
    data, representation_function, random_state, num_eval, *args
  )
  return {
    "train_accuracy": float(model.score(train_x, train_y)),
    "eval_accuracy": float(model.score(eval_x, eval_y)),
  }
