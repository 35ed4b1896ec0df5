"""The Mutual Information Gap (MIG) of Chen et al. (2018).

Inputs, checks and sampling: ``eval.metrics.sampling``.

References:
  Chen et al., "Isolating Sources of Disentanglement in Variational
  Autoencoders", NeurIPS 2018, section 4.1.
  google-research/disentanglement_lib: evaluation/metrics/mig.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn.metrics

from eval.metrics import sampling

__all__ = ["compute_mig"]


def _histogram_discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
  """Per-dimension equal-width binning of ``[N, D]`` codes (labels 1..bins)."""
  discretized = np.empty(codes.shape, np.int64)
  for d in range(codes.shape[1]):
    edges = np.histogram(codes[:, d], num_bins)[1][:-1]
    discretized[:, d] = np.digitize(codes[:, d], edges)
  return discretized


def compute_mig(
  ground_truth_data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  *,
  num_train: int = 10_000,
  num_bins: int = 20,
  batch_size: int = sampling.DEFAULT_BATCH_SIZE,
) -> dict[str, float]:
  """Mutual Information Gap.

  ``MIG = mean_k (I(z_a; v_k) - I(z_b; v_k)) / H(v_k)`` where ``z_a`` and
  ``z_b`` are the two code dimensions most informative about factor
  ``v_k``, with each code dimension discretised into ``num_bins`` equal-width
  bins (disentanglement_lib's histogram discretizer).

  Args:
    ground_truth_data, representation_function, random_state, batch_size:
      as in ``eval.metrics.sampling`` (``D >= 2`` codes).
    num_train: sampled points.
    num_bins: histogram bins per code dimension.

  Returns:
    Dict with ``discrete_mig``.

  Examples:
    >>> from tests import ground_truth
    >>> scores = compute_mig(ground_truth.IdentityData(),
    ...                      ground_truth.identity_representation,
    ...                      np.random.RandomState(0), num_train=2000)
    >>> round(scores["discrete_mig"], 2)
    0.99

  Raises:
    ValueError: ``D < 2``, a factor constant in the sample, or malformed
      inputs.
  """
  data = sampling.check_inputs(
    ground_truth_data,
    random_state,
    num_train=num_train,
    num_bins=num_bins,
    batch_size=batch_size,
  )
  codes, factors = sampling.sample_codes(
    data, representation_function, num_train, random_state, batch_size
  )
  sampling.check_sample(data, codes, factors, "MIG", "samples", min_codes=2)
  mi = sklearn.metrics.mutual_info_score  # In nats.
  binned = _histogram_discretize(codes, num_bins)
  mutual_info = np.array([[mi(f, c) for f in factors.T] for c in binned.T])
  entropy = np.array([mi(f, f) for f in factors.T])
  top = np.sort(mutual_info, axis=0)[::-1]
  return {"discrete_mig": float(np.mean((top[0] - top[1]) / entropy))}
