"""Tests for the procedural dSprites renderer and the npz loader."""

import functools
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_attn import data
from vae_attn.data import dsprites, pipeline

# 160 real dSprites frames with their factor classes (see data/README.md).
REAL_FRAMES = (
  pathlib.Path(__file__).parent / "data" / "dsprites_real_frames.npz"
)


@pytest.fixture(scope="module")
def ds():
  return dsprites.procedural()


def _factors(shape=0, scale=5, orient=0, x=15, y=15):
  return np.array([[shape, scale, orient, x, y]])


def _centroid(image):
  rows, cols = np.nonzero(image[..., 0])
  return rows.mean(), cols.mean()


def test_grid_size_and_index_order(ds):
  assert len(ds) == 737_280 == 3 * 6 * 40 * 32 * 32
  assert ds.num_factors == 5
  assert ds.factors_num_values == [3, 6, 40, 32, 32]
  assert ds.observation_shape == [64, 64, 1]
  assert ds[0]["factors"].tolist() == [0, 0, 0, 0, 0]
  assert ds[1]["factors"].tolist() == [0, 0, 0, 0, 1]  # posY fastest.
  assert ds[32]["factors"].tolist() == [0, 0, 0, 1, 0]
  assert ds[32 * 32]["factors"].tolist() == [0, 0, 1, 0, 0]
  assert ds[-1]["factors"].tolist() == [2, 5, 39, 31, 31]
  assert ds[123_456]["factors"].dtype == np.int32
  idx = np.array([0, 5, 1000, 737_279])
  np.testing.assert_array_equal(
    dsprites.factors_to_index(dsprites.index_to_factors(idx)), idx
  )


def test_images_are_binary_float32_and_inside_the_canvas(ds):
  batch = ds.get_batch(np.arange(0, 737_280, 997))
  images = batch["image"]
  assert images.dtype == np.float32 and images.shape[1:] == (64, 64, 1)
  assert set(np.unique(images)) == {0.0, 1.0}
  assert (images.sum(axis=(1, 2, 3)) > 0).all()
  # The sprite never touches the border at any position: corners included.
  corner = ds.render(np.array([[2, 5, 7, 0, 0], [2, 5, 7, 31, 31]]))
  assert corner[:, 0].sum() == corner[:, -1].sum() == 0
  assert corner[:, :, 0].sum() == corner[:, :, -1].sum() == 0
  for i in (0, 500, 737_279):
    np.testing.assert_array_equal(ds[i]["image"], ds.get_batch([i])["image"][0])


def test_every_sprite_stays_inside_the_canvas_at_extreme_positions(ds):
  grid = np.stack(
    np.meshgrid(
      np.arange(3),
      np.arange(6),
      np.arange(40),
      [0, 31],
      [0, 31],
      indexing="ij",
    ),
    axis=-1,
  ).reshape(-1, 5)
  images = ds.render(grid, dtype=np.uint8)[..., 0]
  assert images.any(axis=(1, 2)).all()
  assert not images[:, [0, -1], :].any()  # Border rows and columns.
  assert not images[:, :, [0, -1]].any()
  # Class 31 is exactly 32 px from class 0 (15.5 + 32 * 31 / 31), so the
  # sprite there is the class-0 sprite moved by 32 px: nothing is cut.
  first = images[(grid[:, 3] == 0) & (grid[:, 4] == 0)]
  last = images[(grid[:, 3] == 31) & (grid[:, 4] == 31)]
  np.testing.assert_array_equal(np.roll(first, (32, 32), axis=(1, 2)), last)


def test_known_sizes_and_centre_at_orientation_0(ds):
  # Centre (15.5, 15.5); at scale 1 a square of side 19.2 covers pixel
  # centres 15.5 +- 9.6 -> 6..25, an ellipse 15.5 +- 12.77 columns (3..28)
  # by 15.5 +- 7.21 rows (9..22); at scale 0.5 the square covers 11..20.
  square, small, ellipse = ds.render(
    np.array([[0, 5, 0, 0, 0], [0, 0, 0, 0, 0], [1, 5, 0, 0, 0]])
  )[..., 0]
  expected = np.zeros((64, 64))
  expected[6:26, 6:26] = 1
  np.testing.assert_array_equal(square, expected)
  expected = np.zeros((64, 64))
  expected[11:21, 11:21] = 1
  np.testing.assert_array_equal(small, expected)
  rows, cols = np.nonzero(ellipse)
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (9, 22, 3, 28)


def test_foreground_area_grows_with_scale(ds):
  for shape in range(3):
    for orient in (0, 13):
      areas = [ds.render(_factors(shape, s, orient)).sum() for s in range(6)]
      assert (np.diff(areas) > 0).all(), (shape, areas)


def test_centroid_moves_monotonically_with_x_and_y(ds):
  for shape in range(3):
    xs = [
      _centroid(ds.render(_factors(shape, 2, 7, x=x))[0]) for x in range(32)
    ]
    ys = [
      _centroid(ds.render(_factors(shape, 2, 7, y=y))[0]) for y in range(32)
    ]
    cols = np.array([c for _, c in xs])
    rows = np.array([r for r, _ in ys])
    # 32/31 px per class: sub-pixel steps, 32 px over the 31 steps.
    assert (np.diff(cols) > 0.9).all() and (np.diff(cols) < 1.2).all()
    assert (np.diff(rows) > 0.9).all() and (np.diff(rows) < 1.2).all()
    assert cols[-1] - cols[0] == rows[-1] - rows[0] == 32
    # The other coordinate only wobbles with the sub-pixel outline.
    assert np.ptp([r for r, _ in xs]) < 0.3
    assert np.ptp([c for _, c in ys]) < 0.3


def test_each_shape_is_distinguishable(ds):
  for scale in (0, 5):
    for orient in (0, 10, 25):
      images = ds.render(
        np.array([[s, scale, orient, 16, 16] for s in range(3)])
      )[..., 0].astype(bool)
      for a in range(3):
        for b in range(a + 1, 3):
          iou = (images[a] & images[b]).sum() / (images[a] | images[b]).sum()
          assert iou < 0.85, (a, b, scale, orient, iou)


def test_rotation_by_two_pi_reproduces_orientation_zero(ds):
  for shape in range(3):
    zero, full, quarter = ds.render(
      np.array([[shape, 4, o, 9, 20] for o in (0, 39, 10)])
    )
    np.testing.assert_array_equal(zero, full)
    if shape != 0:  # Orientation 10 turns by 92 degrees.
      assert (zero != quarter).sum() > 20


def test_fidelity_to_the_real_frames(ds):
  # The targets: pixels that differ from the real frame, per frame.
  with np.load(REAL_FRAMES) as npz:
    real = npz["images"].astype(bool)
    classes = npz["factor_classes"].astype(np.int64)
  assert real.shape == (160, 64, 64)
  drawn = ds.render(classes)[..., 0].astype(bool)
  diff = (drawn != real).sum(axis=(1, 2))
  limits = {"square": (0, 4), "ellipse": (0, 4), "heart": (4, 12)}
  for shape, name in enumerate(dsprites.SHAPE_NAMES):
    d = diff[classes[:, 0] == shape]
    assert len(d) >= 32, name
    median, most = limits[name]
    assert np.median(d) <= median and d.max() <= most, (name, sorted(d))


def test_device_render_in_a_jitted_step_equals_the_source(ds):
  high = jnp.array(dsprites.FACTORS_NUM_VALUES)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(key):  # What a train step does: draw classes, render them.
    classes = jax.random.randint(key, (1100, 5), 0, high)
    return classes, dsprites.render(classes)

  for seed in (0, 1):  # A second call with new classes does not retrace.
    classes, images = step(jax.random.key(seed))
    classes = np.asarray(classes)
    assert images.dtype == jnp.float32 and images.shape == (1100, 64, 64, 1)
    # The source renders 1,024 + 76 (padded to 128) on the CPU.
    np.testing.assert_array_equal(np.asarray(images), ds.render(classes))
  # In another dtype: the same pixels.
  uint8 = ds.render(classes[:8], dtype=np.uint8)
  assert uint8.dtype == np.uint8
  render_uint8 = jax.jit(functools.partial(dsprites.render, dtype=jnp.uint8))
  np.testing.assert_array_equal(uint8, render_uint8(classes[:8]))


def test_render_rejects_bad_classes():
  with pytest.raises(ValueError, match="shape"):
    dsprites.render(np.zeros((2, 4), int))
  with pytest.raises(ValueError, match="shape"):
    dsprites.render(jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match="integer"):
    dsprites.render(jnp.zeros((2, 5), jnp.float32))
  with pytest.raises(ValueError, match="integer"):
    dsprites.render(np.zeros((2, 5)))
  with pytest.raises(ValueError, match="outside"):
    dsprites.render(np.array([[0, 6, 0, 0, 0]]))


def test_ground_truth_interface_with_both_random_states(ds):
  for rs in (np.random.RandomState(0), np.random.default_rng(0)):
    factors = ds.sample_factors(100, rs)
    assert factors.shape == (100, 5)
    assert (factors >= 0).all() and (factors < [3, 6, 40, 32, 32]).all()
    obs = ds.sample_observations_from_factors(factors, rs)
    assert obs.shape == (100, 64, 64, 1) and obs.dtype == np.float32
    index = dsprites.factors_to_index(factors)
    np.testing.assert_array_equal(obs[7], ds[int(index[7])]["image"])
  a = ds.sample_factors(5, np.random.RandomState(3))
  b = ds.sample_factors(5, np.random.RandomState(3))
  np.testing.assert_array_equal(a, b)
  with pytest.raises(TypeError, match="random_state"):
    ds.sample_factors(5, 3)
  with pytest.raises(ValueError, match="outside"):
    ds.sample_observations_from_factors(np.array([[3, 0, 0, 0, 0]]), None)
  with pytest.raises(ValueError, match="shape"):
    ds.sample_observations_from_factors(np.zeros((2, 4), int), None)


def _shuffled_source(num_values, seed=0):
  """Records of a tiny factor grid in a random order, like the tfds build."""
  total = int(np.prod(num_values))
  factors = np.stack(np.unravel_index(np.arange(total), num_values), axis=1)
  order = np.random.default_rng(seed).permutation(total)
  return [
    {
      "image": np.full((2, 2, 1), i, np.float32),  # The flat index, as pixels.
      "factors": factors[i].astype(np.int32),
    }
    for i in order
  ]


def test_tfds_source_in_factor_order_finds_each_combination():
  num_values = (2, 3, 4)
  ground_truth = dsprites.TfdsDSprites(_shuffled_source(num_values), num_values)
  assert ground_truth.num_factors == 3
  assert ground_truth.factors_num_values == [2, 3, 4]
  factors = ground_truth.sample_factors(50, np.random.RandomState(0))
  images = ground_truth.sample_observations_from_factors(factors, None)
  flat = np.ravel_multi_index(factors.T, num_values)
  np.testing.assert_array_equal(images[:, 0, 0, 0], flat)
  assert images.dtype == np.float32 and images.shape == (50, 2, 2, 1)
  assert len(ground_truth) == 24 and ground_truth[5]["image"][0, 0, 0] == 5
  with pytest.raises(data.DataError, match="1 missing, 0 repeated"):
    dsprites.TfdsDSprites(_shuffled_source(num_values)[:-1], num_values)


def test_pipeline_uses_the_vectorised_batch(ds):
  batch = next(
    pipeline.batches(ds, 64, seed=0, process_index=0, process_count=1)
  )
  assert batch["image"].shape == (64, 64, 64, 1)
  assert batch["factors"].shape == (64, 5)
  for i in (0, 63):
    index = dsprites.factors_to_index(batch["factors"][i : i + 1])[0]
    np.testing.assert_array_equal(batch["image"][i], ds[int(index)]["image"])


def _write_npz(path, num_values=(1, 3, 2, 2, 2, 2), metadata=True):
  classes = np.stack(
    np.meshgrid(*[np.arange(n) for n in num_values], indexing="ij"), -1
  ).reshape(-1, len(num_values))
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 2, size=(len(classes), 64, 64), dtype=np.uint8)
  arrays = {
    "imgs": imgs,
    "latents_classes": classes,
    "latents_values": classes.astype(np.float64),
  }
  if metadata:
    arrays["metadata"] = np.array({"title": "dSprites"}, dtype=object)
  np.savez_compressed(path, **arrays)
  return imgs, classes


def test_load_npz_without_unpickling(tmp_path):
  path = tmp_path / dsprites.NPZ_FILENAME
  imgs, classes = _write_npz(path)
  ds = dsprites.load_npz(path)
  assert len(ds) == 48
  assert ds.factors_num_values == [3, 2, 2, 2, 2]
  record = ds[17]
  np.testing.assert_array_equal(record["image"][..., 0], imgs[17])
  assert record["image"].dtype == np.float32
  np.testing.assert_array_equal(record["factors"], classes[17, 1:])
  factors = ds.sample_factors(10, np.random.RandomState(1))
  obs = ds.sample_observations_from_factors(factors, np.random.RandomState(1))
  index = factors @ np.array([16, 8, 4, 2, 1])
  np.testing.assert_array_equal(obs[..., 0], imgs[index])


def _other_npz(tmp_path):
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  return tmp_path / "other.npz"


def _shuffled_npz(tmp_path):
  imgs, classes = _write_npz(tmp_path / "order.npz", metadata=False)
  np.savez(tmp_path / "shuffled.npz", imgs=imgs, latents_classes=classes[::-1])
  return tmp_path / "shuffled.npz"


def _pickled_npz(tmp_path):
  imgs, classes = _write_npz(tmp_path / "order.npz", metadata=False)
  objects = np.empty(len(imgs), dtype=object)
  objects[:] = list(imgs)
  np.savez(tmp_path / "pickled.npz", imgs=objects, latents_classes=classes)
  return tmp_path / "pickled.npz"


def _bad_zip(tmp_path):
  (tmp_path / "bad.npz").write_bytes(b"not a zip file")
  return tmp_path / "bad.npz"


def _passwd(tmp_path):
  del tmp_path
  return "/etc/passwd"


def _failed_download(tmp_path):
  (tmp_path / dsprites.NPZ_FILENAME).write_text("<html>Not Found</html>")
  return tmp_path / dsprites.NPZ_FILENAME


# (the file, the key words the message holds, words it must not hold).
NPZ_ERRORS = [
  (lambda p: p / "missing.npz", ["not found", "procedural"], ["damaged"]),
  (_bad_zip, ["bad.npz is not a dSprites .npz", "--data-dir="], ["damaged"]),
  (_other_npz, ["lacks the arrays", "'imgs'", "holds ['x']"], ["damaged"]),
  (_shuffled_npz, ["factor order", "not the original"], ["Re-download"]),
  (_passwd, ["not a zip archive", "b'root:x'", "--data-dir="], ["damaged"]),
  (lambda p: p, ["is a folder", "pass the .npz file"], ["damaged"]),
  (_failed_download, ["damaged download", "Re-download"], ["pickle"]),
  # Pickled objects are refused by name, not called a damaged file.
  (
    _pickled_npz,
    ["pickled.npz", "'imgs'", "pickled Python objects", "never loaded"],
    ["truncated", "damaged", "Re-download"],
  ),
]


@pytest.mark.parametrize(("make", "words", "absent"), NPZ_ERRORS)
def test_load_npz_errors_name_the_file_and_the_fix(
  tmp_path, make, words, absent
):
  path = make(tmp_path)
  with pytest.raises(data.DataError) as info:
    dsprites.load_npz(path)
  msg = str(info.value)
  assert str(path) in msg and "\n" not in msg
  for word in words:
    assert word in msg, (word, msg)
  for word in absent:
    assert word not in msg, (word, msg)


def test_a_folder_holding_the_npz_names_it(tmp_path):
  npz = tmp_path / dsprites.NPZ_FILENAME
  _write_npz(npz)
  with pytest.raises(data.DataError, match="is a folder") as info:
    dsprites.load_npz(tmp_path)
  assert f"--data-dir={npz}." in str(info.value)


@pytest.mark.parametrize(
  ("value", "shown"), [(0.5, "holds 0.5"), (np.nan, "holds nan")]
)
def test_load_npz_refuses_non_binary_and_nan_images(tmp_path, value, shown):
  imgs, classes = _write_npz(tmp_path / "ok.npz", metadata=False)
  floats = imgs.astype(np.float32)
  floats[5, 3, 3] = value
  path = tmp_path / "floats.npz"
  np.savez(path, imgs=floats, latents_classes=classes)
  with pytest.raises(data.DataError, match=f"image 5 of 'imgs' {shown}"):
    dsprites.load_npz(path)
  # Float images of 0.0 and 1.0 are the same data and load as such.
  np.savez(path, imgs=imgs.astype(np.float64), latents_classes=classes)
  np.testing.assert_array_equal(
    dsprites.load_npz(path)[5]["image"][..., 0], imgs[5]
  )


def test_load_npz_names_truncated_and_non_zip_files(tmp_path):
  good = tmp_path / "good.npz"
  _write_npz(good)
  payload = good.read_bytes()
  for name, content in [
    ("half.npz", payload[: len(payload) // 2]),
    ("tail.npz", payload[:-40]),
  ]:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(data.DataError, match="truncated or damaged") as info:
      dsprites.load_npz(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
  flipped = bytearray(payload)
  flipped[len(payload) // 2] ^= 0xFF
  (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
  with pytest.raises(data.DataError, match="truncated or damaged"):
    dsprites.load_npz(tmp_path / "flipped.npz")
  (tmp_path / "text.npz").write_text("a text file, not an archive\n")
  with pytest.raises(
    data.DataError, match="text.npz is not a dSprites .npz .it is not a zip"
  ) as info:
    dsprites.load_npz(tmp_path / "text.npz")
  assert "pickle" not in str(info.value)
  np.save(tmp_path / "array.npy", np.zeros(3))
  (tmp_path / "array.npz").write_bytes((tmp_path / "array.npy").read_bytes())
  with pytest.raises(data.DataError, match="starts with an .npy array"):
    dsprites.load_npz(tmp_path / "array.npz")
