"""Tests for the custom anomaly folder loader on tiny on-disk fixtures."""

import os

import numpy as np
import pytest
from PIL import ExifTags, Image

from vae_attn import data
from vae_attn.data import custom_folder


def _labels(source):
  return [int(source[i]["label"]) for i in range(len(source))]


def _save(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def _mask():
  m = np.zeros((8, 8), np.uint8)
  m[1:3, 4:7] = 255
  return m


def _make(root, masks=True):
  for i in range(2):
    _save(os.path.join(root, "train", f"n{i}.jpg"), np.full((8, 8, 3), 9 * i))
  _save(os.path.join(root, "test", "good", "a.png"), np.full((8, 8), 40))
  _save(os.path.join(root, "test", "dent", "b.png"), np.full((8, 8, 3), 70))
  _save(os.path.join(root, "test", "dent", "c.png"), np.full((8, 8, 3), 80))
  if masks:
    _save(os.path.join(root, "masks", "dent", "b.png"), _mask())
    _save(os.path.join(root, "masks", "dent", "c_mask.png"), _mask())


def test_train_and_test_with_masks(tmp_path):
  _make(tmp_path)
  train = custom_folder.load(tmp_path, "train", image_size=8)
  assert len(train) == 2
  assert train[1]["image"].shape == (8, 8, 3)
  assert train[0]["label"] == 0
  test = custom_folder.load(tmp_path, "test", image_size=8)
  assert [str(test[i]["defect_type"]) for i in range(3)] == [
    "good",
    "dent",
    "dent",
  ]
  np.testing.assert_array_equal(_labels(test), [0, 1, 1])
  np.testing.assert_allclose(test[0]["image"], 40 / 255)  # Grey -> RGB.
  np.testing.assert_array_equal(test[2]["mask"][..., 0], _mask() // 255)
  assert [int(test[i]["has_mask"]) for i in range(3)] == [1, 1, 1]


def test_masks_are_optional(tmp_path):
  _make(tmp_path, masks=False)
  with pytest.warns(UserWarning, match="No mask folder .*has_mask=0"):
    test = custom_folder.load(tmp_path, "test", image_size=4)
  assert [int(test[i]["has_mask"]) for i in range(3)] == [1, 0, 0]
  assert test[1]["mask"].shape == (4, 4, 1) and test[1]["mask"].sum() == 0


def test_nested_good_train_folder_and_custom_names(tmp_path):
  _save(os.path.join(tmp_path, "normal", "ok", "x.png"), np.zeros((8, 8)))
  _save(os.path.join(tmp_path, "eval", "ok", "y.png"), np.zeros((8, 8)))
  _save(os.path.join(tmp_path, "eval", "bad", "z.png"), np.zeros((8, 8)))
  _save(os.path.join(tmp_path, "gt", "bad", "z.png"), _mask())
  kw = dict(
    train_dir="normal",
    test_dir="eval",
    mask_dir="gt",
    normal_name="ok",
    image_size=8,
  )
  assert len(custom_folder.load(tmp_path, "train", **kw)) == 1
  test = custom_folder.load(tmp_path, "test", **kw)
  np.testing.assert_array_equal(_labels(test), [0, 1])
  assert test[1]["mask"].sum() == 6


def test_ground_truth_masks_of_the_mvtec_layout_are_used(tmp_path):
  _make(tmp_path)
  os.rename(tmp_path / "masks", tmp_path / "ground_truth")
  test = custom_folder.load(tmp_path, "test", image_size=8)
  assert [int(test[i]["has_mask"]) for i in range(3)] == [1, 1, 1]
  np.testing.assert_array_equal(test[1]["mask"][..., 0], _mask() // 255)
  # Named explicitly, and missing or orphan masks are reported by name.
  test = custom_folder.load(
    tmp_path, "test", image_size=8, mask_dir="ground_truth"
  )
  assert test[2]["mask"].sum() == 6
  orphan = tmp_path / "ground_truth" / "dent" / "e_mask.png"
  _save(orphan, _mask())
  msg = _raises("has no image", tmp_path, "test")
  assert str(orphan) in msg
  os.remove(orphan)
  os.remove(tmp_path / "ground_truth" / "dent" / "b.png")
  msg = _raises("has no mask", tmp_path, "test")
  assert str(tmp_path / "test" / "dent" / "b.png") in msg


def test_mask_folder_choice_errors(tmp_path):
  _make(tmp_path)
  with pytest.raises(data.DataError, match="Mask folder .*gt.*not found") as e:
    custom_folder.load(tmp_path, "test", mask_dir="gt")
  assert str(tmp_path / "gt") in str(e.value) and "\n" not in str(e.value)
  _save(os.path.join(tmp_path, "ground_truth", "dent", "b.png"), _mask())
  msg = _raises("both masks/ and ground_truth/", tmp_path, "test")
  assert "mask_dir" in msg and "\n" not in msg
  assert len(custom_folder.load(tmp_path, "test", mask_dir="masks")) == 3


def test_masks_of_normal_images_and_empty_masks(tmp_path):
  _make(tmp_path)
  good = os.path.join(tmp_path, "masks", "good", "a.png")
  _save(good, _mask())
  msg = _raises("marks anomalous pixels", tmp_path, "test")
  assert good in msg
  _save(good, np.zeros((8, 8)))
  with pytest.warns(UserWarning, match="Ignoring 1 all-zero mask"):
    custom_folder.load(tmp_path, "test", image_size=8)
  os.remove(good)
  empty = os.path.join(tmp_path, "masks", "dent", "c_mask.png")
  _save(empty, np.zeros((8, 8)))
  msg = _raises("is empty", tmp_path, "test")
  assert empty in msg
  test = custom_folder.load(
    tmp_path, "test", image_size=8, allow_empty_masks=True
  )
  assert test[2]["label"] == 1 and test[2]["mask"].sum() == 0


def test_camera_jpeg_is_upright_and_matches_its_mask(tmp_path):
  _make(tmp_path)
  upright = np.zeros((8, 16, 3), np.uint8)
  upright[:, :4] = 255
  exif = Image.Exif()
  exif[ExifTags.Base.Orientation] = 6  # Stored turned; shown upright.
  Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
    tmp_path / "test" / "dent" / "b.jpg", quality=100, exif=exif
  )
  os.remove(tmp_path / "test" / "dent" / "b.png")
  _save(os.path.join(tmp_path, "masks", "dent", "b.png"), upright[..., 0])
  test = custom_folder.load(tmp_path, "test", image_size=(8, 16))
  np.testing.assert_allclose(test[1]["image"], upright / 255, atol=0.15)
  np.testing.assert_array_equal(test[1]["mask"][..., 0], upright[..., 0] > 0)


def _raises(match, root, split):
  with pytest.raises(data.DataError, match=match) as info:
    src = custom_folder.load(root, split, image_size=8)
    [src[i] for i in range(len(src))]
  return str(info.value)


def test_bad_input(tmp_path):
  msg = _raises("Data set root not found", tmp_path / "none", "train")
  assert "<root>/train/*.png" in msg
  _raises("split must be one of", tmp_path, "validation")
  os.makedirs(tmp_path / "train")
  msg = _raises("No images", tmp_path, "train")
  assert str(tmp_path / "train") in msg
  _raises("Test folder not found", tmp_path, "test")
  _make(tmp_path)
  os.remove(tmp_path / "masks" / "dent" / "c_mask.png")
  _raises("c.png has no mask", tmp_path, "test")
  _save(os.path.join(tmp_path, "masks", "dent", "c.png"), _mask())
  _save(os.path.join(tmp_path, "masks", "dent", "c_mask.png"), _mask())
  _raises("c.png has several masks", tmp_path, "test")
  os.remove(tmp_path / "masks" / "dent" / "c_mask.png")
  _save(os.path.join(tmp_path, "masks", "dent", "d.png"), _mask())
  _raises("d.png has no image", tmp_path, "test")
  os.remove(tmp_path / "masks" / "dent" / "d.png")
  _save(os.path.join(tmp_path, "masks", "dent", "b.png"), np.zeros((4, 8)))
  _raises("b.png is 4x8", tmp_path, "test")
  _save(os.path.join(tmp_path, "masks", "dent", "b.png"), _mask())
  with open(tmp_path / "test" / "good" / "a.png", "wb") as f:
    f.write(b"\x89PNG garbage")
  msg = _raises("Cannot read image", tmp_path, "test")
  assert str(tmp_path / "test" / "good" / "a.png") in msg
