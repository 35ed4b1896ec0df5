"""Tests for the batching pipeline: order, resumption, sharding, augment."""

import numpy as np
import pytest

from vae_attn import data
from vae_attn.data import base, pipeline


def _source(n=10):
  return base.ArraySource(
    {"x": np.arange(n), "name": np.array([f"r{i}" for i in range(n)])}, "toy"
  )


class _NoBatchSource:
  """A source without get_batch (records read one at a time)."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"x": np.array(i), "img": np.full((2, 2, 1), i, np.float32)}


def _take(it, k):
  return [next(it) for _ in range(k)]


def _kw(**kw):
  return {"process_index": 0, "process_count": 1, **kw}


def test_one_epoch_in_order_drops_remainder():
  out = list(
    pipeline.batches(_source(), 4, seed=0, shuffle=False, num_epochs=1, **_kw())
  )
  assert [b["x"].tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert out[0]["name"].dtype == object
  assert out[0]["name"].tolist() == ["r0", "r1", "r2", "r3"]


def test_keep_remainder_and_num_batches():
  out = list(
    pipeline.batches(
      _source(),
      4,
      seed=0,
      shuffle=False,
      num_epochs=1,
      drop_remainder=False,
      **_kw(),
    )
  )
  assert [b["x"].tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  # 3 epochs of 10 records: 7 whole batches of 4, the remainder dropped.
  kw = _kw(shuffle=False, num_epochs=3, num_threads=0)
  assert len(list(pipeline.batches(_source(), 4, seed=0, **kw))) == 7


def test_shuffled_epochs_are_permutations_and_reshuffled():
  it = pipeline.batches(_source(), 5, seed=3, num_epochs=2, **_kw())
  batches = [b["x"].tolist() for b in it]
  assert len(batches) == 4
  epoch1, epoch2 = batches[0] + batches[1], batches[2] + batches[3]
  assert sorted(epoch1) == sorted(epoch2) == list(range(10))
  assert epoch1 != epoch2
  assert epoch1 != list(range(10))


def test_same_seed_same_batches_other_seed_differs():
  a = _take(pipeline.batches(_source(), 3, seed=1, **_kw()), 5)
  b = _take(pipeline.batches(_source(), 3, seed=1, **_kw()), 5)
  c = _take(pipeline.batches(_source(), 3, seed=2, **_kw()), 5)
  assert [x["x"].tolist() for x in a] == [x["x"].tolist() for x in b]
  assert [x["x"].tolist() for x in a] != [x["x"].tolist() for x in c]


@pytest.mark.parametrize("num_threads", [0, 2])
def test_resume_from_start_step_matches_uninterrupted(num_threads):
  full = _take(
    pipeline.batches(_source(), 3, seed=7, num_threads=num_threads, **_kw()), 12
  )
  resumed = _take(
    pipeline.batches(
      _source(), 3, seed=7, start_step=8, num_threads=num_threads, **_kw()
    ),
    4,
  )
  assert [b["x"].tolist() for b in resumed] == [
    b["x"].tolist() for b in full[8:]
  ]


def test_processes_get_disjoint_slices_of_the_global_batch():
  single = _take(pipeline.batches(_source(12), 4, seed=5, **_kw()), 3)
  shards = [
    _take(
      pipeline.batches(
        _source(12), 2, seed=5, process_index=p, process_count=2, num_threads=0
      ),
      3,
    )
    for p in range(2)
  ]
  for step in range(3):
    merged = shards[0][step]["x"].tolist() + shards[1][step]["x"].tolist()
    assert merged == single[step]["x"].tolist()
    assert not set(shards[0][step]["x"]) & set(shards[1][step]["x"])


def test_remainder_split_between_processes():
  shards = [
    list(
      pipeline.batches(
        _source(10),
        3,
        seed=0,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        process_index=p,
        process_count=2,
      )
    )
    for p in range(2)
  ]
  assert [b["x"].tolist() for b in shards[0]] == [[0, 1, 2], [6, 7]]
  assert [b["x"].tolist() for b in shards[1]] == [[3, 4, 5], [8, 9]]


class _Augmented(_NoBatchSource):
  """A source with its own augmentation (as mvtec.load(augment=True))."""

  @staticmethod
  def augment(record, rng):
    return {**record, "noise": rng.normal(size=(2,)).astype(np.float32)}


def test_augment_is_seeded_by_position():
  kw = _kw(num_epochs=2, shuffle=False)
  a = list(pipeline.batches(_Augmented(4), 2, seed=1, **kw))
  b = list(pipeline.batches(_Augmented(4), 2, seed=1, **kw))
  c = list(pipeline.batches(_Augmented(4), 2, seed=2, **kw))
  np.testing.assert_array_equal(a[0]["noise"], b[0]["noise"])
  assert not np.allclose(a[0]["noise"], c[0]["noise"])
  # Same record in the next epoch gets a different augmentation.
  np.testing.assert_array_equal(a[0]["x"], a[2]["x"])
  assert not np.allclose(a[0]["noise"], a[2]["noise"])
  assert a[0]["img"].shape == (2, 2, 2, 1)
  # Resuming reproduces the augmentations too.
  r = list(pipeline.batches(_Augmented(4), 2, seed=1, start_step=2, **kw))
  np.testing.assert_array_equal(r[0]["noise"], a[2]["noise"])


def test_augment_applies_to_get_batch_sources():
  source = _source()
  source.augment = lambda record, rng: {**record, "x": -record["x"]}
  out = next(pipeline.batches(source, 4, seed=0, shuffle=False, **_kw()))
  assert out["x"].tolist() == [0, -1, -2, -3]
  assert out["name"].tolist() == ["r0", "r1", "r2", "r3"]


def test_default_process_is_jax_process():
  out = next(pipeline.batches(_source(), 10, seed=0, shuffle=False))
  assert out["x"].tolist() == list(range(10))


def test_errors():
  with pytest.raises(data.DataError, match="empty"):
    pipeline.batches(base.ArraySource({"x": np.zeros(0)}), 2, seed=0, **_kw())
  with pytest.raises(data.DataError, match="fewer than one global batch"):
    pipeline.batches(_source(3), 4, seed=0, num_epochs=1, **_kw())
  with pytest.raises(ValueError, match="batch_size"):
    pipeline.batches(_source(), 0, seed=0, **_kw())
  with pytest.raises(ValueError, match="process_index"):
    pipeline.batches(_source(), 2, seed=0, process_index=2, process_count=2)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_in_memory_images_with_non_finite_pixels_are_refused(value):
  images = np.zeros((4, 2, 2, 1), np.float32)
  images[2, 1, 0, 0] = value
  with pytest.raises(data.DataError) as info:
    base.ArraySource({"image": images, "label": np.arange(4)}, "mine")
  msg = str(info.value)
  assert "mine: record 2 of field 'image'" in msg
  assert "NaN or infinite" in msg and "np.nan_to_num" in msg
  # Integer fields and finite floats pass.
  images[2, 1, 0, 0] = 0.5
  assert len(base.ArraySource({"image": images, "label": np.arange(4)})) == 4
