"""Image and mask files: reading, resizing, binarising, augmenting.

Every failure raises `DataError` naming the file. Masks are binarised with
one rule (`binarize_mask`): a pixel is anomalous when its grey value is above
half of the mask's range, i.e. > 127 for 8-bit masks stored as 0/255, and
> 0 for masks stored as 0/1 (whose maximum is 1).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vae_attn.data import base

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(folder: str | os.PathLike) -> list[str]:
  """Image files (by extension) directly in ``folder``, sorted by name.

  Hidden files (``.name``, e.g. macOS ``._001.tif`` resource forks) are
  skipped.
  """
  folder = os.fspath(folder)
  return sorted(
    os.path.join(folder, f)
    for f in os.listdir(folder)
    if f.lower().endswith(IMAGE_EXTENSIONS)
    and not f.startswith(".")
    and os.path.isfile(os.path.join(folder, f))
  )


def stem(path: str) -> str:
  """The file name without folder and extension."""
  return os.path.splitext(os.path.basename(path))[0]


def image_size_of(path: str) -> tuple[int, int]:
  """Reads only the header of an image: ``(height, width)``.

  Raises:
    DataError: the file is missing or not an image PIL can identify.
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # e.g. corrupt EXIF.
      with Image.open(path) as im:
        width, height = im.size
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise base.DataError(
      f"Cannot read image {path}: {e}. Replace or delete the file."
    ) from e
  return height, width


def _open(path: str, mode: str) -> Image.Image:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # e.g. corrupt EXIF.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as im:
        im.load()
        if mode == "L" and im.mode in ("I;16", "I;16B", "I;16L", "I"):
          arr = np.asarray(im, dtype=np.float64)
          top = max(float(arr.max()), 1.0)
          return Image.fromarray(np.uint8(np.round(arr / top * 255)), "L")
        return im.convert(mode)
  except (
    OSError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
  ) as e:
    raise base.DataError(
      f"Cannot read image {path}: {e}. The file is corrupt or not an image; "
      "replace or delete it."
    ) from e


def read_image(
  path: str, *, channels: int, size: int | Sequence[int] | None = None
) -> np.ndarray:
  """Reads an image as uint8 ``[H, W, channels]``, resized bilinearly.

  Args:
    path: the image file. Grayscale is promoted to 3 channels and colour
      reduced to 1 (ITU-R 601 luma) as ``channels`` asks.
    channels: 1 or 3.
    size: output ``(height, width)`` or one int for a square; None keeps it.

  Raises:
    DataError: the file cannot be decoded.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}.")
  im = _open(path, "L" if channels == 1 else "RGB")
  if size is not None:
    height, width = _pair(size)
    if im.size != (width, height):
      im = im.resize((width, height), Image.Resampling.BILINEAR)
  arr = np.asarray(im, dtype=np.uint8)
  return arr[..., None] if channels == 1 else arr


def binarize_mask(arr: np.ndarray) -> np.ndarray:
  """The module's binarisation rule: uint8 {0, 1} from grey values."""
  arr = np.asarray(arr)
  if arr.size and arr.max() <= 1:
    return (arr > 0).astype(np.uint8)
  return (arr > 127).astype(np.uint8)


def read_mask(
  path: str, *, size: int | Sequence[int] | None = None
) -> np.ndarray:
  """Reads a mask as uint8 ``[H, W, 1]`` in {0, 1}, resized (nearest).

  Colour masks are converted to grey first; see `binarize_mask`.

  Raises:
    DataError: the file cannot be decoded.
  """
  arr = binarize_mask(np.asarray(_open(path, "L")))
  if size is not None:
    height, width = _pair(size)
    if arr.shape != (height, width):
      im = Image.fromarray(arr).resize(
        (width, height), Image.Resampling.NEAREST
      )
      arr = np.asarray(im, dtype=np.uint8)
  return arr[..., None]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    size = (int(size), int(size))
  height, width = (int(s) for s in size)
  if height < 1 or width < 1:
    raise ValueError(f"image_size must be positive, got {size}.")
  return height, width


def check_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
  """Validates a loader's ``image_size`` argument: ``(height, width)``."""
  if isinstance(image_size, bool):
    raise ValueError(f"image_size must be an int or (h, w), got {image_size}.")
  try:
    return _pair(image_size)
  except TypeError as e:
    raise ValueError(
      f"image_size must be an int or (h, w), got {image_size!r}."
    ) from e


def rotate_and_mirror(
  record: base.Record,
  rng: np.random.Generator,
  *,
  max_degrees: float = 30.0,
  mirror: bool = True,
) -> base.Record:
  """The paper's MVTec-AD augmentation: random rotation and mirroring.

  Rotates ``"image"`` (bilinear) and ``"mask"`` (nearest) by the same angle,
  uniform in ``[-max_degrees, max_degrees]``, about the centre. Corners that
  rotate in from outside the frame get the median border colour (image) and
  0 (mask). Then mirrors both left-right with probability 1/2.

  Args:
    record: a record with float32 ``"image"`` ``[H, W, C]`` and optionally
      ``"mask"`` ``[H, W, 1]``.
    rng: the random generator (the pipeline passes a seeded one).
    max_degrees: the largest rotation in degrees.
    mirror: flip left-right with probability 1/2.

  Returns:
    A new record; other fields are copied unchanged.
  """
  angle = float(rng.uniform(-max_degrees, max_degrees))
  flip = bool(mirror and rng.random() < 0.5)
  out = dict(record)
  image = np.asarray(record["image"], dtype=np.float32)
  channels = [
    np.asarray(
      Image.fromarray(np.ascontiguousarray(image[..., c])).rotate(
        angle, Image.Resampling.BILINEAR, fillcolor=None
      )
    )
    for c in range(image.shape[-1])
  ]
  rotated = np.stack(channels, axis=-1)
  # Fill pixels rotated in from outside with the border colour, not black.
  valid = np.asarray(
    Image.fromarray(np.ones(image.shape[:2], np.float32)).rotate(
      angle, Image.Resampling.NEAREST
    )
  )
  if (valid < 1).any():
    edge = np.median(
      np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]], axis=0),
      axis=0,
    )
    rotated = np.where(valid[..., None] >= 1, rotated, edge)
  image = np.clip(rotated, 0.0, 1.0).astype(np.float32)
  if "mask" in record:
    mask = np.asarray(record["mask"], dtype=np.uint8)[..., 0]
    mask = np.asarray(
      Image.fromarray(mask).rotate(angle, Image.Resampling.NEAREST)
    )[..., None].astype(np.float32)
    out["mask"] = mask[:, ::-1].copy() if flip else mask
  out["image"] = image[:, ::-1].copy() if flip else image
  return out
