"""Dummy ground-truth data with known answers, for the metrics' tests.

``IdentityData`` renders each factor vector as a ``[1, 1, F]`` "image" whose
channels are the factor values, so ``identity_representation`` recovers the
factors exactly: a perfectly disentangled code. Any other code is a function
of the factors, e.g. ``MixedRepresentation`` (a rotation of the identity).

References:
  disentanglement_lib: data/ground_truth/dummy_data.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class IdentityData:
  """Independent uniform discrete factors; observations are the factors."""

  factors_num_values: tuple[int, ...] = (4, 5, 6, 7, 8)

  @property
  def num_factors(self) -> int:
    return len(self.factors_num_values)

  @property
  def observation_shape(self) -> tuple[int, int, int]:
    return (1, 1, self.num_factors)

  def sample_factors(
    self, num: int, random_state: np.random.RandomState | np.random.Generator
  ) -> np.ndarray:
    """Uniform factors, int64 ``[num, num_factors]``."""
    high = np.asarray(self.factors_num_values)
    if isinstance(random_state, np.random.Generator):
      return random_state.integers(high, size=(num, self.num_factors))
    return random_state.randint(high, size=(num, self.num_factors))

  def sample_observations_from_factors(
    self,
    factors: np.ndarray,
    random_state: np.random.RandomState | np.random.Generator,
  ) -> np.ndarray:
    """The factors as float32 ``[num, 1, 1, num_factors]`` images."""
    del random_state  # Deterministic.
    factors = np.asarray(factors, np.float32)
    return factors.reshape(factors.shape[0], 1, 1, -1)


def identity_representation(observations: np.ndarray) -> np.ndarray:
  """The factors themselves, ``[N, F]``: the ideal code."""
  return np.asarray(observations, np.float64).reshape(observations.shape[0], -1)


def constant_representation(observations: np.ndarray) -> np.ndarray:
  """A code that ignores its input, ``[N, F]`` zeros."""
  return np.zeros((observations.shape[0], int(np.prod(observations.shape[1:]))))


@dataclasses.dataclass(frozen=True)
class MixedRepresentation:
  """The standardised factors with each pair (0, 1), (2, 3), ... rotated
  by ``angle``: 45 degrees mixes two factors equally (entangled, fully
  informative). The moments are the uniform distributions', so an image's
  code does not depend on its batch."""

  factors_num_values: tuple[int, ...]
  angle: float = np.pi / 4

  def __call__(self, observations: np.ndarray) -> np.ndarray:
    codes = identity_representation(observations)
    sizes = np.asarray(self.factors_num_values, np.float64)
    if codes.shape[1] != sizes.size:
      raise ValueError(
        f"Observations have {codes.shape[1]} factors, factors_num_values "
        f"{sizes.size}; build MixedRepresentation from the data's values."
      )
    codes = (codes - (sizes - 1) / 2) / np.sqrt((sizes**2 - 1) / 12)
    cos, sin = np.cos(self.angle), np.sin(self.angle)
    rotation = np.eye(sizes.size)
    for i in range(0, sizes.size - 1, 2):
      rotation[i : i + 2, i : i + 2] = [[cos, -sin], [sin, cos]]
    return codes @ rotation


@dataclasses.dataclass(frozen=True)
class NoiseRepresentation:
  """Pure noise ``[N, num_codes]``, from a ``default_rng`` seeded by
  ``seed`` and the input (deterministic, nothing global)."""

  num_codes: int = 5
  seed: int = 0

  def __call__(self, observations: np.ndarray) -> np.ndarray:
    digest = int(np.asarray(observations, np.float64).sum() * 1000) % 2**31
    rng = np.random.default_rng([self.seed, digest, observations.shape[0]])
    return rng.standard_normal((observations.shape[0], self.num_codes))
