"""The offline digits stand-in for MNIST."""

import numpy as np
import pytest

from vae_attn.data import digits


def test_one_class_splits_match_the_mnist_contract():
  train = digits.load("train", normal_digit=3)
  test = digits.load("test", normal_digit=3)
  batch = train.get_batch(np.arange(len(train)))
  assert batch["image"].shape == (len(train), 28, 28, 1)
  assert batch["image"].dtype == np.float32
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert set(batch["label"]) == {3} and not batch["anomalous"].any()
  labels = test.get_batch(np.arange(len(test)))["label"]
  assert set(labels) == set(range(10))
  # 80/20 per digit, disjoint: 1,797 images in all.
  assert len(digits.load("train")) + len(digits.load("test")) == 1797
  record = test[0]
  assert record["anomalous"] == int(record["label"] != 3)


def test_digits_are_distinguishable_after_upsampling():
  train = digits.load("train")
  batch = train.get_batch(np.arange(len(train)))
  means = np.stack(
    [batch["image"][batch["label"] == d].mean(0) for d in range(10)]
  )
  dist = np.abs(means[:, None] - means[None]).sum((2, 3, 4))
  assert dist[~np.eye(10, dtype=bool)].min() > 10.0


def test_bad_arguments():
  with pytest.raises(ValueError, match="Unknown split"):
    digits.load("validation")
  with pytest.raises(ValueError, match="0..9"):
    digits.load("train", normal_digit=12)
