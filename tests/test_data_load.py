"""Tests for the one data-set table, vae_attn.datasets.load."""

import os

import numpy as np
import pytest
from PIL import Image

from vae_attn import data
from vae_attn.data import custom_folder, datasets, digits, mvtec, ped1, textures


def _save(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def _mask():
  m = np.zeros((16, 16), np.uint8)
  m[4:8, 4:12] = 255
  return m


def _mvtec(root, category="widget"):
  _save(root / category / "train" / "good" / "000.png", np.zeros((16, 16)))
  _save(root / category / "test" / "good" / "000.png", np.zeros((16, 16)))
  _save(root / category / "test" / "dent" / "000.png", np.full((16, 16), 90))
  _save(root / category / "ground_truth" / "dent" / "000_mask.png", _mask())
  return root


def _same(a, b):
  assert len(a) == len(b)
  for i in range(len(a)):
    for key in ("image", "mask", "label"):
      np.testing.assert_array_equal(a[i][key], b[i][key])


def test_the_table_names_every_one_class_data_set():
  assert datasets.DATASETS == (
    "textures",
    "mvtec",
    "folder",
    "mnist",
    "digits",
    "ped1",
  )
  assert set(datasets.WITH_MASKS) == {"textures", "mvtec", "folder", "ped1"}
  with pytest.raises(ValueError, match="Unknown data set 'cifar'.*mvtec"):
    datasets.load("cifar", "train")


def test_mvtec_matches_its_loader_with_the_default_size(tmp_path):
  root = _mvtec(tmp_path)
  test = datasets.load("mvtec", "test", data_dir=root, category="widget")
  assert test[0]["image"].shape == (256, 256, 3)  # The paper's size.
  _same(test, mvtec.load(root, "widget", "test"))
  train = datasets.load(
    "mvtec", "train", data_dir=str(root), category="widget", image_size=8
  )
  assert train[0]["image"].shape == (8, 8, 3)
  _same(train, mvtec.load(root, "widget", "train", image_size=8))
  aug = datasets.load(
    "mvtec", "train", data_dir=root, category="widget", augment=True, seed=3
  )
  assert aug.augment is not None


# (name, options, the key words of the one-line error).
ERRORS = [
  ("mvtec", {}, ["'mvtec'", "data_dir", "--data-dir"]),
  ("folder", {"data_dir": ""}, ["'folder'", "--data-dir"]),
  ("ped1", {}, ["'ped1'", "--data-dir"]),
  ("mvtec", {"data_dir": "ROOT"}, ["--category", "categories in ROOT: widget"]),
  ("mvtec", {"data_dir": "ROOT/x"}, ["x does not exist", "--data-dir="]),
]


@pytest.mark.parametrize(("name", "options", "words"), ERRORS)
def test_missing_options_are_one_line_data_errors(
  tmp_path, name, options, words
):
  _mvtec(tmp_path)
  root = str(tmp_path)
  options = {k: v.replace("ROOT", root) for k, v in options.items()}
  with pytest.raises(data.DataError) as info:
    datasets.load(name, "train", **options)
  msg = str(info.value)
  assert "\n" not in msg.split("Expected layout")[0]
  for word in words:
    assert word.replace("ROOT", root) in msg, (word, msg)


def test_textures_reads_a_written_set_or_writes_it_into_data_dir(
  tmp_path, monkeypatch
):
  small = dict(categories=("grass",), image_size=32, num_train=2, num_test=5)
  root = textures.write_dataset(tmp_path / "set", **small)
  # data_dir is the written set itself: read as it is.
  test = datasets.load("textures", "test", data_dir=root, category="grass")
  assert test[0]["image"].shape == (128, 128, 3)  # The set's default size.
  _same(test, mvtec.load(root, "grass", "test", image_size=128))
  # Otherwise data_dir is where the set is written (None: the cache).
  calls = []

  def ensure(parent):
    calls.append(parent)
    return root

  monkeypatch.setattr(textures, "ensure_dataset", ensure)
  train = datasets.load(
    "textures", "train", data_dir=tmp_path / "cache", category="grass"
  )
  assert len(train) == 2 and calls == [str(tmp_path / "cache")]
  datasets.load("textures", "train", category="grass", image_size=16)
  assert calls[-1] is None
  # Without a category: the first of textures.CATEGORIES.
  with pytest.raises(data.DataError, match="'brick' not found"):
    datasets.load("textures", "train")


def test_folder_passes_its_mask_folder(tmp_path):
  _save(tmp_path / "train" / "n.png", np.zeros((16, 16)))
  _save(tmp_path / "test" / "good" / "a.png", np.zeros((16, 16)))
  _save(tmp_path / "test" / "dent" / "b.png", np.full((16, 16), 90))
  _save(tmp_path / "annotations" / "dent" / "b.png", _mask())
  test = datasets.load(
    "folder", "test", data_dir=tmp_path, mask_dir="annotations", image_size=16
  )
  assert test[1]["has_mask"] == 1 and test[1]["mask"].sum() == 32
  _same(
    test,
    custom_folder.load(tmp_path, "test", image_size=16, mask_dir="annotations"),
  )


def test_ped1_default_size_is_the_papers(tmp_path):
  for n in (1, 2):
    path = tmp_path / "UCSDped1" / "Train" / "Train001" / f"{n:03d}.tif"
    _save(path, np.full((12, 18), n))
  train = datasets.load("ped1", "train", data_dir=tmp_path)
  assert train[0]["image"].shape == (100, 100, 1)
  _same(train, ped1.load(tmp_path, "train"))


def test_digits_and_mnist_take_the_normal_digit(tmp_path):
  train = datasets.load("digits", "train", normal_digit=3)
  assert set(train.get_batch(np.arange(len(train)))["label"]) == {3}
  assert len(train) == len(digits.load("train", normal_digit=3))
  # A run's recorded options pass whole: those digits do not use are ignored.
  recorded = {"category": "", "normal_digit": 3, "image_size": 28}
  test = datasets.load("digits", "test", **recorded)
  assert test[0]["image"].shape == (28, 28, 1) and "anomalous" in test[0]
  with pytest.raises(data.DataError, match="tfds data_dir .* does not exist"):
    datasets.load("mnist", "train", data_dir=tmp_path / "none", normal_digit=1)
