"""MVTec-AD (Bergmann et al., CVPR 2019) from its folder layout.

Layout (as the data set unpacks)::

  <root>/<category>/train/good/NNN.png
  <root>/<category>/test/good/NNN.png
  <root>/<category>/test/<defect_type>/NNN.png
  <root>/<category>/ground_truth/<defect_type>/NNN_mask.png

Masks are paired with images by file stem (``NNN`` -> ``NNN_mask``);
``good`` images get all-zero masks (a mask under ``ground_truth/good/`` that
marks anomalous pixels is refused; all-zero ones are ignored with a
warning). Images are resized bilinearly and masks with nearest neighbours
to ``image_size``; grayscale categories (grid, screw, zipper) are promoted
to 3 channels. A mask pixel is anomalous when its value is not zero, the
rule of the MVTec-AD evaluation, in every image mode (see
`vae_attn.data.images`); a defect image whose mask has no anomalous pixel is
refused unless ``allow_empty_masks``. The offline textured-defect set of
`vae_attn.data.textures` uses this layout too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from vae_attn.data import base, image_mask, images

CATEGORIES = (
  "bottle",
  "cable",
  "capsule",
  "carpet",
  "grid",
  "hazelnut",
  "leather",
  "metal_nut",
  "pill",
  "screw",
  "tile",
  "toothbrush",
  "transistor",
  "wood",
  "zipper",
)
SPLITS = ("train", "test")

LAYOUT = """\
  <root>/<category>/train/good/*.png
  <root>/<category>/test/good/*.png
  <root>/<category>/test/<defect_type>/NNN.png
  <root>/<category>/ground_truth/<defect_type>/NNN_mask.png
Download MVTec-AD from https://www.mvtec.com/company/research/datasets/mvtec-ad
and pass the unpacked folder as root, or use the offline set:
  root = vae_attn.data.textures.ensure_dataset()"""


def _require_root(root: str) -> str:
  """Returns ``root`` if it is a folder, else raises naming the problem.

  Raises:
    DataError: ``root`` does not exist or is a file.
  """
  if os.path.isdir(root):
    return root
  problem = "is a file" if os.path.exists(root) else "does not exist"
  raise base.DataError(
    f"MVTec-AD root not found: {root} {problem}; pass --data-dir=<the "
    f"MVTec-AD folder, which holds the category folders>. Expected "
    f"layout:\n{LAYOUT}"
  )


def find_categories(root: str | os.PathLike) -> list[str]:
  """The category folders of an MVTec-AD root, sorted.

  A category folder holds ``train/`` or ``test/``.

  Raises:
    DataError: ``root`` does not exist or is a file (so a caller that lists
      the categories for a missing ``--category`` reports the root first).
  """
  root = _require_root(os.fspath(root))
  return [
    name
    for name in image_mask.subfolders(root)
    if any(os.path.isdir(os.path.join(root, name, split)) for split in SPLITS)
  ]


def _entries(root: str | os.PathLike, category: str, split: str) -> list:
  """Walks and checks the layout of one category and split.

  Returns:
    A list of `vae_attn.data.image_mask.Entry`, test images sorted by defect
    type (``good`` first) then by name.

  Raises:
    DataError: a folder, image or mask is missing or inconsistent.
  """
  root = os.fspath(root)
  if split not in SPLITS:
    raise base.DataError(
      f"MVTec-AD split must be one of {SPLITS}, got {split!r}."
    )
  _require_root(root)
  cat_dir = os.path.join(root, category)
  if not os.path.isdir(cat_dir):
    found = image_mask.subfolders(root)
    raise base.DataError(
      f"MVTec-AD category {category!r} not found in {root} (found: "
      f"{found or 'no folders'}; MVTec-AD has {', '.join(CATEGORIES)}). "
      f"Expected layout:\n{LAYOUT}"
    )
  if split == "train":
    train_dir = image_mask.require_dir(
      os.path.join(cat_dir, "train", image_mask.NORMAL),
      "MVTec-AD training folder",
      LAYOUT,
    )
    return [
      image_mask.Entry(f, None, 0, image_mask.NORMAL)
      for f in image_mask.require_images(train_dir, LAYOUT)
    ]
  test_dir = image_mask.require_dir(
    os.path.join(cat_dir, "test"), "MVTec-AD test folder", LAYOUT
  )
  types = image_mask.subfolders(test_dir)
  if not types:
    raise base.DataError(
      f"No defect-type folders in {test_dir}. Expected layout:\n{LAYOUT}"
    )
  types.sort(key=lambda t: (t != image_mask.NORMAL, t))
  gt_dir = os.path.join(cat_dir, "ground_truth")
  image_mask.check_orphan_mask_folders(gt_dir, types, test_dir)
  image_mask.check_normal_masks(gt_dir)
  out = []
  for defect_type in types:
    files = image_mask.require_images(
      os.path.join(test_dir, defect_type), LAYOUT
    )
    if defect_type == image_mask.NORMAL:
      out += [image_mask.Entry(f, None, 0, defect_type) for f in files]
      continue
    masks = image_mask.pair_masks(
      files, os.path.join(gt_dir, defect_type), layout=LAYOUT
    )
    out += [
      image_mask.Entry(f, m, 1, defect_type)
      for f, m in zip(files, masks, strict=True)
    ]
  return out


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

  Records: ``"image"`` float32 ``[S, S, 3]`` in [0, 1], ``"mask"`` float32
  ``[S, S, 1]`` in {0, 1}, ``"label"`` int32 (0 good, 1 defect),
  ``"has_mask"`` int32 (always 1 here), ``"defect_type"`` and ``"path"``
  (0-d str arrays).

  Args:
    root: the folder holding the category folders.
    category: e.g. "bottle" (see `CATEGORIES`), or a textures category.
    split: "train" (good images only) or "test" (good and defects).
    image_size: output size, an int or ``(height, width)``; paper: 256.
    augment: attach the paper's augmentation (rotation uniform in [-30, 30]
      degrees, then a left-right mirror with probability 1/2) as
      ``source.augment``; `vae_attn.data.pipeline.batches` applies it, fresh
      for every epoch. ``source[i]`` is never augmented.
    seed: folded into the augmentation's random stream.
    allow_empty_masks: keep defect images whose mask has no anomalous pixel
      (label 1 with an all-zero mask); refused by default.

  Returns:
    An `vae_attn.data.image_mask.ImageMaskSource`.

  Raises:
    DataError: the layout is missing or inconsistent, an image or mask is
      unreadable, a mask's size differs from its image's, a defect image's
      mask is empty (unless ``allow_empty_masks``), or a mask under
      ``ground_truth/good/`` marks anomalous pixels.
  """
  size = images.check_image_size(image_size)
  found = _entries(root, category, split)
  return image_mask.image_mask_source(
    found,
    image_size=size,
    name=f"mvtec:{category}/{split}",
    augment=augment,
    seed=seed,
    allow_empty_masks=allow_empty_masks,
  )
