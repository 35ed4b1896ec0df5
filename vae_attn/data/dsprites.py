"""dSprites: a procedural renderer (the offline default), the npz, and tfds.

All three give records ``{"image": float32 [64, 64, 1] in {0, 1}, "factors":
int32 [5]}`` where ``factors`` are the classes of (shape, scale, orientation,
posX, posY): dSprites' ``latents_classes`` without its constant color column.
Record ``i`` of the procedural and npz sources is image ``i`` of the original
file: the factor grid 3 x 6 x 40 x 32 x 32 in row-major order, posY fastest.

The procedural and npz sources also implement the ground-truth-data interface
of disentanglement_lib (``num_factors``, ``factors_num_values``,
``observation_shape``, ``sample_factors``, ``sample_observations_from_factors``,
``sample``) that the disentanglement metrics consume.

The procedural images are *not* the original pixels. The factor grid, index
order and factor values are the original ones, but the sprites are drawn from
analytic shapes: a square, an ellipse with a 2:1 aspect ratio, and a heart
from the implicit curve ``(x^2 + y^2 - 1)^3 - x^2 y^3 <= 0`` (the original
heart outline is not published). Each sprite's circumscribed radius is
``15 * scale`` pixels; orientation turns it counter-clockwise on screen;
posX moves its centre right (column ``16 + 31 * posX``) and posY moves it
down (row ``16 + 31 * posY``), one pixel per position step, so every sprite
stays inside the canvas. A pixel is on when its centre lies in the shape.
"""

from __future__ import annotations

import abc
import math
import os
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

from vae_attn.data import base

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTORS_NUM_VALUES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
NUM_IMAGES = math.prod(FACTORS_NUM_VALUES)  # 737,280
IMAGE_SIZE = 64
NPZ_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"

# Factor values as in the original file's `latents_values` (color first).
SCALE_VALUES = np.linspace(0.5, 1.0, 6)
ORIENTATION_VALUES = np.linspace(0.0, 2 * np.pi, 40)
POSITION_VALUES = np.linspace(0.0, 1.0, 32)

# Sprite geometry: a sprite is drawn in a _WINDOW x _WINDOW box centred on
# its pixel (_HALF, _HALF) and pasted at offset (posY, posX) classes.
_WINDOW = IMAGE_SIZE - FACTORS_NUM_VALUES[3] + 1  # 33
_HALF = _WINDOW // 2  # 16
_RADIUS = 15.0  # circumscribed radius in pixels at scale 1.
_TOLERANCE = 1e-9
# Heart curve: bounding box centre and circumscribed radius about it.
_HEART_SHIFT = 0.118
_HEART_RADIUS = 1.3366


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


def _strides(num_values: Sequence[int]) -> np.ndarray:
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
  return factors @ _strides(num_values)


def index_to_factors(indices, num_values=FACTORS_NUM_VALUES) -> np.ndarray:
  """Maps image indices ``[N]`` to factor classes ``[N, 5]`` (int64)."""
  indices = np.asarray(indices, dtype=np.int64)
  total = math.prod(num_values)
  if indices.size and (indices.min() < 0 or indices.max() >= total):
    raise IndexError(f"indices must be in [0, {total}).")
  return (indices[..., None] // _strides(num_values)) % np.asarray(num_values)


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


def _unit_shape_masks(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Membership of points (unit circumradius frame) in the three shapes.

  Returns:
    bool ``[3, ...]``: square, ellipse, heart.
  """
  side = 1 / math.sqrt(2) + _TOLERANCE
  square = np.maximum(np.abs(u), np.abs(v)) <= side
  ellipse = u**2 + (2 * v) ** 2 <= 1 + _TOLERANCE
  x = u * _HEART_RADIUS
  y = v * _HEART_RADIUS + _HEART_SHIFT
  heart = (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= _TOLERANCE
  return np.stack([square, ellipse, heart])


def render_sprites() -> np.ndarray:
  """Renders every (shape, scale, orientation) sprite in its 33 x 33 box.

  Returns:
    bool ``[3, 6, 40, 33, 33]``; the sprite centre is pixel (16, 16).
  """
  grid = np.arange(_WINDOW) - _HALF
  dx = grid[None, :].astype(np.float64)  # columns, right
  dy = -grid[:, None].astype(np.float64)  # rows, up on screen
  theta = np.mod(ORIENTATION_VALUES, 2 * np.pi)[:, None, None]
  cos, sin = np.cos(theta), np.sin(theta)
  # Rotating the shape by +theta = rotating the sample points by -theta.
  u = cos * dx + sin * dy  # [40, 33, 33]
  v = -sin * dx + cos * dy
  scale = (_RADIUS * SCALE_VALUES)[:, None, None, None]  # [6, 1, 1, 1]
  return _unit_shape_masks(u[None] / scale, v[None] / scale)


class _GroundTruth(abc.ABC):
  """disentanglement_lib's ground-truth-data interface over a factor grid.

  Subclasses set ``_num_values`` and implement ``get_batch(indices)``.
  """

  _num_values: tuple[int, ...]

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
    """Images for factor classes ``[N, 5]``: float32 ``[N, 64, 64, 1]``.

    Every factor combination has exactly one image, so ``random_state`` is
    not used (it is accepted for the interface).
    """
    del random_state
    index = factors_to_index(factors, self._num_values)
    return self.get_batch(index)["image"]

  def sample(self, num: int, random_state) -> tuple[np.ndarray, np.ndarray]:
    """Samples factors and their images: ``([num, 5], [num, 64, 64, 1])``."""
    factors = self.sample_factors(num, random_state)
    return factors, self.sample_observations_from_factors(factors, random_state)

  def sample_observations(self, num: int, random_state) -> np.ndarray:
    """Samples ``num`` images uniformly: float32 ``[num, 64, 64, 1]``."""
    return self.sample(num, random_state)[1]

  @abc.abstractmethod
  def get_batch(self, indices) -> base.Record:
    """The records at ``indices`` ``[N]``, stacked."""


class ProceduralDSprites(_GroundTruth):
  """All 737,280 dSprites images, rendered on demand (no file needed).

  The 720 sprites are drawn once at construction (milliseconds); an image is
  a zero canvas with its sprite pasted at (posY, posX), so batches of any
  size render in a few vectorised numpy operations.

  Example:

    >>> ds = ProceduralDSprites()
    >>> len(ds), ds[0]["image"].shape, ds[0]["factors"].tolist()
    (737280, (64, 64, 1), [0, 0, 0, 0, 0])
  """

  name = "dsprites_procedural"
  _num_values = FACTORS_NUM_VALUES

  def __init__(self):
    self._sprites = render_sprites().astype(np.float32)
    self._sprites.setflags(write=False)

  def __len__(self) -> int:
    return NUM_IMAGES

  def __getitem__(self, index: int) -> base.Record:
    index = base.check_index(index, NUM_IMAGES, self.name)
    batch = self.get_batch(np.array([index]))
    return {k: v[0] for k, v in batch.items()}

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
    """Renders factor classes ``[N, 5]`` into images ``[N, 64, 64, 1]``.

    Args:
      factors: int classes of (shape, scale, orientation, posX, posY).
      dtype: output dtype (e.g. ``np.uint8`` to render the whole set in 3 GB).
    """
    factors = check_factors(factors, FACTORS_NUM_VALUES)
    num = len(factors)
    images = np.zeros((num, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=dtype)
    window = np.arange(_WINDOW)
    rows = factors[:, 4, None, None] + window[None, :, None]
    cols = factors[:, 3, None, None] + window[None, None, :]
    sprites = self._sprites[factors[:, 0], factors[:, 1], factors[:, 2]]
    images[np.arange(num)[:, None, None], rows, cols, 0] = sprites
    return images

  def __repr__(self) -> str:
    return f"ProceduralDSprites(len={NUM_IMAGES})"


def procedural() -> ProceduralDSprites:
  """The procedural dSprites source (see the module docstring)."""
  return ProceduralDSprites()


class NpzDSprites(_GroundTruth):
  """The original dSprites npz held in memory (about 3 GB of uint8).

  Args:
    imgs: ``[N, 64, 64]`` of 0 and 1 only (the file's uint8; bool, other
      integer or float dtypes are accepted when every value is 0 or 1).
    classes: int ``[N, 6]``, the ``latents_classes`` of the file.
    path: where the arrays came from, for messages.

  Raises:
    DataError: a shape or the factor grid is not dSprites', ``classes`` is
      not integer, or an image holds a value other than 0 and 1 (e.g. 0.5 or
      NaN, which reading would otherwise binarise silently).
  """

  def __init__(self, imgs: np.ndarray, classes: np.ndarray, path: str):
    self.name = os.fspath(path)
    if imgs.ndim != 3 or imgs.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
      raise base.DataError(
        f"{path}: 'imgs' has shape {imgs.shape}, expected [N, 64, 64]. "
        f"Is this the dSprites file {NPZ_FILENAME}?"
      )
    if classes.ndim != 2 or classes.shape != (len(imgs), 6):
      raise base.DataError(
        f"{path}: 'latents_classes' has shape {classes.shape}, expected "
        f"[{len(imgs)}, 6] (color, shape, scale, orientation, posX, posY)."
      )
    if classes.dtype.kind not in "iu":
      raise base.DataError(
        f"{path}: 'latents_classes' has dtype {classes.dtype}, expected "
        f"integers. Re-download {NPZ_FILENAME}."
      )
    self._check_binary(imgs, path)
    num_values = tuple(int(n) for n in classes.max(axis=0) + 1)
    if num_values[0] != 1 or math.prod(num_values) != len(imgs):
      raise base.DataError(
        f"{path}: latents_classes span a grid of {num_values} values, which "
        f"is not a complete grid of {len(imgs)} images with one color. "
        f"Re-download {NPZ_FILENAME}."
      )
    expected = classes[:, 1:].astype(np.int64) @ _strides(num_values[1:])
    if not np.array_equal(expected, np.arange(len(imgs))):
      raise base.DataError(
        f"{path}: images are not in the original factor order (posY "
        f"fastest). Re-download {NPZ_FILENAME}."
      )
    self._num_values = num_values[1:]
    self._imgs = imgs
    self._factors = classes[:, 1:].astype(np.int32)

  @staticmethod
  def _check_binary(imgs: np.ndarray, path: str, chunk: int = 4096) -> None:
    """Raises unless every value of ``imgs`` is 0 or 1 (NaN is neither)."""
    if imgs.dtype == np.bool_ or (
      imgs.dtype.kind == "u" and (imgs.size == 0 or imgs.max() <= 1)
    ):
      return
    if imgs.dtype.kind not in "iuf":
      raise base.DataError(
        f"{path}: 'imgs' has dtype {imgs.dtype}, expected uint8 0/1. "
        f"Re-download {NPZ_FILENAME}."
      )
    for start in range(0, len(imgs), chunk):  # Bounded temporaries.
      block = imgs[start : start + chunk]
      bad = (block != 0) & (block != 1)
      if bad.any():
        index = start + int(np.argmax(bad.reshape(len(block), -1).any(1)))
        value = block[bad][0].item()
        raise base.DataError(
          f"{path}: image {index} of 'imgs' holds {value!r}, but dSprites "
          "images hold only 0 and 1. Re-download "
          f"{NPZ_FILENAME}, or save your images binarised, e.g. "
          "imgs=(imgs > 0.5).astype(np.uint8)."
        )

  def __len__(self) -> int:
    return len(self._imgs)

  def __getitem__(self, index: int) -> base.Record:
    index = base.check_index(index, len(self), self.name)
    return {
      "image": (self._imgs[index, :, :, None] > 0).astype(np.float32),
      "factors": self._factors[index],
    }

  def get_batch(self, indices) -> base.Record:
    """The images and factors at ``indices`` ``[N]``, stacked."""
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    return {
      "image": (self._imgs[indices, :, :, None] > 0).astype(np.float32),
      "factors": self._factors[indices],
    }

  def __repr__(self) -> str:
    return f"NpzDSprites({self.name!r}, len={len(self)})"


def load_npz(path: str | os.PathLike) -> NpzDSprites:
  """Loads the original ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.

  The file's ``metadata`` entry is a pickled object; it is never read
  (``allow_pickle=False``), only ``imgs`` and ``latents_classes`` are. The
  images must hold only 0 and 1 (see `NpzDSprites`).

  Args:
    path: the npz file (get it from github.com/deepmind/dsprites-dataset).

  Returns:
    A source with the ground-truth-data interface.

  Raises:
    DataError: the file is missing, not an npz (zip) archive, truncated or
      damaged, or not dSprites (arrays, shapes, factor grid, non-binary or
      NaN images).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise base.DataError(
      f"dSprites file not found: {path}. Download {NPZ_FILENAME} from "
      "https://github.com/deepmind/dsprites-dataset and pass its path, or use "
      "vae_attn.data.dsprites.procedural() which needs no file."
    )
  try:
    with open(path, "rb") as f:
      head = f.read(6)
    if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # Zip magic.
      kind = "an .npy array" if head == b"\x93NUMPY" else f"the bytes {head!r}"
      raise base.DataError(
        f"Cannot read dSprites npz {path}: it is not an npz (zip) archive "
        f"but starts with {kind}. Re-download {NPZ_FILENAME}."
      )
    with np.load(path, allow_pickle=False) as npz:
      missing = {"imgs", "latents_classes"} - set(npz.files)
      if missing:
        raise base.DataError(
          f"{path}: missing arrays {sorted(missing)}; found {npz.files}. "
          f"Is this the dSprites file {NPZ_FILENAME}?"
        )
      imgs = npz["imgs"]
      classes = npz["latents_classes"]
  except base.DataError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    reason = " ".join(str(e).split()) or type(e).__name__
    raise base.DataError(
      f"Cannot read dSprites npz {path}: {reason} (the file is truncated or "
      f"damaged). Re-download {NPZ_FILENAME}."
    ) from e
  return NpzDSprites(imgs, classes, path)


def _tfds_record(example: dict) -> base.Record:
  keys = ("shape", "scale", "orientation", "x_position", "y_position")
  return {
    "image": (np.asarray(example["image"]) > 0).astype(np.float32),
    "factors": np.array([example[f"label_{k}"] for k in keys], np.int32),
  }


def load_tfds(
  split: str = "train", data_dir: str | os.PathLike | None = None
) -> base.Source:
  """dSprites through ``tfds.data_source`` (array_record files, no TF).

  The tfds build stores examples in its own shuffled order, so record ``i``
  is not image ``i`` of the original file; read the factors from each record.
  For the ground-truth interface use `procedural` or `load_npz`.

  Args:
    split: a tfds split string (dSprites has only "train").
    data_dir: the tfds data directory (default: tfds' own default).

  Raises:
    DataError: the data set has not been prepared in ``data_dir``.
  """
  from vae_attn.data import tfds_source

  return tfds_source.open_source("dsprites", split, data_dir, _tfds_record)
