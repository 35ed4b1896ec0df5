"""The one table of one-class data sets: a name and a split to a source.

The one-class trainer and the localization evaluators choose their data by
name through `load`::

  source = datasets.load("mvtec", "test", data_dir=root, category="bottle")
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

  Every call takes the same options (a config's, or a run's); each loader
  gets those it uses (docs/data.md; ``None`` or ``""``: not given).
  ``textures`` writes its set into ``data_dir`` (default: the cache) unless
  ``data_dir`` holds it; its category defaults to ``textures.CATEGORIES[0]``.

  Args:
    name: one of `DATASETS`.
    split: "train" (normal images only) or "test".

  Raises:
    ValueError: ``name`` is not one of `DATASETS`.
    DataError: a data set that reads files has no ``data_dir``, mvtec has
      no category (the message lists those found), or the loader's own
      errors (missing or malformed files).
  """
  if name not in DATASETS:
    raise ValueError(
      f"Unknown data set {name!r}; choose one of {', '.join(DATASETS)}."
    )
  data_dir = os.fspath(data_dir) if data_dir else None
  if name in ("mvtec", "folder", "ped1") and not data_dir:
    raise base.DataError(
      f"Data set {name!r} reads files: pass its folder as data_dir "
      "(--data-dir=<the data set folder>)."
    )
  if image_size is None:
    image_size = {"textures": 128, "ped1": 100}.get(name, 256)
  options = dict(
    image_size=image_size,
    augment=augment,
    seed=seed,
    allow_empty_masks=allow_empty_masks,
  )
  if name == "textures":  # Written once into data_dir (the cache) if needed.
    category = category or textures.CATEGORIES[0]
    if not (data_dir and os.path.isdir(os.path.join(data_dir, category))):
      data_dir = textures.ensure_dataset(data_dir)
  elif name == "mvtec" and not category:
    found = ", ".join(mvtec.find_categories(data_dir))
    raise base.DataError(
      "MVTec-AD needs a category: pass category=<name> "
      f"(--category=<name>); categories in {data_dir}: "
      f"{found or 'none (expected <root>/<category>/train/good/)'}."
    )
  if name in ("textures", "mvtec"):
    return mvtec.load(data_dir, category, split, **options)
  if name == "folder":
    return custom_folder.load(
      data_dir, split, mask_dir=mask_dir or None, **options
    )
  if name == "ped1":
    return ped1.load(data_dir, split, image_size=image_size)
  if name == "mnist":
    return mnist.load(split, normal_digit=normal_digit, data_dir=data_dir)
  return digits.load(split, normal_digit=normal_digit)
