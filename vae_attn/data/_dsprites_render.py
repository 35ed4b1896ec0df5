"""The procedural dSprites renderer (private).

`render` is re-exported by :mod:`vae_attn.data.dsprites`, whose procedural
source draws through it.

The procedural images are the real ones, up to a few outline pixels. Their
geometry was fitted to 160 frames of the real data set with their factor
classes (``tests/data/dsprites_real_frames.npz``, from the data set's own
animation; fitted on half of them, checked on the other half): per frame,
`render` differs from the real image by a median of 0 and at most 4 pixels
for squares, 0 and 2 for ellipses, 0 and 6 for hearts (``python -m
bench.dsprites_fidelity``; docs/data.md). The fitted geometry, in pixel-centre
coordinates (pixel ``(row, col)`` is the point ``x = col``, ``y = row``):

- posX and posY move the sprite's centre right and down from (15.5, 15.5) by
  32/31 px per class (centre ``15.5 + 32 * pos`` for the position value
  ``pos`` in [0, 1]); orientation turns the sprite counter-clockwise on
  screen about that centre by its value, ``2 pi * class / 39``; scale (0.5 to
  1) multiplies every length below, given at scale 1.
- Square: side 19.2 px. Ellipse: semi-axes 12.77 px (horizontal at
  orientation 0) and 7.21 px. Heart, tip down: the curve ``x = 16 sin^3 t``,
  ``y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t`` scaled by 0.6 px in x and
  0.66 px in y, its origin 1.45 px above the centre.
- A pixel is on when its centre lies in the shape.

`render` is the one definition of these shapes, in ``jax.numpy``: pure and
jittable, so a jitted step can draw batches on the device;
`vae_attn.data.dsprites.ProceduralDSprites` draws through it, jitted on the
CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vae_attn.data import _dsprites_factors as grid

# Geometry of the real images (see the module docstring), fitted to real
# frames by bench/dsprites_fidelity.py; lengths in pixels at scale 1.
_CENTRE = 15.5  # sprite centre at position class 0 (pixel-centre coordinate)
_STEP = 32 / 31  # pixels per position class
_SQUARE_HALF_SIDE = 9.6
_ELLIPSE_SEMI_AXES = (12.77, 7.21)  # along u (right at orientation 0), v
_HEART_SCALE = (0.6, 0.66)  # pixels per unit of the curve's x and y
_HEART_RAISE = 1.45  # the curve's origin above the sprite centre
# Exact coordinates: positions in 1/62 px (62 * (15.5 + 32 k / 31) = 961 +
# 64 k is an integer) and cos, sin rounded to multiples of 1/2048, so a pixel
# centre's offsets u, v from the sprite centre, in 1/(62 * 2048) px, are
# integers below 2^24: exact in float32 whatever a backend fuses.
_POSITION_UNIT = 62
_ROTATION_UNIT = 2048


def _geometry_tables() -> dict[str, np.ndarray]:
  """Per-class constants of `render` (float32, read-only)."""
  position = _POSITION_UNIT * (_CENTRE + _STEP * np.arange(32))
  size = (
    grid.SCALE_VALUES * _POSITION_UNIT * _ROTATION_UNIT
  )  # 1 px at each scale
  tables = {
    "centre": np.round(position),  # 961 + 64 k
    # 2 pi (class 39) rounds to cos 2048, sin 0: the same image as class 0.
    "cos": np.round(_ROTATION_UNIT * np.cos(grid.ORIENTATION_VALUES)),
    "sin": np.round(_ROTATION_UNIT * np.sin(grid.ORIENTATION_VALUES)),
    "square": _SQUARE_HALF_SIDE * size,
    "ellipse_u": 1 / (_ELLIPSE_SEMI_AXES[0] * size),
    "ellipse_v": 1 / (_ELLIPSE_SEMI_AXES[1] * size),
    "heart_u": 1 / (16 * _HEART_SCALE[0] * size),
    "heart_v": 1 / (_HEART_SCALE[1] * size),
  }
  tables = {k: v.astype(np.float32) for k, v in tables.items()}
  for value in tables.values():
    value.setflags(write=False)
  return tables


_TABLES = _geometry_tables()


def _inside_heart(x: jax.Array, y: jax.Array) -> jax.Array:
  """Whether points lie inside the heart curve (curve units, x over 16).

  The curve is ``16 sin^3 t``, ``P(cos t)`` with ``P(c) = 13 c - 5 cos 2t -
  2 cos 3t - cos 4t = -8 c^4 - 8 c^3 - 2 c^2 + 19 c + 4``. A vertical line at
  ``|x| = s^3`` (``x`` here is the curve's x over 16, ``s = sin t`` in [0,
  1]) crosses its right half twice, at ``t`` and ``pi - t``, so the inside
  there is ``P(-c) <= y <= P(c)`` with ``c = sqrt(1 - s^2)``.
  """
  a = jnp.abs(x)
  # Cube root as exp(log / 3) (log 0 = -inf gives 0): XLA:CPU runs jnp.cbrt
  # element by element, 4x slower.
  s = jnp.exp(jnp.log(jnp.minimum(a, 1.0)) / 3)
  c2 = jnp.maximum(1 - s * s, 0.0)
  even = (-8 * c2 - 2) * c2 + 4
  odd = (19 - 8 * c2) * jnp.sqrt(c2)
  return (a <= 1) & (y <= even + odd) & (y >= even - odd)


def render(
  factor_classes: jax.typing.ArrayLike, dtype=jnp.float32
) -> jax.Array:
  """Draws the dSprites images of factor classes, in ``jax.numpy``.

  The one definition of the shapes (geometry in the module docstring): pure,
  jittable with static shapes, no Python loop over images, so a jitted train
  step can draw its batch on the device from randomly drawn classes.
  `ProceduralDSprites` renders through it (jitted on the CPU). Each pixel
  costs a few dozen float32 operations (one rotation, the three shape tests
  and a select); the whole 64 x 64 canvas is evaluated, which on XLA:CPU was
  faster than evaluating a window around the sprite and pasting it.

  Coordinates are exact (see ``_POSITION_UNIT``), so the square test gives
  the same pixels on every backend; the ellipse and heart tests round like
  any float32 expression, so two backends can disagree only on pixel centres
  within about 1e-6 px of those outlines. Rounding cos and sin to 1/2048
  moves outlines by at most 0.005 px: of 20,000 random images, 5 % differ
  from a float64 evaluation with exact cos and sin, by 1 to 3 pixels.

  Args:
    factor_classes: int ``[N, 5]`` classes of (shape, scale, orientation,
      posX, posY). NumPy or Python input is range-checked; a ``jax.Array``
      (e.g. traced inside jit) is not, and out-of-range classes then clamp to
      the nearest valid one.
    dtype: output dtype (static under jit).

  Returns:
    ``dtype [N, 64, 64, 1]``: 1 on the sprite, 0 elsewhere.

  Raises:
    ValueError: ``factor_classes`` is not an integer ``[N, 5]`` array, or
      (NumPy input) a class is out of range.
  """
  if not isinstance(factor_classes, jax.Array):
    factor_classes = grid.check_factors(factor_classes, grid.FACTORS_NUM_VALUES)
    factor_classes = factor_classes.astype(np.int32)
  classes = jnp.asarray(factor_classes)
  if classes.ndim != 2 or classes.shape[1] != len(grid.FACTORS_NUM_VALUES):
    raise ValueError(
      f"factor_classes must have shape [N, 5], got {classes.shape}."
    )
  if not jnp.issubdtype(classes.dtype, jnp.integer):
    raise ValueError(
      f"factor_classes must be integer classes, got {classes.dtype}."
    )
  tables = {k: jnp.asarray(v) for k, v in _TABLES.items()}
  shape, scale, orientation, pos_x, pos_y = classes.astype(jnp.int32).T
  pixel = _POSITION_UNIT * jnp.arange(grid.IMAGE_SIZE, dtype=jnp.float32)
  x = pixel - tables["centre"][pos_x][:, None]  # [N, 64] per column, right
  y = tables["centre"][pos_y][:, None] - pixel  # [N, 64] per row, up
  cos = tables["cos"][orientation][:, None]
  sin = tables["sin"][orientation][:, None]
  # Turning the shape by +theta = turning the pixel centres by -theta.
  u = (cos * x)[:, None, :] + (sin * y)[:, :, None]  # [N, 64, 64]
  v = (cos * y)[:, :, None] - (sin * x)[:, None, :]

  def per_scale(name):
    return tables[name][scale][:, None, None]

  square = jnp.maximum(jnp.abs(u), jnp.abs(v)) <= per_scale("square")
  ellipse = (
    jnp.square(u * per_scale("ellipse_u"))
    + jnp.square(v * per_scale("ellipse_v"))
    <= 1
  )
  heart = _inside_heart(
    u * per_scale("heart_u"),
    v * per_scale("heart_v") - _HEART_RAISE / _HEART_SCALE[1],
  )
  shape = shape[:, None, None]
  inside = jnp.where(shape == 0, square, jnp.where(shape == 1, ellipse, heart))
  return inside.astype(dtype)[..., None]
