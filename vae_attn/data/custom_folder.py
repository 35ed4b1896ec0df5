"""Your own images: a custom anomaly folder, in the spirit of anomalib's Folder.

The layout (`_layout`, folder names configurable): normal training images in
``<root>/train/`` (or its ``good/``), normal test images in
``<root>/test/good/``, a folder a defect type beside it, and optional masks
``<root>/masks/<defect_type>/<stem>[_mask].png``. The mask folder is
``mask_dir``, by default ``masks/`` or ``ground_truth/``, whichever exists,
with MVTec-AD's pairing and error rules (`vae_attn.data.image_mask`); without
one, defect images get ``"has_mask" = 0`` and a zero mask, with a warning.
Images are always RGB.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

from vae_attn.data import base, image_mask, images

MASK_DIRS = ("masks", "ground_truth")  # Looked for when mask_dir is None.


def _layout(
  train_dir: str, test_dir: str, mask_dir: str | None, normal: str
) -> str:
  mask_dir = mask_dir or " or ".join(MASK_DIRS)
  return (
    f"  <root>/{train_dir}/*.png  (or <root>/{train_dir}/{normal}/*.png)\n"
    f"  <root>/{test_dir}/{normal}/*.png\n"
    f"  <root>/{test_dir}/<defect_type>/*.png\n"
    f"  <root>/{mask_dir}/<defect_type>/<stem>.png or <stem>_mask.png "
    "(optional)"
  )


def _mask_root(root: str, mask_dir: str | None) -> str | None:
  """The mask folder: ``mask_dir`` (must exist) or the one of `MASK_DIRS`."""
  if mask_dir is not None:
    path = os.path.join(root, mask_dir)
    if not os.path.isdir(path):
      raise base.DataError(
        f"Mask folder {path} (mask_dir={mask_dir!r}) not found. Pass the "
        f"folder under {root} that holds <defect_type>/ folders of masks."
      )
    return path
  found = [d for d in MASK_DIRS if os.path.isdir(os.path.join(root, d))]
  if len(found) > 1:
    raise base.DataError(
      f"{root} has both {found[0]}/ and {found[1]}/ mask folders. Remove "
      "one, or name the one to use (mask_dir=...; --mask-dir=...)."
    )
  return os.path.join(root, found[0]) if found else None


def load(
  root: str | os.PathLike,
  split: str,
  *,
  image_size: int | Sequence[int] = 256,
  train_dir: str = "train",
  test_dir: str = "test",
  mask_dir: str | None = None,
  normal_name: str = image_mask.NORMAL,
  augment: bool = False,
  seed: int = 0,
  allow_empty_masks: bool = False,
) -> image_mask.ImageMaskSource:
  """Loads a custom anomaly data set laid out as in the module docstring.

  Records are those of `vae_attn.data.mvtec.load`.

  Args:
    root: the data set folder.
    split: "train" or "test".
    image_size: output size, an int or ``(height, width)``.
    train_dir, test_dir: the normal training images and the test folder,
      relative to ``root``.
    mask_dir: the mask folder, relative to ``root``; it must exist. None:
      ``masks/`` or ``ground_truth/``, whichever exists (both: an error;
      neither: no masks, with a warning).
    normal_name: the name of the normal test folder.
    augment, seed, allow_empty_masks: as `image_mask.ImageMaskSource`.

  Raises:
    DataError: the layout is missing, or a file breaks a rule of the module
      docstring or of `vae_attn.data.image_mask`.
  """
  size = images.check_image_size(image_size)
  root = os.fspath(root)
  layout = _layout(train_dir, test_dir, mask_dir, normal_name)
  image_mask.check_split(split, "Folder")
  image_mask.require_dir(root, "Data set root", layout)
  if split == "train":
    train = image_mask.require_dir(
      os.path.join(root, train_dir), "Training folder", layout
    )
    nested = os.path.join(train, normal_name)
    if os.path.isdir(nested) and not images.list_images(train):
      train = nested
    found = image_mask.normal_entries(train, layout, normal_name)
  else:
    test = image_mask.require_dir(
      os.path.join(root, test_dir), "Test folder", layout
    )
    mask_root = _mask_root(root, mask_dir)
    types = image_mask.subfolders(test)
    if mask_root is None and types not in ([], [normal_name]):
      warnings.warn(
        f"No mask folder ({' or '.join(MASK_DIRS)}) in {root}: the defect "
        "images get has_mask=0 and no pixel metrics. Pass mask_dir= "
        "(--mask-dir=) if the masks are elsewhere.",
        stacklevel=2,
      )
    found = image_mask.walk_test_split(
      test,
      mask_root,
      normal_name=normal_name,
      suffixes=("", "_mask"),
      layout=layout,
    )
  return image_mask.ImageMaskSource(
    found,
    image_size=size,
    name=f"folder:{os.path.basename(os.fspath(root))}/{split}",
    augment=augment,
    seed=seed,
    allow_empty_masks=allow_empty_masks,
  )
