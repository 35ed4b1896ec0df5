"""The dSprites factor grid: names, sizes, values, index arithmetic (private).

Re-exported by :mod:`vae_attn.data.dsprites`. Image ``i`` of the original
file has the factor classes of row ``i`` of the grid 3 x 6 x 40 x 32 x 32
(shape, scale, orientation, posX, posY) in row-major order, posY fastest;
`latents_classes` and `latents_values` rebuild the file's own tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTORS_NUM_VALUES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
NUM_IMAGES = math.prod(FACTORS_NUM_VALUES)  # 737,280
IMAGE_SIZE = 64

# Factor values as in the original file's `latents_values` (color first).
SCALE_VALUES = np.linspace(0.5, 1.0, 6)
ORIENTATION_VALUES = np.linspace(0.0, 2 * np.pi, 40)
POSITION_VALUES = np.linspace(0.0, 1.0, 32)


def strides(num_values: Sequence[int]) -> np.ndarray:
  """Row-major strides ``[num_factors]`` of the grid (int64)."""
  return np.array(
    [math.prod(num_values[i + 1 :]) for i in range(len(num_values))],
    dtype=np.int64,
  )


def check_factors(factors, num_values: Sequence[int]) -> np.ndarray:
  """Validates factor classes, returning an int64 ``[N, num_factors]`` array.

  Raises:
    ValueError: the array has the wrong shape or a class is out of range.
  """
  factors = np.asarray(factors)
  if factors.ndim != 2 or factors.shape[1] != len(num_values):
    raise ValueError(
      f"factors must have shape [N, {len(num_values)}], got {factors.shape}."
    )
  if factors.dtype.kind not in "iu":
    raise ValueError(f"factors must be integer classes, got {factors.dtype}.")
  factors = factors.astype(np.int64)
  high = np.asarray(num_values)
  bad = (factors < 0) | (factors >= high)
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(
      f"factor {col} of row {row} is {factors[row, col]}, outside "
      f"[0, {high[col]}). factors_num_values is {tuple(num_values)}."
    )
  return factors


def factors_to_index(factors, num_values=FACTORS_NUM_VALUES) -> np.ndarray:
  """Maps factor classes ``[N, 5]`` to image indices ``[N]`` (posY fastest)."""
  factors = check_factors(factors, num_values)
  return factors @ strides(num_values)


def index_to_factors(indices, num_values=FACTORS_NUM_VALUES) -> np.ndarray:
  """Maps image indices ``[N]`` to factor classes ``[N, 5]`` (int64)."""
  indices = np.asarray(indices, dtype=np.int64)
  total = math.prod(num_values)
  if indices.size and (indices.min() < 0 or indices.max() >= total):
    raise IndexError(f"indices must be in [0, {total}).")
  return (indices[..., None] // strides(num_values)) % np.asarray(num_values)


def latents_classes(indices=None) -> np.ndarray:
  """The original file's ``latents_classes`` ``[N, 6]`` (color class 0).

  Args:
    indices: image indices; ``None`` for all 737,280 images.
  """
  if indices is None:
    indices = np.arange(NUM_IMAGES)
  factors = index_to_factors(indices)
  return np.concatenate([np.zeros_like(factors[..., :1]), factors], axis=-1)


def latents_values(indices=None) -> np.ndarray:
  """The original file's ``latents_values`` ``[N, 6]`` (float64).

  Columns: color (1), shape (1, 2, 3), scale ``linspace(0.5, 1, 6)``,
  orientation ``linspace(0, 2 pi, 40)``, posX and posY ``linspace(0, 1, 32)``.
  """
  classes = latents_classes(indices)
  return np.stack(
    [
      np.ones(classes.shape[:-1]),
      classes[..., 1] + 1.0,
      SCALE_VALUES[classes[..., 2]],
      ORIENTATION_VALUES[classes[..., 3]],
      POSITION_VALUES[classes[..., 4]],
      POSITION_VALUES[classes[..., 5]],
    ],
    axis=-1,
  )
