"""The data flags of python -m train.oneclass: category, mask folder."""

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from train import oneclass
from vae_attn import data


def _save(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def _mask():
  m = np.zeros((8, 8), np.uint8)
  m[2:4, 2:6] = 255
  return m


def _config(preset, **kw):
  """The config of ``--dataset=<preset>`` with the given flags on top."""
  return dataclasses.replace(oneclass.PRESETS[preset], image_size=8, **kw)


def test_mvtec_without_category_lists_the_categories_found(tmp_path):
  for category in ("widget", "bottle"):
    _save(tmp_path / category / "train" / "good" / "000.png", np.zeros((8, 8)))
  os.makedirs(tmp_path / "license")
  assert oneclass.PRESETS["mvtec"].category == ""
  with pytest.raises(ValueError, match="--category") as info:
    oneclass.load_data(_config("mvtec", data_dir=str(tmp_path)), "train")
  msg = str(info.value)
  assert f"categories in {tmp_path}: bottle, widget." in msg
  assert "carpet" not in msg and "\n" not in msg
  config = _config("mvtec", data_dir=str(tmp_path), category="bottle")
  assert len(oneclass.load_data(config, "train")) == 1
  # A missing --data-dir is named, not answered with --category.
  with pytest.raises(ValueError, match=r"root not found: .*x does not exist"):
    oneclass.load_data(_config("mvtec", data_dir=str(tmp_path / "x")), "train")


def _folder(root, mask_dir="ground_truth"):
  _save(root / "train" / "n.png", np.zeros((8, 8)))
  _save(root / "test" / "good" / "a.png", np.zeros((8, 8)))
  _save(root / "test" / "dent" / "b.png", np.full((8, 8), 90))
  _save(root / mask_dir / "dent" / "b_mask.png", _mask())


def test_folder_masks_from_ground_truth_and_mask_dir(tmp_path):
  _folder(tmp_path)
  test = oneclass.load_data(_config("folder", data_dir=str(tmp_path)), "test")
  assert test[1]["has_mask"] == 1
  np.testing.assert_array_equal(test[1]["mask"][..., 0], _mask() > 0)
  _folder(tmp_path / "custom", mask_dir="annotations")
  config = _config(
    "folder", data_dir=str(tmp_path / "custom"), mask_dir="annotations"
  )
  assert oneclass.load_data(config, "test")[1]["mask"].sum() == 8
  config = dataclasses.replace(config, mask_dir="labels")
  with pytest.raises(data.DataError, match="Mask folder .*labels.* not found"):
    oneclass.load_data(config, "test")
  orphan = tmp_path / "custom" / "annotations" / "dent" / "z_mask.png"
  _save(orphan, _mask())
  config = dataclasses.replace(config, mask_dir="annotations")
  with pytest.raises(data.DataError, match="has no image") as info:
    oneclass.load_data(config, "test")
  assert str(orphan) in str(info.value)


def test_allow_empty_masks_flag(tmp_path):
  _folder(tmp_path)
  _save(tmp_path / "ground_truth" / "dent" / "b_mask.png", np.zeros((8, 8)))
  config = _config("folder", data_dir=str(tmp_path))
  with pytest.raises(data.DataError, match="b_mask.png of defect image .*"):
    oneclass.load_data(config, "test")
  config = dataclasses.replace(config, allow_empty_masks=True)
  test = oneclass.load_data(config, "test")
  assert test[1]["label"] == 1 and test[1]["mask"].sum() == 0
