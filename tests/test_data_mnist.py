"""Tests for the tfds-backed MNIST and dSprites loaders (mock_data only)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vae_attn import data
from vae_attn.data import dsprites, mnist, pipeline


@pytest.fixture
def mock_mnist():
  with tfds.testing.mock_data(num_examples=60):
    yield


def test_plain_split(mock_mnist):
  src = mnist.load("train")
  assert len(src) == 60
  rec = src[0]
  assert rec["image"].shape == (28, 28, 1) and rec["image"].dtype == np.float32
  assert 0 <= rec["image"].min() and rec["image"].max() <= 1
  assert rec["image"].max() > 0
  assert rec["label"].dtype == np.int32 and 0 <= rec["label"] < 10
  assert "anomalous" not in rec


def test_one_class_train_keeps_one_digit(mock_mnist):
  everything = mnist.load("train")
  digit = int(everything[0]["label"])
  src = mnist.load("train", normal_digit=digit)
  labels = [int(src[i]["label"]) for i in range(len(src))]
  assert len(src) == sum(
    int(everything[i]["label"]) == digit for i in range(len(everything))
  )
  assert set(labels) == {digit}
  assert all(int(src[i]["anomalous"]) == 0 for i in range(len(src)))
  np.testing.assert_array_equal(src[0]["image"], everything[0]["image"])


def test_one_class_test_keeps_all_labels(mock_mnist):
  src = mnist.load("test", normal_digit=3)
  assert len(src) == 60
  batch = next(
    pipeline.batches(
      src, 60, seed=0, shuffle=False, process_index=0, process_count=1
    )
  )
  assert batch["image"].shape == (60, 28, 28, 1)
  assert batch["image"].dtype == np.float32
  np.testing.assert_array_equal(
    batch["anomalous"], (batch["label"] != 3).astype(np.int32)
  )
  assert len(set(batch["label"].tolist())) > 2


def test_bad_normal_digit(mock_mnist):
  with pytest.raises(ValueError, match="normal_digit"):
    mnist.load("train", normal_digit=10)


def test_unprepared_mnist_says_how_to_prepare(tmp_path):
  with pytest.raises(data.DataError) as info:
    mnist.load("train", data_dir=tmp_path)
  msg = str(info.value)
  assert "tfds build mnist --file_format=array_record" in msg
  assert str(tmp_path) in msg
  with pytest.raises(data.DataError, match="does not exist"):
    mnist.load("test", data_dir=tmp_path / "missing")


def test_dsprites_tfds(tmp_path):
  with tfds.testing.mock_data(num_examples=10):
    src = dsprites.load_tfds(data_dir=tmp_path)
    rec = src[3]
  assert len(src) == 10
  assert rec["image"].shape == (64, 64, 1) and rec["image"].dtype == np.float32
  assert set(np.unique(rec["image"])) <= {0.0, 1.0}
  assert rec["factors"].shape == (5,) and rec["factors"].dtype == np.int32
  assert (rec["factors"] < [3, 6, 40, 32, 32]).all()
  with pytest.raises(data.DataError, match="tfds build dsprites"):
    dsprites.load_tfds(data_dir=tmp_path)
