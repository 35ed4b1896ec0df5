"""The one table of one-class data sets: a name and a split to a source.

The one-class trainer and the localization evaluators choose their data by
name through `load`, the only place that maps a name to a loader::

  from vae_attn.data import datasets

  source = datasets.load("mvtec", "test", data_dir=root, category="bottle")

Every call takes the same options (a config, or those a run recorded); each
loader gets the ones it uses and the others are ignored:

- textures, mvtec: data_dir, category, image_size (128, 256), augment, seed,
  allow_empty_masks; folder: the same with mask_dir instead of category
  (256); ped1: data_dir, image_size (100);
- mnist: data_dir (tfds'), normal_digit; digits: normal_digit (28 x 28).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from vae_attn.data import (
  base,
  custom_folder,
  digits,
  mnist,
  mvtec,
  ped1,
  textures,
)

DATASETS = ("textures", "mvtec", "folder", "mnist", "digits", "ped1")
# The data sets whose test split has pixel masks (localization metrics).
WITH_MASKS = ("textures", "mvtec", "ped1", "folder")


def load(
  name: str,
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  category: str | None = None,
  image_size: int | Sequence[int] | None = None,
  normal_digit: int | None = None,
  mask_dir: str | None = None,
  augment: bool = False,
  seed: int = 0,
  allow_empty_masks: bool = False,
) -> base.Source:
  """Loads one split of the one-class data set ``name``.

  Args:
    name: one of `DATASETS`.
    split: "train" (normal images only) or "test".
    data_dir, category, image_size, normal_digit, mask_dir, augment, seed,
      allow_empty_masks: the loaders' options; ``None`` or ``""`` means not
      given. ``textures`` writes its set into ``data_dir`` (default: the
      cache) unless ``data_dir`` holds it; its category defaults to
      ``textures.CATEGORIES[0]``.

  Returns:
    The loader's source (records in docs/data.md).

  Raises:
    ValueError: ``name`` is not one of `DATASETS`.
    DataError: a data set that reads files has no ``data_dir``, mvtec has
      no category (the message lists those found), or the loader's own
      errors (missing or malformed files).
  """
  data_dir = os.fspath(data_dir) if data_dir else None
  checks = dict(augment=augment, seed=seed, allow_empty_masks=allow_empty_masks)
  if name == "textures":  # Written once into data_dir (the cache) if needed.
    category = category or textures.CATEGORIES[0]
    root = data_dir
    if not (root and os.path.isdir(os.path.join(root, category))):
      root = textures.ensure_dataset(root)
    size = _size(image_size, 128)
    return mvtec.load(root, category, split, image_size=size, **checks)
  if name == "mvtec":
    root = _need_dir(name, data_dir)
    if not category:
      found = ", ".join(mvtec.find_categories(root))
      raise base.DataError(
        "MVTec-AD needs a category: pass category=<name> "
        f"(--category=<name>); categories in {root}: "
        f"{found or 'none (expected <root>/<category>/train/good/)'}."
      )
    size = _size(image_size, 256)
    return mvtec.load(root, category, split, image_size=size, **checks)
  if name == "folder":
    return custom_folder.load(
      _need_dir(name, data_dir),
      split,
      image_size=_size(image_size, 256),
      mask_dir=mask_dir or None,
      **checks,
    )
  if name == "ped1":
    size = _size(image_size, 100)
    return ped1.load(_need_dir(name, data_dir), split, image_size=size)
  if name == "mnist":
    return mnist.load(split, normal_digit=normal_digit, data_dir=data_dir)
  if name == "digits":
    return digits.load(split, normal_digit=normal_digit)
  raise ValueError(
    f"Unknown data set {name!r}; choose one of {', '.join(DATASETS)}."
  )


def _need_dir(name: str, data_dir: str | None) -> str:
  if not data_dir:
    raise base.DataError(
      f"Data set {name!r} reads files: pass its folder as data_dir "
      "(--data-dir=<the data set folder>)."
    )
  return data_dir


def _size(image_size, default: int):
  return default if image_size is None else image_size
