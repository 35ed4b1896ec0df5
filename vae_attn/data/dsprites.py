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

The procedural source draws through `render`, whose module
(``vae_attn/data/_dsprites_render.py``) gives the geometry fitted to real
frames and its fidelity: the real images up to a few outline pixels. The
factor grid and its index arithmetic are in ``_dsprites_factors.py``. Both
are re-exported here.
"""

from __future__ import annotations

import abc
import math
import os
import zipfile
import zlib

import jax
import numpy as np

from vae_attn.data import _dsprites_factors, base
from vae_attn.data._dsprites_factors import FACTOR_NAMES as FACTOR_NAMES
from vae_attn.data._dsprites_factors import (
  FACTORS_NUM_VALUES as FACTORS_NUM_VALUES,
)
from vae_attn.data._dsprites_factors import IMAGE_SIZE as IMAGE_SIZE
from vae_attn.data._dsprites_factors import NUM_IMAGES as NUM_IMAGES
from vae_attn.data._dsprites_factors import (
  ORIENTATION_VALUES as ORIENTATION_VALUES,
)
from vae_attn.data._dsprites_factors import POSITION_VALUES as POSITION_VALUES
from vae_attn.data._dsprites_factors import SCALE_VALUES as SCALE_VALUES
from vae_attn.data._dsprites_factors import SHAPE_NAMES as SHAPE_NAMES
from vae_attn.data._dsprites_factors import check_factors as check_factors
from vae_attn.data._dsprites_factors import factors_to_index as factors_to_index
from vae_attn.data._dsprites_factors import index_to_factors as index_to_factors
from vae_attn.data._dsprites_factors import latents_classes as latents_classes
from vae_attn.data._dsprites_factors import latents_values as latents_values
from vae_attn.data._dsprites_render import render as render

NPZ_FILENAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
# The fix named when a readable file is not dSprites (a damaged download
# fails its zip checks instead).
_NOT_ORIGINAL = (
  f"it is not the original {NPZ_FILENAME}; pass that file (--data-dir=<its "
  "path>)"
)
# ProceduralDSprites.render: images per jitted call, drawn as uint8 and cast
# by NumPy (on 2 CPU cores, about 2x faster than drawing float32 or than
# 2048 images per call).
_CHUNK = 1024


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


_render_jit = jax.jit(render, static_argnames="dtype")


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

  Images are drawn by `render`, the shape definition a device step uses too
  (jitted on the CPU, 1,024 images per call), so both give the same pixels.
  They match the real data set up to a few outline pixels: validated against
  160 real frames, see ``_dsprites_render.py`` and docs/data.md.

  Example:

    >>> ds = ProceduralDSprites()
    >>> len(ds), ds[0]["image"].shape, ds[0]["factors"].tolist()
    (737280, (64, 64, 1), [0, 0, 0, 0, 0])
  """

  name = "dsprites_procedural"
  _num_values = FACTORS_NUM_VALUES

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

    `render` jitted on the CPU, in calls of at most 1,024 images drawn as
    uint8 (padded to a power of two, so at most 11 programs are compiled).

    Args:
      factors: int classes of (shape, scale, orientation, posX, posY).
      dtype: output dtype (e.g. ``np.uint8`` to render the whole set in 3 GB).

    Raises:
      ValueError: ``factors`` is not an integer ``[N, 5]`` array of classes
        in range.
    """
    factors = check_factors(factors, FACTORS_NUM_VALUES).astype(np.int32)
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
        f"{path}: 'imgs' has shape {imgs.shape}, expected [N, 64, 64]; "
        f"{_NOT_ORIGINAL}."
      )
    if classes.ndim != 2 or classes.shape != (len(imgs), 6):
      raise base.DataError(
        f"{path}: 'latents_classes' has shape {classes.shape}, expected "
        f"[{len(imgs)}, 6] (color, shape, scale, orientation, posX, posY); "
        f"{_NOT_ORIGINAL}."
      )
    if classes.dtype.kind not in "iu":
      raise base.DataError(
        f"{path}: 'latents_classes' has dtype {classes.dtype}, expected "
        f"integers; {_NOT_ORIGINAL}."
      )
    self._check_binary(imgs, path)
    num_values = tuple(int(n) for n in classes.max(axis=0) + 1)
    if num_values[0] != 1 or math.prod(num_values) != len(imgs):
      raise base.DataError(
        f"{path}: latents_classes span a grid of {num_values} values, which "
        f"is not a complete grid of {len(imgs)} images with one color; "
        f"{_NOT_ORIGINAL}."
      )
    expected = classes[:, 1:].astype(np.int64) @ _dsprites_factors.strides(
      num_values[1:]
    )
    if not np.array_equal(expected, np.arange(len(imgs))):
      raise base.DataError(
        f"{path}: images are not in the original factor order (posY "
        f"fastest); {_NOT_ORIGINAL}."
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
        f"{path}: 'imgs' has dtype {imgs.dtype}, expected uint8 0/1; "
        f"{_NOT_ORIGINAL}."
      )
    for start in range(0, len(imgs), chunk):  # Bounded temporaries.
      block = imgs[start : start + chunk]
      bad = (block != 0) & (block != 1)
      if bad.any():
        index = start + int(np.argmax(bad.reshape(len(block), -1).any(1)))
        value = block[bad][0].item()
        raise base.DataError(
          f"{path}: image {index} of 'imgs' holds {value!r}, but dSprites "
          f"images hold only 0 and 1; {_NOT_ORIGINAL}, or save your images "
          "binarised, e.g. imgs=(imgs > 0.5).astype(np.uint8)."
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
    DataError: the file is missing or a folder, not an npz (zip) archive,
      truncated or damaged, or not dSprites (arrays, shapes, factor grid,
      non-binary or NaN images); only a damaged file is told to be
      re-downloaded.
  """
  path = os.fspath(path)
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
  fix = f"pass --data-dir=<path of {NPZ_FILENAME}>"
  try:
    with open(path, "rb") as f:
      head = f.read(6)
    if head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):  # Zip magic.
      kind = "an .npy array" if head == b"\x93NUMPY" else f"the bytes {head!r}"
      if os.path.basename(path) == NPZ_FILENAME:  # A failed download.
        raise base.DataError(
          f"Cannot read dSprites npz {path}: it is not an npz (zip) archive "
          f"but starts with {kind} (a damaged download). Re-download "
          f"{NPZ_FILENAME}."
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
