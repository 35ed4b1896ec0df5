"""MVTec-AD (Bergmann et al., CVPR 2019) from its folder layout (`LAYOUT`).

Masks pair with images by stem (``NNN`` -> ``NNN_mask``) and ``good`` images
get all-zero masks (`vae_attn.data.image_mask`); pixels are read by the rules
of `vae_attn.data.images`, grey categories promoted to RGB. The offline set of
`vae_attn.data.textures` uses this layout too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from vae_attn.data import base, image_mask, images

CATEGORIES = tuple(
  "bottle cable capsule carpet grid hazelnut leather metal_nut pill screw "
  "tile toothbrush transistor wood zipper".split()
)

LAYOUT = """\
  <root>/<category>/train/good/*.png
  <root>/<category>/test/good/*.png
  <root>/<category>/test/<defect_type>/NNN.png
  <root>/<category>/ground_truth/<defect_type>/NNN_mask.png
Download MVTec-AD from https://www.mvtec.com/company/research/datasets/mvtec-ad
and pass the unpacked folder as root, or use the offline set:
  root = vae_attn.data.textures.ensure_dataset()"""


def _require_root(root: str) -> str:
  """``root`` if it is a folder, else a `DataError` naming the problem."""
  if os.path.isdir(root):
    return root
  problem = "is a file" if os.path.exists(root) else "does not exist"
  raise base.DataError(
    f"MVTec-AD root not found: {root} {problem}; pass --data-dir=<the "
    f"MVTec-AD folder, which holds the category folders>. Expected "
    f"layout:\n{LAYOUT}"
  )


def find_categories(root: str | os.PathLike) -> list[str]:
  """The category folders (holding ``train/`` or ``test/``) of a root, sorted.

  Raises:
    DataError: ``root`` does not exist or is a file.
  """
  root = _require_root(os.fspath(root))
  return [
    name
    for name in image_mask.subfolders(root)
    if any(
      os.path.isdir(os.path.join(root, name, s)) for s in image_mask.SPLITS
    )
  ]


def load(
  root: str | os.PathLike,
  category: str,
  split: str,
  *,
  image_size: int | Sequence[int] = 256,
  augment: bool = False,
  seed: int = 0,
  allow_empty_masks: bool = False,
) -> image_mask.ImageMaskSource:
  """Loads one MVTec-AD category (or the offline textured-defect set).

  Args:
    root: the folder holding the category folders.
    category: e.g. "bottle" (see `CATEGORIES`), or a textures category.
    split: "train" (good images only) or "test" (good and defects).
    image_size: output size, an int or ``(height, width)``; paper: 256.
    augment, seed, allow_empty_masks: as `image_mask.ImageMaskSource`.

  Returns:
    An `image_mask.ImageMaskSource`, ``"image"`` ``[S, S, 3]``.

  Raises:
    DataError: the layout is missing, or a file breaks a rule of
      `vae_attn.data.image_mask` (the message names it and the fix).
  """
  size = images.check_image_size(image_size)
  root = os.fspath(root)
  image_mask.check_split(split, "MVTec-AD")
  _require_root(root)
  cat_dir = os.path.join(root, category)
  if not os.path.isdir(cat_dir):
    folders = image_mask.subfolders(root)
    raise base.DataError(
      f"MVTec-AD category {category!r} not found in {root} (found: "
      f"{folders or 'no folders'}; MVTec-AD has {', '.join(CATEGORIES)}). "
      f"Expected layout:\n{LAYOUT}"
    )
  if split == "train":
    train_dir = os.path.join(cat_dir, "train", image_mask.NORMAL)
    image_mask.require_dir(train_dir, "MVTec-AD training folder", LAYOUT)
    found = image_mask.normal_entries(train_dir, LAYOUT)
  else:
    test_dir = image_mask.require_dir(
      os.path.join(cat_dir, "test"), "MVTec-AD test folder", LAYOUT
    )
    found = image_mask.walk_test_split(
      test_dir,
      os.path.join(cat_dir, "ground_truth"),
      normal_name=image_mask.NORMAL,
      suffixes=("_mask",),
      layout=LAYOUT,
    )
  return image_mask.ImageMaskSource(
    found,
    image_size=size,
    name=f"mvtec:{category}/{split}",
    augment=augment,
    seed=seed,
    allow_empty_masks=allow_empty_masks,
  )
