"""Image-and-mask data sets: walking a folder layout, pairing, the source.

A loader walks its layout into a list of `Entry` (image file, mask file or
none, label, defect type), checked by the rules below, and wraps the list in
an `ImageMaskSource`, which decodes and resizes the files on first access
and keeps the resized uint8 arrays in memory. Every inconsistency raises
`DataError` naming the file and the fix.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from vae_attn.data import base, images

NORMAL = "good"
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One record of an anomaly data set, before decoding.

  Attributes:
    image: the image file.
    mask: the mask file; None for an all-zero mask (normal images) or an
      unknown one (``has_mask=False``).
    label: 0 normal, 1 anomalous.
    defect_type: "good" or the defect folder name.
    has_mask: whether the mask (file or all-zero) is ground truth.
    extra: additional int fields of the record (e.g. a frame number).
  """

  image: str
  mask: str | None
  label: int
  defect_type: str
  has_mask: bool = True
  extra: tuple[tuple[str, int], ...] = ()


def check_split(split: str, data_set: str) -> None:
  """Raises `DataError` unless ``split`` is one of `SPLITS`."""
  if split not in SPLITS:
    raise base.DataError(
      f"{data_set} split must be one of {SPLITS}, got {split!r}."
    )


def require_dir(path: str, what: str, layout: str) -> str:
  """Returns ``path`` if it is a folder, else raises with the layout."""
  if not os.path.isdir(path):
    raise base.DataError(
      f"{what} not found: {path}. Expected layout:\n{layout}"
    )
  return path


def require_images(folder: str, layout: str) -> list[str]:
  """The images in ``folder``; raises if there are none."""
  files = images.list_images(folder)
  if not files:
    raise base.DataError(
      f"No images ({', '.join(images.IMAGE_EXTENSIONS)}) in {folder}. "
      f"Expected layout:\n{layout}"
    )
  return files


def subfolders(folder: str) -> list[str]:
  """Names of the sub-folders of ``folder``, sorted."""
  return sorted(
    d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))
  )


def walk_test_split(
  test_dir: str,
  mask_root: str | None,
  *,
  normal_name: str,
  suffixes: Sequence[str],
  layout: str,
) -> list[Entry]:
  """The test split of an MVTec-AD-like layout, normal folder first.

  ``<test_dir>/<normal_name>/`` holds normal images (all-zero masks); each
  other sub-folder a defect type, whose images are paired with the masks in
  ``<mask_root>/<defect_type>/`` (`pair_masks`). With ``mask_root`` None
  the defect images get ``has_mask=False``.

  Raises:
    DataError: no sub-folders, an empty folder, a mask folder of no test
      folder, a normal image's mask marking pixels, or as `pair_masks`.
  """
  types = sorted(subfolders(test_dir), key=lambda t: (t != normal_name, t))
  if not types:
    raise base.DataError(
      f"No defect-type folders in {test_dir}: put test images in "
      f"{test_dir}/{normal_name}/ and {test_dir}/<defect_type>/. Expected "
      f"layout:\n{layout}"
    )
  if mask_root is not None:
    _check_mask_root(mask_root, types, test_dir, normal_name)
  out = []
  for defect_type in types:
    files = require_images(os.path.join(test_dir, defect_type), layout)
    if defect_type == normal_name:
      out += [Entry(f, None, 0, defect_type) for f in files]
    elif mask_root is None:
      out += [Entry(f, None, 1, defect_type, has_mask=False) for f in files]
    else:
      masks = pair_masks(
        files,
        os.path.join(mask_root, defect_type),
        suffixes=suffixes,
        layout=layout,
      )
      out += [
        Entry(f, m, 1, defect_type) for f, m in zip(files, masks, strict=True)
      ]
  return out


def pair_masks(
  image_files: Sequence[str],
  mask_folder: str,
  *,
  suffixes: Sequence[str] = ("_mask",),
  layout: str,
) -> list[str]:
  """The mask of each image: ``<mask_folder>/<stem><suffix>.<any ext>``.

  ``suffixes``: ``("_mask",)`` in MVTec-AD, ``("",)`` for equal stems.

  Raises:
    DataError: the mask folder is missing, an image has no mask, a mask has
      no image, or an image has two candidate masks.
  """
  if not os.path.isdir(mask_folder):
    raise base.DataError(
      f"Mask folder {mask_folder} not found, but {len(image_files)} defect "
      f"images need masks (e.g. {image_files[0]}). Add the masks or remove "
      f"the defect images. Expected layout:\n{layout}"
    )
  masks = images.list_images(mask_folder)
  by_stem: dict[str, list[str]] = {}
  for mask in masks:
    by_stem.setdefault(images.stem(mask), []).append(mask)
  used = set()
  paired = []
  for image in image_files:
    s = images.stem(image)
    candidates = [m for suffix in suffixes for m in by_stem.get(s + suffix, [])]
    if not candidates:
      expected = " or ".join(
        os.path.join(mask_folder, s + suffix + ".png") for suffix in suffixes
      )
      raise base.DataError(
        f"Defect image {image} has no mask: expected {expected}. Add the "
        "mask or remove the image."
      )
    if len(candidates) > 1:
      raise base.DataError(
        f"Defect image {image} has several masks: {sorted(candidates)}. "
        "Keep one."
      )
    used.add(candidates[0])
    paired.append(candidates[0])
  orphans = sorted(set(masks) - used)
  if orphans:
    image_folder = os.path.dirname(image_files[0])
    raise base.DataError(
      f"Mask {orphans[0]} has no image in {image_folder} "
      f"({len(orphans)} orphan mask(s)). Add the image or remove the mask."
    )
  return paired


def _check_mask_root(
  mask_root: str, types: Sequence[str], test_dir: str, normal_name: str
) -> None:
  """Refuses mask folders of no test folder, and masks of normal images.

  All-zero masks under ``<mask_root>/<normal_name>/`` are ignored with a
  warning (normal images get all-zero masks anyway).
  """
  if not os.path.isdir(mask_root):
    return
  for name in subfolders(mask_root):
    masks = images.list_images(os.path.join(mask_root, name))
    if name not in types and masks:
      raise base.DataError(
        f"Mask {masks[0]} has no image: there is no test folder "
        f"{os.path.join(test_dir, name)}. Add the images or remove the "
        "masks."
      )
  folder = os.path.join(mask_root, normal_name)
  masks = images.list_images(folder) if os.path.isdir(folder) else []
  for mask in masks:
    if images.read_mask(mask).any():
      raise base.DataError(
        f"Mask {mask} marks anomalous pixels, but {normal_name}/ holds the "
        "normal images, which have none. Move the image and its mask to a "
        "defect-type folder, or, if the image is normal, move the mask out "
        f"of {normal_name}/."
      )
  if masks:
    warnings.warn(
      f"Ignoring {len(masks)} all-zero mask(s) in {folder}: normal images "
      "get all-zero masks anyway. Move the folder out of "
      f"{mask_root} to silence this.",
      stacklevel=3,
    )


def _check_masks_not_empty(entries: Sequence[Entry]) -> None:
  """Refuses defect images (label 1) whose mask has no anomalous pixel."""
  for entry in entries:
    if entry.label != 1 or entry.mask is None:
      continue
    if not images.read_mask(entry.mask).any():
      raise base.DataError(
        f"Mask {entry.mask} of defect image {entry.image} is empty (every "
        "pixel 0, so none is anomalous). Draw the defect in the mask, move "
        "the image to the normal folder if it has none, or allow empty "
        "masks (allow_empty_masks=True; --allow-empty-masks)."
      )


def check_mask_files(entries: Sequence[Entry]) -> None:
  """Checks each mask's size against its image's (header reads only).

  Warns once, naming the first file and the count, when masks are stored
  lossily (JPEG): compression noise counts as anomalous pixels.

  Raises:
    DataError: a mask's size differs from its image's.
  """
  lossy = []
  for entry in entries:
    if entry.mask is None:
      continue
    image_hw = images.image_size_of(entry.image)
    mask_hw = images.image_size_of(entry.mask)
    if image_hw != mask_hw:
      raise base.DataError(
        f"Mask {entry.mask} is {mask_hw[0]}x{mask_hw[1]} (HxW) but its image "
        f"{entry.image} is {image_hw[0]}x{image_hw[1]}. Masks must have "
        "their image's size."
      )
    if images.is_lossy(entry.mask):
      lossy.append(entry.mask)
  if lossy:
    warnings.warn(
      f"{len(lossy)} mask(s) are stored lossily (JPEG), e.g. {lossy[0]}: "
      "every non-zero value is anomalous, so compression noise around a "
      "defect counts as defect pixels. Save the masks losslessly (PNG).",
      stacklevel=2,
    )


class ImageMaskSource:
  """Images with pixel masks, decoded and resized on first access.

  Records: ``"image"`` float32 ``[H, W, C]`` in [0, 1]; ``"mask"`` float32
  ``[H, W, 1]`` in {0, 1}; ``"label"`` int32 (0 normal, 1 anomalous);
  ``"has_mask"`` int32 (1 when the mask is ground truth, 0 when unknown and
  therefore zero); ``"defect_type"`` and ``"path"`` 0-d str arrays; plus the
  entries' extra int32 fields. ``augment`` is carried as ``source.augment``
  for `vae_attn.data.pipeline.batches`; ``source[i]`` is never augmented.

  Args:
    entries: the records, in order.
    image_size: output ``(height, width)``.
    channels: 1 (grey) or 3 (RGB; grey files are promoted).
    name: a short name for messages.
    augment: optional ``fn(record, rng) -> record``.
  """

  def __init__(
    self,
    entries: Sequence[Entry],
    *,
    image_size: tuple[int, int],
    channels: int,
    name: str,
    augment: Callable[[base.Record, np.random.Generator], base.Record]
    | None = None,
  ):
    if not entries:
      raise base.DataError(f"{name}: no images found.")
    self._entries = list(entries)
    self.image_size = image_size
    self.channels = channels
    self.name = name
    self.augment = augment
    self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  @property
  def entries(self) -> list[Entry]:
    return list(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    hit = self._cache.get(index)
    if hit is not None:
      return hit
    entry = self._entries[index]
    image = images.read_image(
      entry.image, channels=self.channels, size=self.image_size
    )
    if entry.mask is None:
      mask = np.zeros((*self.image_size, 1), np.uint8)
    else:
      mask = images.read_mask(entry.mask, size=self.image_size)
    self._cache[index] = (image, mask)  # A race only decodes twice.
    return image, mask

  def __getitem__(self, index: int) -> base.Record:
    index = base.check_index(index, len(self), self.name)
    entry = self._entries[index]
    image, mask = self._decode(index)
    record = {
      "image": image.astype(np.float32) / 255.0,
      "mask": mask.astype(np.float32),
      "label": np.int32(entry.label),
      "has_mask": np.int32(entry.has_mask),
      "defect_type": np.array(entry.defect_type),
      "path": np.array(entry.image),
    }
    for key, value in entry.extra:
      record[key] = np.int32(value)
    return record


def image_mask_source(
  found: Sequence[Entry],
  *,
  image_size,
  name: str,
  augment: bool,
  seed: int,
  allow_empty_masks: bool = False,
) -> ImageMaskSource:
  """Checks the images and masks of ``found``; returns their RGB source.

  Every image must be readable, every mask its image's size and, unless
  ``allow_empty_masks``, mark an anomalous pixel. ``augment`` attaches
  `images.rotate_and_mirror`, with ``seed`` in its random stream.

  Raises:
    DataError: as `check_mask_files` and `_check_masks_not_empty`.
  """
  for entry in found:
    images.image_size_of(entry.image)
  check_mask_files(found)
  if not allow_empty_masks:
    _check_masks_not_empty(found)

  def seeded_augment(record, rng: np.random.Generator) -> base.Record:
    key = int(rng.integers(0, 2**63 - 1))
    return images.rotate_and_mirror(record, np.random.default_rng([seed, key]))

  return ImageMaskSource(
    found,
    image_size=image_size,
    channels=3,
    name=name,
    augment=seeded_augment if augment else None,
  )
