"""Tests for the MVTec-AD folder loader on tiny on-disk fixtures."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from vae_attn import data
from vae_attn.data import images, mvtec, pipeline


def _labels(source):
  return [int(source[i]["label"]) for i in range(len(source))]


def _save(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def _rgb(value, size=8):
  return np.full((size, size, 3), value, np.uint8)


def _mask(size=8, value=255):
  m = np.zeros((size, size), np.uint8)
  m[2:5, 1:4] = value
  return m


def _make(root, category="widget", gray=False):
  cat = os.path.join(root, category)
  img = (lambda v: np.full((8, 8), v, np.uint8)) if gray else _rgb
  for i in range(3):
    _save(os.path.join(cat, "train", "good", f"{i:03d}.png"), img(10 * i))
  _save(os.path.join(cat, "test", "good", "000.png"), img(50))
  for i in range(2):
    _save(os.path.join(cat, "test", "crack", f"{i:03d}.png"), img(100 + i))
    _save(
      os.path.join(cat, "ground_truth", "crack", f"{i:03d}_mask.png"), _mask()
    )
  _save(os.path.join(cat, "test", "hole", "000.png"), img(200))
  _save(os.path.join(cat, "ground_truth", "hole", "000_mask.png"), _mask())
  return cat


def test_categories():
  assert len(mvtec.CATEGORIES) == 15
  assert "metal_nut" in mvtec.CATEGORIES and "bottle" in mvtec.CATEGORIES


def test_train_split(tmp_path):
  cat = _make(tmp_path)
  with open(os.path.join(cat, "train", "good", "._001.png"), "wb") as f:
    f.write(b"macOS resource fork, not an image")  # Hidden: skipped.
  src = mvtec.load(tmp_path, "widget", "train", image_size=8)
  assert len(src) == 3
  rec = src[1]
  assert rec["image"].shape == (8, 8, 3) and rec["image"].dtype == np.float32
  np.testing.assert_allclose(rec["image"], 10 / 255)
  np.testing.assert_array_equal(rec["mask"], np.zeros((8, 8, 1)))
  assert rec["mask"].dtype == np.float32
  assert rec["label"] == 0 and rec["label"].dtype == np.int32
  assert str(rec["defect_type"]) == "good"
  assert str(rec["path"]).endswith(os.path.join("train", "good", "001.png"))


def test_test_split_pairs_masks_by_stem(tmp_path):
  _make(tmp_path)
  src = mvtec.load(tmp_path, "widget", "test", image_size=8)
  types = [str(src[i]["defect_type"]) for i in range(len(src))]
  assert types == ["good", "crack", "crack", "hole"]
  np.testing.assert_array_equal(_labels(src), [0, 1, 1, 1])
  assert src[0]["mask"].sum() == 0
  expected = (_mask() > 0).astype(np.float32)[..., None]
  np.testing.assert_array_equal(src[2]["mask"], expected)
  np.testing.assert_allclose(src[2]["image"], 101 / 255)
  assert src[2]["has_mask"] == 1
  batch = next(
    pipeline.batches(
      src, 4, seed=0, shuffle=False, process_index=0, process_count=1
    )
  )
  assert batch["image"].shape == (4, 8, 8, 3)
  assert batch["mask"].shape == (4, 8, 8, 1)
  assert batch["defect_type"].tolist() == types


def test_resize_bilinear_images_nearest_masks_and_gray_promotion(tmp_path):
  cat = _make(tmp_path, gray=True)
  image = np.zeros((16, 16), np.uint8)
  image[:, 8:] = 255
  mask = np.zeros((16, 16), np.uint8)
  mask[:, 8:] = 255
  _save(os.path.join(cat, "test", "hole", "000.png"), image)
  _save(os.path.join(cat, "ground_truth", "hole", "000_mask.png"), mask)
  for i in range(2):  # Keep all masks the size of their images.
    _save(os.path.join(cat, "test", "crack", f"{i:03d}.png"), image)
    _save(os.path.join(cat, "ground_truth", "crack", f"{i:03d}_mask.png"), mask)
  _save(os.path.join(cat, "test", "good", "000.png"), image)
  rec = mvtec.load(tmp_path, "widget", "test", image_size=(4, 6))[3]
  assert rec["image"].shape == (4, 6, 3)
  np.testing.assert_array_equal(rec["image"][..., 0], rec["image"][..., 2])
  np.testing.assert_array_equal(rec["mask"][..., 0], [[0, 0, 0, 1, 1, 1]] * 4)
  row = rec["image"][0, :, 0]
  assert row[0] == 0 and row[-1] == 1 and (np.diff(row) >= 0).all()
  expected = np.asarray(
    Image.fromarray(image).resize((6, 4), Image.Resampling.BILINEAR)
  )
  np.testing.assert_allclose(rec["image"][..., 0], expected / 255)
  assert mvtec.load(tmp_path, "widget", "train")[0]["image"].shape == (
    256,
    256,
    3,
  )


def test_every_non_zero_mask_value_is_anomalous(tmp_path):
  # The MVTec-AD evaluation's rule: grey 1-127 count, as 128-255 do.
  cat = _make(tmp_path)
  grey = np.array([[0, 100, 127, 128, 200, 255, 1, 0]] * 8, np.uint8)
  _save(os.path.join(cat, "ground_truth", "hole", "000_mask.png"), grey)
  rec = mvtec.load(tmp_path, "widget", "test", image_size=8)[3]
  np.testing.assert_array_equal(rec["mask"][0, :, 0], [0, 1, 1, 1, 1, 1, 1, 0])
  labels01 = (_mask() > 0).astype(np.uint8)  # A mask stored as 0/1.
  _save(os.path.join(cat, "ground_truth", "hole", "000_mask.png"), labels01)
  rec = mvtec.load(tmp_path, "widget", "test", image_size=8)[3]
  np.testing.assert_array_equal(rec["mask"][..., 0], labels01)
  # A palette mask whose index 1 is red, and RGB masks painted red or blue.
  palette = Image.fromarray(labels01).convert("P")
  palette.putpalette([0, 0, 0, 255, 0, 0])
  palette.save(os.path.join(cat, "ground_truth", "hole", "000_mask.png"))
  for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
    painted = np.zeros((8, 8, 3), np.uint8)
    painted[labels01 > 0] = colour
    _save(
      os.path.join(cat, "ground_truth", "crack", f"{i:03d}_mask.png"), painted
    )
  src = mvtec.load(tmp_path, "widget", "test", image_size=8)
  for i in (1, 2, 3):
    np.testing.assert_array_equal(src[i]["mask"][..., 0], labels01)
    assert src[i]["label"] == 1


def test_defect_image_with_an_empty_mask_is_refused(tmp_path):
  cat = _make(tmp_path)
  empty = os.path.join(cat, "ground_truth", "crack", "001_mask.png")
  _save(empty, np.zeros((8, 8)))
  msg = _raises("is empty", tmp_path, "widget", "test")
  assert empty in msg and os.path.join(cat, "test", "crack", "001.png") in msg
  assert "allow_empty_masks=True" in msg and "\n" not in msg
  src = mvtec.load(
    tmp_path, "widget", "test", image_size=8, allow_empty_masks=True
  )
  assert src[2]["label"] == 1 and src[2]["mask"].sum() == 0
  assert src[1]["mask"].sum() == 9
  # The training split reads no masks.
  assert len(mvtec.load(tmp_path, "widget", "train", image_size=8)) == 3


def test_masks_of_good_images_are_checked_not_ignored(tmp_path):
  cat = _make(tmp_path)
  good_mask = os.path.join(cat, "ground_truth", "good", "000_mask.png")
  _save(good_mask, _mask())
  msg = _raises("marks anomalous pixels", tmp_path, "widget", "test")
  assert good_mask in msg and "\n" not in msg
  assert msg.endswith(
    "Move the image and its mask to a defect-type folder, or, if the image "
    "is normal, move the mask out of good/."
  )
  _save(good_mask, np.zeros((8, 8)))
  with pytest.warns(UserWarning, match="Ignoring 1 all-zero mask") as caught:
    src = mvtec.load(tmp_path, "widget", "test", image_size=8)
  assert str(caught[0].message).endswith(
    f"Move the folder out of {os.path.join(cat, 'ground_truth')} to silence "
    "this."
  )
  assert src[0]["label"] == 0 and src[0]["mask"].sum() == 0


def test_16_bit_images_are_scaled_by_65535(tmp_path):
  cat = _make(tmp_path)
  values = np.full((8, 8), 25700, np.uint16)  # 100 / 255 of the range.
  values[:, :4] = 65535
  Image.fromarray(values).save(os.path.join(cat, "train", "good", "001.png"))
  image = mvtec.load(tmp_path, "widget", "train", image_size=8)[1]["image"]
  np.testing.assert_allclose(image[:, 4:], 100 / 255)
  np.testing.assert_allclose(image[:, :4], 1.0)


def test_find_categories(tmp_path):
  _make(tmp_path, "widget")
  _make(tmp_path, "bottle")
  os.makedirs(tmp_path / "notes")
  assert mvtec.find_categories(tmp_path) == ["bottle", "widget"]
  fix = (
    "pass --data-dir=<the MVTec-AD folder, which holds the category folders>"
  )
  for path, problem in [
    (tmp_path / "missing", "does not exist"),
    (tmp_path / "widget" / "train" / "good" / "000.png", "is a file"),
  ]:
    with pytest.raises(data.DataError) as info:
      mvtec.find_categories(path)
    assert str(info.value).startswith(
      f"MVTec-AD root not found: {path} {problem}; {fix}. Expected layout:\n"
    )


def _raises(match, *args, **kwargs):
  with pytest.raises(data.DataError, match=match) as info:
    src = mvtec.load(*args, image_size=8, **kwargs)
    [src[i] for i in range(len(src))]
  return str(info.value)


def test_missing_root_category_and_bad_split(tmp_path):
  msg = _raises("MVTec-AD root not found", tmp_path / "nope", "widget", "train")
  assert "<root>/<category>/train/good" in msg
  _make(tmp_path)
  msg = _raises("category 'bottle' not found", tmp_path, "bottle", "train")
  assert "found: ['widget']" in msg and "ensure_dataset" in msg
  _raises("split must be one of", tmp_path, "widget", "val")


def test_empty_folders(tmp_path):
  cat = _make(tmp_path)
  for f in os.listdir(os.path.join(cat, "train", "good")):
    os.remove(os.path.join(cat, "train", "good", f))
  msg = _raises("No images", tmp_path, "widget", "train")
  assert os.path.join(cat, "train", "good") in msg
  os.rmdir(os.path.join(cat, "train", "good"))
  _raises("training folder not found", tmp_path, "widget", "train")


def test_corrupt_images_are_named(tmp_path):
  cat = _make(tmp_path)
  bad = os.path.join(cat, "train", "good", "001.png")
  with open(bad, "wb") as f:
    f.write(b"this is not a png")
  msg = _raises("Cannot read image", tmp_path, "widget", "train")
  assert bad in msg
  # A truncated file passes the header check and fails on decoding.

  _save(bad, np.random.default_rng(0).integers(0, 255, (64, 64, 3)))
  with open(bad, "rb") as f:
    payload = f.read()
  with open(bad, "wb") as f:
    f.write(payload[: len(payload) // 2])
  src = mvtec.load(tmp_path, "widget", "train", image_size=8)
  assert src[0]["image"].shape == (8, 8, 3)
  with pytest.raises(data.DataError, match="Cannot read image .*001.png"):
    src[1]


def test_defect_without_mask_and_mask_without_image(tmp_path):
  cat = _make(tmp_path)
  os.remove(os.path.join(cat, "ground_truth", "crack", "001_mask.png"))
  msg = _raises("has no mask", tmp_path, "widget", "test")
  assert os.path.join(cat, "test", "crack", "001.png") in msg
  assert os.path.join(cat, "ground_truth", "crack", "001_mask.png") in msg
  _save(os.path.join(cat, "ground_truth", "crack", "001_mask.png"), _mask())
  _save(os.path.join(cat, "ground_truth", "crack", "007_mask.png"), _mask())
  _raises("Mask .*007_mask.png has no image", tmp_path, "widget", "test")
  os.remove(os.path.join(cat, "ground_truth", "crack", "007_mask.png"))
  _save(os.path.join(cat, "ground_truth", "scratch", "000_mask.png"), _mask())
  _raises("scratch.*000_mask.png has no image", tmp_path, "widget", "test")


def test_mask_size_must_match_image(tmp_path):
  cat = _make(tmp_path)
  _save(
    os.path.join(cat, "ground_truth", "hole", "000_mask.png"),
    np.zeros((8, 9), np.uint8),
  )
  msg = _raises("is 8x9", tmp_path, "widget", "test")
  assert "000_mask.png" in msg and "8x8" in msg


def test_augmentation_is_seeded_fresh_per_epoch_and_aligned(tmp_path):
  cat = os.path.join(tmp_path, "widget")
  square = np.zeros((32, 32), np.uint8)
  square[6:20, 10:16] = 255
  _save(os.path.join(cat, "train", "good", "000.png"), square)
  src = mvtec.load(tmp_path, "widget", "train", image_size=32, augment=True)
  kw = dict(shuffle=False, process_index=0, process_count=1, num_threads=0)

  def views(seed, n=4):
    it = pipeline.batches(src, 1, seed=seed, **kw)
    return [next(it)["image"][0] for _ in range(n)]

  a, b, c = views(0), views(0), views(1)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  assert not np.array_equal(a[0], a[1])  # Fresh view each epoch.
  np.testing.assert_array_equal(src[0]["image"][..., 0], square / 255)
  # Image and mask move together: the rotated square is the rotated mask.
  rec = dict(src[0], mask=(src[0]["image"][..., :1] > 0.5).astype(np.float32))
  out = images.rotate_and_mirror(rec, np.random.default_rng(3))
  agree = ((out["image"][..., 0] > 0.5) == (out["mask"][..., 0] > 0.5)).mean()
  assert agree > 0.97
  assert not np.array_equal(out["mask"], rec["mask"])
  flipped = images.rotate_and_mirror(
    rec, np.random.default_rng(0), max_degrees=0.0
  )
  assert np.array_equal(flipped["image"], rec["image"]) or np.array_equal(
    flipped["image"], rec["image"][:, ::-1]
  )


def test_lossy_masks_are_warned_about_once_with_the_count(tmp_path):
  cat = _make(tmp_path)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # PNG masks: no warning.
    src = mvtec.load(tmp_path, "widget", "test", image_size=8)
  assert src[2]["mask"].sum() == 9  # The 3 x 3 square drawn.
  for i in range(2):
    png = os.path.join(cat, "ground_truth", "crack", f"{i:03d}_mask.png")
    Image.open(png).save(png.replace(".png", ".jpg"))
    os.remove(png)
  with pytest.warns(UserWarning) as caught:
    src = mvtec.load(tmp_path, "widget", "test", image_size=8)
  assert len(caught) == 1
  msg = str(caught[0].message)
  jpg = os.path.join(cat, "ground_truth", "crack", "000_mask.jpg")
  assert msg.startswith("2 mask(s) are stored lossily (JPEG), e.g. " + jpg)
  assert "PNG" in msg
  # The masks are still read by the rule, noise included.
  assert src[2]["mask"].sum() > 9
