"""Image and mask files: reading, resizing, binarising, augmenting.

The reading rules of every loader (docs/data.md); each failure raises a
one-line `DataError` naming the file and the fix:

- An EXIF orientation tag is applied (`image_size_of` gives the upright
  size). 16-bit grey (Pillow ``I;16*``, and ``I`` in [0, 65535]) is scaled by
  ``v * 255 / 65535``; 32-bit float (``F``) and other 32-bit integers are
  refused. Images above ``PIL.Image.MAX_IMAGE_PIXELS`` are refused.
- A mask pixel is anomalous when its value is not zero (MVTec-AD's rule):
  grey values, any colour channel (``P`` through its palette); with alpha, a
  fully transparent pixel is background.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps

from vae_attn.data import base

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SIXTEEN_BIT_MAX = 65535
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_GREY_MODES = ("1", "L", "I", "F", *_SIXTEEN_BIT_MODES)
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa")
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height.
# Decoding errors of Pillow for corrupt or truncated files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError)
_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_LOSSY_FORMATS = ("JPEG", "MPO")  # MPO: Pillow's name for multi-frame JPEG.
_LOSSY_TIFF = ("jpeg", "tiff_jpeg")  # TIFF compressions that are lossy.


def list_images(folder: str | os.PathLike) -> list[str]:
  """Image files (by extension, not hidden) directly in ``folder``, sorted."""
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


def _unreadable(path: str, error: Exception) -> base.DataError:
  if isinstance(error, FileNotFoundError):
    return base.DataError(
      f"Image {path} not found. Restore it, or remove it from the data set."
    )
  reason = " ".join(str(error).split()) or type(error).__name__
  kinds = "PNG, JPEG, BMP or TIFF"  # IMAGE_EXTENSIONS.
  return base.DataError(
    f"Cannot read image {path}: it is not a readable {kinds} image "
    f"({reason}); pass image files, or replace a damaged one with an intact "
    "copy."
  )


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Image.Image]:
  """``Image.open(path)``, its errors raised as one-line `DataError`."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", UserWarning)  # e.g. corrupt EXIF.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as im:
        yield im
  except _BOMBS as e:
    # Pillow's message: "Image size (N pixels) exceeds limit of M pixels, ..."
    found = re.search(r"\((\d+) pixels\)", str(e))
    pixels = f"{int(found[1]):,} pixels" if found else "too many pixels"
    raise base.DataError(
      f"Image {path} has {pixels}, more than Pillow's limit of "
      f"{Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS), which guards "
      "against decompression bombs. Downscale the file (the loaders resize it "
      "anyway), or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it."
    ) from e
  except _DECODE_ERRORS as e:
    raise _unreadable(path, e) from e


def _header(path: str) -> tuple[tuple[int, int], bool]:
  """The upright ``(height, width)`` and whether the pixels are lossy."""
  with _opened(path) as im:
    width, height = im.size
    # A PNG's eXIf chunk after the pixel data would need a full decode;
    # Pillow and other writers put it before them.
    if (
      im.format != "PNG"
      or "exif" in im.info
      or "Raw profile type exif" in im.info
    ) and int(im.getexif().get(ExifTags.Base.Orientation, 1)) in _TRANSPOSED:
      width, height = height, width
    lossy = im.format in _LOSSY_FORMATS or (
      im.info.get("compression") in _LOSSY_TIFF
    )
  return (height, width), lossy


def image_size_of(path: str) -> tuple[int, int]:
  """The upright ``(height, width)`` of an image, from its header only.

  Raises:
    DataError: missing, not an image, or above Pillow's pixel limit.
  """
  return _header(path)[0]


def is_lossy(path: str) -> bool:
  """Whether a file's pixels are lossy (JPEG, JPEG-in-TIFF); its header only.

  Raises:
    DataError: as `image_size_of`.
  """
  return _header(path)[1]


def _open_upright(path: str) -> Image.Image:
  """Decodes an image file upright (EXIF applied), in its own mode."""
  with _opened(path) as im:
    im.load()
    return ImageOps.exif_transpose(im)


def _eight_bit(im: Image.Image, path: str) -> Image.Image:
  """``im`` with 16-bit grey scaled to 8 bits by the format's range."""
  if im.mode == "F":
    finite = np.isfinite(np.asarray(im)).all()
    raise base.DataError(
      f"Image {path} is 32-bit floating point, a format without a value "
      f"range{'' if finite else ', and holds NaN or infinite values'}. Save "
      "it as an 8- or 16-bit PNG or TIFF."
    )
  if im.mode not in ("I", *_SIXTEEN_BIT_MODES):
    return im
  arr = np.asarray(im)
  if arr.size and (arr.min() < 0 or arr.max() > SIXTEEN_BIT_MAX):
    raise base.DataError(
      f"Image {path} holds 32-bit integers in [{arr.min()}, {arr.max()}], "
      f"outside the 16-bit range [0, {SIXTEEN_BIT_MAX}] the loaders scale "
      "by. Save it as an 8- or 16-bit PNG or TIFF."
    )
  scaled = np.rint(arr.astype(np.float64) * (255.0 / SIXTEEN_BIT_MAX))
  return Image.fromarray(scaled.astype(np.uint8))


def read_image(
  path: str, *, channels: int, size: int | Sequence[int] | None = None
) -> np.ndarray:
  """Reads an image as uint8 ``[H, W, channels]``, resized bilinearly.

  Args:
    path: the image file (read by the module's rules).
    channels: 1 (colour to ITU-R 601 luma) or 3 (grey promoted).
    size: ``(height, width)`` or an int for a square; None keeps it.

  Raises:
    DataError: by the module's rules.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}.")
  im = _eight_bit(_open_upright(path), path)
  try:
    im = im.convert("L" if channels == 1 else "RGB")
  except ValueError as e:
    raise _unreadable(path, e) from e
  arr = np.asarray(_resized(im, size, Image.Resampling.BILINEAR), np.uint8)
  return arr[..., None] if channels == 1 else arr


def _resized(im: Image.Image, size, resample) -> Image.Image:
  if size is None:
    return im
  height, width = check_image_size(size)
  return (
    im if im.size == (width, height) else im.resize((width, height), resample)
  )


def _mask_from_image(im: Image.Image, path: str) -> np.ndarray:
  """The anomalous pixels (uint8 ``[H, W]`` in {0, 1}) of a mask image."""
  if im.mode in ("P", "PA"):  # Palette colours, with any transparent index.
    im = im.convert("RGBA")
  if im.mode not in (*_GREY_MODES, *_ALPHA_MODES):
    try:
      im = im.convert("RGB")
    except ValueError as e:
      raise _unreadable(path, e) from e
  arr = np.asarray(im)
  if im.mode == "F" and not np.isfinite(arr).all():
    raise base.DataError(
      f"Mask {path} holds NaN or infinite values. Save it with 0 for "
      "normal and a non-zero value for anomalous pixels."
    )
  drawn = True
  if im.mode in _ALPHA_MODES:  # Fully transparent pixels are background.
    arr, drawn = arr[..., :-1], arr[..., -1] != 0
  out = arr != 0
  return ((out.any(axis=-1) if arr.ndim == 3 else out) & drawn).astype(np.uint8)


def read_mask(
  path: str, *, size: int | Sequence[int] | None = None
) -> np.ndarray:
  """Reads a mask as uint8 ``[H, W, 1]`` in {0, 1}, resized (nearest).

  Raises:
    DataError: by the module's rules, or the mask holds NaN.
  """
  im = Image.fromarray(_mask_from_image(_open_upright(path), path))
  im = _resized(im, size, Image.Resampling.NEAREST)
  return np.asarray(im, np.uint8)[..., None]


def check_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
  """``(height, width)`` of an ``image_size``, an int or a pair of ints.

  Raises:
    ValueError: not an int or a pair of ints, or not positive.
  """
  if isinstance(image_size, (int, np.integer)) and not isinstance(
    image_size, bool
  ):
    image_size = (image_size, image_size)
  try:
    height, width = (int(s) for s in image_size)
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"image_size must be an int or (h, w), got {image_size!r}."
    ) from e
  if height < 1 or width < 1:
    raise ValueError(f"image_size must be positive, got {image_size}.")
  return height, width


def rotate_and_mirror(
  record: base.Record,
  rng: np.random.Generator,
  *,
  max_degrees: float = 30.0,
) -> base.Record:
  """The paper's MVTec-AD augmentation: random rotation and mirroring.

  Rotates ``"image"`` ``[H, W, C]`` (bilinear) and the optional ``"mask"``
  ``[H, W, 1]`` (nearest) by one angle uniform in ``[-max_degrees,
  max_degrees]`` (corners rotated in: the median border colour, mask 0),
  then flips both left-right with probability 1/2; a new record.
  """
  angle = float(rng.uniform(-max_degrees, max_degrees))
  flip = bool(rng.random() < 0.5)
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
