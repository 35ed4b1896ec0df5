"""dSprites: the factor grid, its renderer, and three sources of its images.

The sources are the procedural renderer (the offline default, no file), the
original npz and tfds. Records: ``{"image": float32 [64, 64, 1] in {0, 1},
"factors": int32 [5]}``, the classes of (shape, scale, orientation, posX,
posY). Record ``i`` of the procedural and npz sources, and of a tfds source
wrapped in `TfdsDSprites`, is image ``i`` of the original file (the grid 3 x
6 x 40 x 32 x 32, row-major, posY fastest); these three implement
disentanglement_lib's ground-truth interface (``num_factors``,
``factors_num_values``, ``observation_shape``, ``sample_factors``,
``sample_observations_from_factors``, ``sample``). `render`'s geometry, fitted
to real frames by ``bench/dsprites_fidelity.py``, is given in docs/data.md.

References: https://github.com/deepmind/dsprites-dataset;
https://github.com/google-research/disentanglement_lib/blob/master/disentanglement_lib/data/ground_truth/dsprites.py
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae_attn.data import base

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTORS_NUM_VALUES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64
# Factor values as in the original file's `latents_values`.
SCALE_VALUES = np.linspace(0.5, 1.0, 6)
ORIENTATION_VALUES = np.linspace(0.0, 2 * np.pi, 40)

NPZ_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
_NOT_ORIGINAL = (
  f"it is not the original {NPZ_FILENAME}; pass that file (--data-dir=<its "
  "path>)"
)
_CHUNK = 1024  # Images per jitted call of ProceduralDSprites.render.


# The factor grid.
# ----------------------------------------------------------------------------


def _strides(num_values: Sequence[int]) -> np.ndarray:
  """Row-major strides ``[num_factors]`` of the grid (int64)."""
  return np.array(
    [math.prod(num_values[i + 1 :]) for i in range(len(num_values))],
    dtype=np.int64,
  )


def _check_factors(factors, num_values=FACTORS_NUM_VALUES):
  """Integer classes ``[N, len(num_values)]``: int64 NumPy, range-checked, or
  a ``jax.Array`` as given (not range-checked: it may be traced).

  Raises:
    ValueError: the wrong shape or dtype, or (NumPy) a class out of range.
  """
  if not isinstance(factors, jax.Array):
    factors = np.asarray(factors)
  if factors.ndim != 2 or factors.shape[1] != len(num_values):
    raise ValueError(
      f"factors must have shape [N, {len(num_values)}], got {factors.shape}."
    )
  if not np.issubdtype(factors.dtype, np.integer):
    raise ValueError(f"factors must be integer classes, got {factors.dtype}.")
  if isinstance(factors, jax.Array):
    return factors
  factors = factors.astype(np.int64)
  bad = (factors < 0) | (factors >= np.asarray(num_values))
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(
      f"factor {col} of row {row} is {factors[row, col]}, outside "
      f"[0, {num_values[col]}). factors_num_values is {tuple(num_values)}."
    )
  return factors


def factors_to_index(factors, num_values=FACTORS_NUM_VALUES) -> np.ndarray:
  """Factor classes ``[N, 5]`` to image indices ``[N]`` (posY fastest).

  Raises:
    ValueError: as `_check_factors`.
  """
  return _check_factors(np.asarray(factors), num_values) @ _strides(num_values)


def index_to_factors(indices, num_values=FACTORS_NUM_VALUES) -> np.ndarray:
  """Image indices ``[N]`` to factor classes ``[N, 5]`` (int64).

  Raises:
    IndexError: an index is outside ``[0, prod(num_values))``.
  """
  indices = np.asarray(indices, dtype=np.int64)
  total = math.prod(num_values)
  if indices.size and (indices.min() < 0 or indices.max() >= total):
    raise IndexError(f"indices must be in [0, {total}).")
  return (indices[..., None] // _strides(num_values)) % np.asarray(num_values)


# The renderer.
# ----------------------------------------------------------------------------

# The geometry (docs/data.md), in pixel-centre coordinates (pixel (row, col)
# is the point x = col, y = row); lengths in pixels at scale 1.
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
  size = SCALE_VALUES * _POSITION_UNIT * _ROTATION_UNIT  # 1 px at each scale
  tables = {
    "centre": np.round(position),  # 961 + 64 k
    # 2 pi (class 39) rounds to cos 2048, sin 0: the same image as class 0.
    "cos": np.round(_ROTATION_UNIT * np.cos(ORIENTATION_VALUES)),
    "sin": np.round(_ROTATION_UNIT * np.sin(ORIENTATION_VALUES)),
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
  # element by element, several times slower.
  s = jnp.exp(jnp.log(jnp.minimum(a, 1.0)) / 3)
  c2 = jnp.maximum(1 - s * s, 0.0)
  even = (-8 * c2 - 2) * c2 + 4
  odd = (19 - 8 * c2) * jnp.sqrt(c2)
  return (a <= 1) & (y <= even + odd) & (y >= even - odd)


def render(
  factor_classes: jax.typing.ArrayLike, dtype=jnp.float32
) -> jax.Array:
  """Draws the dSprites images of factor classes, in ``jax.numpy``.

  The one definition of the shapes: pure and jittable with static shapes, so
  a train step can draw its batch on the device. Coordinates are exact
  (``_POSITION_UNIT``): backends can disagree only on pixel centres within
  about 1e-6 px of the ellipse and heart outlines.

  Args:
    factor_classes: int ``[N, 5]`` classes of (shape, scale, orientation,
      posX, posY). NumPy or Python input is range-checked; out-of-range
      classes of a ``jax.Array`` clamp to the nearest valid one.
    dtype: output dtype (static under jit).

  Returns:
    ``dtype [N, 64, 64, 1]``: 1 on the sprite, 0 elsewhere.

  Raises:
    ValueError: as `_check_factors`.
  """
  classes = jnp.asarray(_check_factors(factor_classes), jnp.int32)
  tables = {k: jnp.asarray(v) for k, v in _TABLES.items()}
  shape, scale, orientation, pos_x, pos_y = classes.T
  pixel = _POSITION_UNIT * jnp.arange(IMAGE_SIZE, dtype=jnp.float32)
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


_render_jit = jax.jit(render, static_argnames="dtype")


# The sources.
# ----------------------------------------------------------------------------


def _integers(random_state, high: int, size) -> np.ndarray:
  """Uniform ints in [0, high) from a RandomState or a Generator."""
  if isinstance(random_state, np.random.Generator):
    return random_state.integers(0, high, size=size)
  if isinstance(random_state, np.random.RandomState):
    return random_state.randint(0, high, size=size)
  raise TypeError(
    "random_state must be a np.random.RandomState or np.random.Generator, "
    f"got {type(random_state).__name__}. Pass e.g. np.random.RandomState(0)."
  )


class _GroundTruth:
  """disentanglement_lib's ground-truth-data interface over a factor grid:
  one record per factor combination. Subclasses set ``name`` and
  ``_num_values`` and implement ``get_batch(indices)``.
  """

  _num_values: tuple[int, ...]

  def __len__(self) -> int:
    return math.prod(self._num_values)

  @property
  def num_factors(self) -> int:
    return len(self._num_values)

  @property
  def factors_num_values(self) -> list[int]:
    return list(self._num_values)

  @property
  def factor_names(self) -> tuple[str, ...]:
    return FACTOR_NAMES

  @property
  def observation_shape(self) -> list[int]:
    return [IMAGE_SIZE, IMAGE_SIZE, 1]

  def sample_factors(self, num: int, random_state) -> np.ndarray:
    """Samples ``num`` factor classes uniformly: int64 ``[num, 5]``."""
    return np.stack(
      [_integers(random_state, n, num) for n in self._num_values], axis=1
    ).astype(np.int64)

  def sample_observations_from_factors(
    self, factors: np.ndarray, random_state
  ) -> np.ndarray:
    """Images of factor classes ``[N, 5]``: float32 ``[N, 64, 64, 1]``."""
    del random_state  # One image per combination: nothing to draw.
    index = factors_to_index(factors, self._num_values)
    return self.get_batch(index)["image"]

  def sample(self, num: int, random_state) -> tuple[np.ndarray, np.ndarray]:
    """Samples factors and their images: ``([num, 5], [num, 64, 64, 1])``."""
    factors = self.sample_factors(num, random_state)
    return factors, self.sample_observations_from_factors(factors, random_state)

  def sample_observations(self, num: int, random_state) -> np.ndarray:
    """Samples ``num`` images uniformly: float32 ``[num, 64, 64, 1]``."""
    return self.sample(num, random_state)[1]

  def __getitem__(self, index: int) -> base.Record:
    index = base.check_index(index, len(self), self.name)
    return {k: v[0] for k, v in self.get_batch(np.array([index])).items()}


class ProceduralDSprites(_GroundTruth):
  """All 737,280 dSprites images, rendered on demand by `render`.

  Example:

    >>> ds = ProceduralDSprites()
    >>> len(ds), ds[0]["image"].shape, ds[0]["factors"].tolist()
    (737280, (64, 64, 1), [0, 0, 0, 0, 0])
  """

  name = "dsprites_procedural"
  _num_values = FACTORS_NUM_VALUES

  def get_batch(self, indices) -> base.Record:
    """Renders the images at ``indices`` ``[N]``.

    Returns:
      ``{"image": float32 [N, 64, 64, 1], "factors": int32 [N, 5]}``.
    """
    factors = index_to_factors(np.asarray(indices).reshape(-1))
    return {
      "image": self.render(factors),
      "factors": factors.astype(np.int32),
    }

  def render(self, factors, dtype=np.float32) -> np.ndarray:
    """`render` of int classes ``[N, 5]`` as NumPy ``dtype [N, 64, 64, 1]``.

    Jitted on the CPU, ``_CHUNK`` images a call padded to a power of two (at
    most 11 programs), drawn as uint8. Raises ValueError as `render`.
    """
    factors = _check_factors(np.asarray(factors)).astype(np.int32)
    images = np.empty((len(factors), IMAGE_SIZE, IMAGE_SIZE, 1), dtype)
    try:
      device = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS without cpu: the default device.
      device = None
    for start in range(0, len(factors), _CHUNK):
      chunk = factors[start : start + _CHUNK]
      padded = np.zeros((1 << (len(chunk) - 1).bit_length(), 5), np.int32)
      padded[: len(chunk)] = chunk
      drawn = _render_jit(jax.device_put(padded, device), dtype=np.uint8)
      images[start : start + len(chunk)] = np.asarray(drawn)[: len(chunk)]
    return images


def procedural() -> ProceduralDSprites:
  """The procedural dSprites source."""
  return ProceduralDSprites()


class NpzDSprites(_GroundTruth):
  """The original dSprites npz held in memory (about 3 GB of uint8).

  Args:
    imgs: ``[N, 64, 64]`` holding only 0 and 1 (any integer, bool or float
      dtype).
    classes: int ``[N, 6]``, the file's ``latents_classes``.
    path: where the arrays came from, for messages.

  Raises:
    DataError: a shape, dtype or the factor grid and order is not dSprites',
      or an image holds a value other than 0 and 1 (e.g. 0.5 or NaN).
  """

  def __init__(self, imgs: np.ndarray, classes: np.ndarray, path: str):
    self.name = path = os.fspath(path)

    def fail(problem: str, fix: str = "") -> base.DataError:
      return base.DataError(f"{path}: {problem}; {_NOT_ORIGINAL}{fix}.")

    if imgs.ndim != 3 or imgs.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
      raise fail(f"'imgs' has shape {imgs.shape}, expected [N, 64, 64]")
    if classes.shape != (len(imgs), 6):
      raise fail(
        f"'latents_classes' has shape {classes.shape}, expected "
        f"[{len(imgs)}, 6] (color, shape, scale, orientation, posX, posY)"
      )
    if classes.dtype.kind not in "iu":
      raise fail(
        f"'latents_classes' has dtype {classes.dtype}, expected integers"
      )
    if imgs.dtype.kind not in "biuf":
      raise fail(f"'imgs' has dtype {imgs.dtype}, expected uint8 0/1")
    if not (imgs.dtype.kind in "bu" and (imgs.size == 0 or imgs.max() <= 1)):
      for start in range(0, len(imgs), 4096):  # Bounded temporaries.
        block = imgs[start : start + 4096]
        bad = (block != 0) & (block != 1)  # NaN is neither.
        if bad.any():
          index = start + int(np.argmax(bad.reshape(len(block), -1).any(1)))
          raise fail(
            f"image {index} of 'imgs' holds {block[bad][0].item()!r}, but "
            "dSprites images hold only 0 and 1",
            ", or save your images binarised, e.g. "
            "imgs=(imgs > 0.5).astype(np.uint8)",
          )
    num_values = tuple(int(n) for n in classes.max(axis=0) + 1)
    if num_values[0] != 1 or math.prod(num_values) != len(imgs):
      raise fail(
        f"latents_classes span a grid of {num_values} values, which is not "
        f"a complete grid of {len(imgs)} images with one color"
      )
    expected = classes[:, 1:].astype(np.int64) @ _strides(num_values[1:])
    if not np.array_equal(expected, np.arange(len(imgs))):
      raise fail("images are not in the original factor order (posY fastest)")
    self._num_values = num_values[1:]
    self._imgs = imgs
    self._factors = classes[:, 1:].astype(np.int32)

  def get_batch(self, indices) -> base.Record:
    """The images and factors at ``indices`` ``[N]``, stacked."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    return {
      "image": (self._imgs[indices, :, :, None] > 0).astype(np.float32),
      "factors": self._factors[indices],
    }


def load_npz(path: str | os.PathLike) -> NpzDSprites:
  """Loads the original `NPZ_FILENAME` (``imgs`` and ``latents_classes``),
  with ``allow_pickle=False``: its pickled ``metadata`` is never read.

  Raises:
    DataError: the file is missing or a folder, not a zip archive, damaged,
      holds pickled arrays, or is not dSprites (as `NpzDSprites`).
  """
  path = os.fspath(path)
  fix = f"pass --data-dir=<path of {NPZ_FILENAME}>"
  if os.path.isdir(path):
    inside = os.path.join(path, NPZ_FILENAME)
    if not os.path.isfile(inside):
      inside = f"<path of {NPZ_FILENAME}>"
    raise base.DataError(
      f"{path} is a folder; pass the .npz file itself: --data-dir={inside}."
    )
  if not os.path.isfile(path):
    raise base.DataError(
      f"dSprites file not found: {path}. Download {NPZ_FILENAME} from "
      "https://github.com/deepmind/dsprites-dataset and pass its path "
      "(--data-dir=FILE), or use the procedural source, which needs no file "
      "(--data=procedural; vae_attn.data.dsprites.procedural() in code)."
    )
  damaged = f"Cannot read dSprites npz {path}:"
  try:
    with open(path, "rb") as f:
      head = f.read(6)
    if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # Zip magic.
      kind = "an .npy array" if head == b"\x93NUMPY" else f"the bytes {head!r}"
      if os.path.basename(path) == NPZ_FILENAME:  # A failed download.
        raise base.DataError(
          f"{damaged} it is not an npz (zip) archive but starts with {kind} "
          f"(a damaged download). Re-download {NPZ_FILENAME}."
        )
      raise base.DataError(
        f"{path} is not a dSprites .npz (it is not a zip archive: it starts "
        f"with {kind}); {fix}."
      )
    with np.load(path, allow_pickle=False) as npz:
      missing = {"imgs", "latents_classes"} - set(npz.files)
      if missing:
        raise base.DataError(
          f"{path} is not a dSprites .npz (it lacks the arrays "
          f"{sorted(missing)}; it holds {npz.files}); {fix}."
        )
      arrays = {}
      for key in ("imgs", "latents_classes"):
        try:
          arrays[key] = npz[key]
        except ValueError as e:
          if "allow_pickle" not in str(e):
            raise
          raise base.DataError(
            f"{path}: its array {key!r} holds pickled Python objects, which "
            "are never loaded (unpickling can run code from the file); "
            f"{_NOT_ORIGINAL}, or save {key!r} as a numeric array."
          ) from e
  except base.DataError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    reason = " ".join(str(e).split()) or type(e).__name__
    raise base.DataError(
      f"{damaged} {reason} (the file is truncated or damaged). Re-download "
      f"{NPZ_FILENAME}."
    ) from e
  return NpzDSprites(arrays["imgs"], arrays["latents_classes"], path)


class TfdsDSprites(_GroundTruth):
  """The records of ``source`` (any order, as tfds stores them) in factor
  order: record ``i`` is image ``i`` of the original file.

  Args:
    source: records ``{"image", "factors"}`` (`load_tfds`).
    num_values: the factor grid (default dSprites').
    progress: wraps the record indices while every record's factors are read
      once (e.g. ``tqdm.tqdm``).

  Raises:
    DataError: a factor combination is missing or repeated.
  """

  def __init__(
    self,
    source: base.Source,
    num_values: Sequence[int] = FACTORS_NUM_VALUES,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
  ):
    self.name = f"{source!r} in factor order"
    self._source = source
    self._num_values = tuple(int(n) for n in num_values)
    records = range(len(source))
    if progress is not None:
      records = progress(records)
    factors = np.stack([np.asarray(source[i]["factors"]) for i in records])
    index = factors_to_index(factors, self._num_values)
    total = math.prod(self._num_values)
    counts = np.bincount(index, minlength=total)
    if len(source) != total or np.any(counts != 1):
      raise base.DataError(
        f"{source!r} has {len(source)} records for {total} factor "
        f"combinations ({int(np.sum(counts == 0))} missing, "
        f"{int(np.sum(counts > 1))} repeated); prepare the full dSprites "
        "train split."
      )
    self._position = np.empty(total, np.int64)
    self._position[index] = np.arange(total)

  def get_batch(self, indices) -> base.Record:
    """The records of original image indices ``[N]``, stacked."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    records = [self._source[int(i)] for i in self._position[indices]]
    return {
      "image": np.stack([r["image"] for r in records]).astype(np.float32),
      "factors": np.stack([r["factors"] for r in records]).astype(np.int32),
    }


def _tfds_record(example: dict) -> base.Record:
  keys = ("shape", "scale", "orientation", "x_position", "y_position")
  return {
    "image": (np.asarray(example["image"]) > 0).astype(np.float32),
    "factors": np.array([example[f"label_{k}"] for k in keys], np.int32),
  }


def load_tfds(
  split: str = "train", data_dir: str | os.PathLike | None = None
) -> base.Source:
  """dSprites through ``tfds.data_source`` (array_record files, no TF), in
  the build's shuffled order (wrap it in `TfdsDSprites` for factor order).

  Raises:
    DataError: the data set has not been prepared in ``data_dir``.
  """
  from vae_attn.data import tfds_source

  return tfds_source.open_source("dsprites", split, data_dir, _tfds_record)
