"""Image-and-mask data sets: walking a folder layout, pairing, the source.

A loader walks its layout into a list of `Entry`, and `ImageMaskSource`
checks the files when it is built (every inconsistency a one-line
`DataError` naming the file and the fix), then decodes and resizes each
image and mask on first access and keeps the uint8 arrays in memory.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence

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
    label: 0 normal, 1 anomalous, -1 anomalous iff the mask marks a pixel.
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


def normal_entries(folder: str, layout: str, name: str = NORMAL) -> list[Entry]:
  """The images in ``folder`` as normal entries; raises if there are none."""
  return [Entry(f, None, 0, name) for f in require_images(folder, layout)]


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

  ``<test_dir>/<normal_name>/`` holds normal images (all-zero masks), each
  other sub-folder a defect type, its images paired with the masks in
  ``<mask_root>/<defect_type>/`` (`pair_masks`; ``mask_root`` None: defect
  images get ``has_mask=False``).

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
    paired.append(candidates[0])
  orphans = sorted(set(masks) - set(paired))
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
  """Refuses mask folders of no test folder, and masks of normal images
  that mark pixels (all-zero ones are ignored, with a warning)."""
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


class ImageMaskSource:
  """Images with pixel masks, checked when built, decoded on first access.

  Records (docs/data.md): ``"image"`` float32 ``[H, W, channels]`` in [0, 1],
  ``"mask"`` float32 ``[H, W, 1]`` in {0, 1}, ``"label"`` and ``"has_mask"``
  int32, ``"defect_type"`` and ``"path"`` 0-d str, the entries' extra int32
  fields. `pipeline.batches` applies ``source.augment``; ``source[i]`` is
  never augmented.

  Args:
    entries: the records, in order.
    image_size: output ``(height, width)``.
    name: a short name for messages.
    channels: 3 (RGB; grey files promoted) or 1 (grey).
    augment: attach `images.rotate_and_mirror`, ``seed`` in its stream.
    seed: folded into the augmentation's random stream.
    allow_empty_masks: keep defect images (label 1) whose mask marks no
      pixel.
    check_images: read every image's header now (else only those with a
      mask; the others fail when first read).

  Raises:
    DataError: no entries, an unreadable image header, a mask of another
      size than its image's, or an empty mask. Warns once when masks are
      stored lossily (JPEG noise counts as anomalous pixels).
  """

  def __init__(
    self,
    entries: Sequence[Entry],
    *,
    image_size: tuple[int, int],
    name: str,
    channels: int = 3,
    augment: bool = False,
    seed: int = 0,
    allow_empty_masks: bool = False,
    check_images: bool = True,
  ):
    if not entries:
      raise base.DataError(f"{name}: no images found.")
    lossy = []
    for entry in entries:
      if entry.mask is None:
        if check_images:
          images.image_size_of(entry.image)
        continue
      image_hw = images.image_size_of(entry.image)
      mask_hw = images.image_size_of(entry.mask)
      if image_hw != mask_hw:
        raise base.DataError(
          f"Mask {entry.mask} is {mask_hw[0]}x{mask_hw[1]} (HxW) but its "
          f"image {entry.image} is {image_hw[0]}x{image_hw[1]}. Masks must "
          "have their image's size."
        )
      if images.is_lossy(entry.mask):
        lossy.append(entry.mask)
    if lossy:
      warnings.warn(
        f"{len(lossy)} mask(s) are stored lossily (JPEG), e.g. {lossy[0]}: "
        "every non-zero value is anomalous, so compression noise around a "
        "defect counts as defect pixels. Save the masks losslessly (PNG).",
        stacklevel=3,
      )
    for entry in entries:
      if allow_empty_masks or entry.label != 1 or entry.mask is None:
        continue
      if not images.read_mask(entry.mask).any():
        raise base.DataError(
          f"Mask {entry.mask} of defect image {entry.image} is empty (every "
          "pixel 0, so none is anomalous). Draw the defect in the mask, move "
          "the image to the normal folder if it has none, or allow empty "
          "masks (allow_empty_masks=True; --allow-empty-masks)."
        )
    self._entries = list(entries)
    self.image_size, self.channels, self.name = image_size, channels, name
    self.augment = None
    if augment:

      def seeded_augment(record, rng: np.random.Generator) -> base.Record:
        rng = np.random.default_rng([seed, int(rng.integers(0, 2**63 - 1))])
        return images.rotate_and_mirror(record, rng)

      self.augment = seeded_augment
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
    label, defect_type = entry.label, entry.defect_type
    if label == -1:  # Labelled by its mask.
      label = int(mask.any())
      defect_type = "anomaly" if label else NORMAL
    record = {
      "image": image.astype(np.float32) / 255.0,
      "mask": mask.astype(np.float32),
      "label": np.int32(label),
      "has_mask": np.int32(entry.has_mask),
      "defect_type": np.array(defect_type),
      "path": np.array(entry.image),
    }
    for key, value in entry.extra:
      record[key] = np.int32(value)
    return record
