"""Argument checks shared by the disentanglement metrics (private).

Re-exported by :mod:`eval.metrics.sampling` (whose module docstring states
the ground-truth-data contract these check); each raises one ValueError
that names the argument and what is wrong with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_random_state(random_state: Any) -> None:
  """Raises ValueError unless ``random_state`` is a NumPy random state."""
  if not isinstance(random_state, np.random.RandomState | np.random.Generator):
    raise ValueError(
      "random_state must be a np.random.RandomState or np.random.Generator, "
      f"got {type(random_state).__name__}; pass e.g. "
      "np.random.RandomState(0)."
    )


def check_ground_truth_data(ground_truth_data: Any) -> None:
  """Raises ValueError when the ground-truth interface is incomplete."""
  required = (
    "num_factors",
    "factors_num_values",
    "sample_factors",
    "sample_observations_from_factors",
  )
  missing = [name for name in required if not hasattr(ground_truth_data, name)]
  if missing:
    raise ValueError(
      f"ground_truth_data lacks {missing}; it must provide num_factors, "
      "factors_num_values, sample_factors(num, random_state) and "
      "sample_observations_from_factors(factors, random_state)."
    )


def check_positive(minimum: int = 1, **counts: int) -> None:
  """Raises ValueError for a count below ``minimum``, naming it."""
  for name, value in counts.items():
    if int(value) < minimum:
      raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")
