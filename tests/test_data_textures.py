"""Tests for the offline textured-defect generator (MVTec-AD layout)."""

import os

import numpy as np
import pytest

from vae_attn import data
from vae_attn.data import mvtec, textures

SMALL = dict(
  categories=("brick", "gravel"), image_size=32, num_train=3, num_test=7
)


def _labels(source):
  return [int(source[i]["label"]) for i in range(len(source))]


def _files(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_layout_labels_and_masks(tmp_path):
  textures.write_dataset(tmp_path, seed=0, **SMALL)
  assert sorted(os.listdir(tmp_path)) == ["brick", "gravel"]
  train = mvtec.load(tmp_path, "brick", "train", image_size=32)
  assert len(train) == 3 and _labels(train) == [0, 0, 0]
  test = mvtec.load(tmp_path, "brick", "test", image_size=32)
  types = [str(test[i]["defect_type"]) for i in range(len(test))]
  assert types == ["good", "good", "cut", "hole", "scratch", "scratch", "stain"]
  for i in range(len(test)):
    rec = test[i]
    assert rec["image"].shape == (32, 32, 3)
    area = rec["mask"].sum()
    if rec["label"] == 0:
      assert area == 0
    else:
      assert 0 < area < 32 * 32 / 2, (types[i], area)


def test_defects_change_the_masked_pixels_only():
  texture = textures.load_texture("grass")
  assert texture.shape == (512, 512) and 0 <= texture.min() < texture.max() <= 1
  for name, fn in textures.DEFECTS.items():
    rng = np.random.default_rng(4)
    crop = texture[300:364, 100:164].copy()
    image, mask = fn(crop, rng, texture)
    assert mask.dtype == bool and mask.any()
    np.testing.assert_array_equal(image[~mask], crop[~mask])
    assert np.abs(image[mask] - crop[mask]).mean() > 0.1, name


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
  a = _files(textures.write_dataset(tmp_path / "a", seed=3, **SMALL))
  b = _files(textures.write_dataset(tmp_path / "b", seed=3, **SMALL))
  c = _files(textures.write_dataset(tmp_path / "c", seed=4, **SMALL))
  assert a == b
  assert a.keys() == c.keys() and a != c


def test_train_and_test_crops_differ(tmp_path):
  textures.write_dataset(tmp_path, **SMALL)
  train = mvtec.load(tmp_path, "gravel", "train", image_size=32)
  test = mvtec.load(tmp_path, "gravel", "test", image_size=32)
  for i in range(len(train)):
    for j in range(2):
      assert not np.array_equal(train[i]["image"], test[j]["image"])


def test_ensure_dataset_is_cached_and_respects_env(tmp_path, monkeypatch):
  monkeypatch.setenv("VAE_ATTN_CACHE", str(tmp_path / "cache"))
  assert textures.cache_dir() == str(tmp_path / "cache")
  root = textures.ensure_dataset(**SMALL)
  assert os.path.dirname(root) == str(tmp_path / "cache")
  assert os.listdir(tmp_path / "cache") == [os.path.basename(root)]
  stamp = os.path.getmtime(
    os.path.join(root, "brick", "train", "good", "000.png")
  )
  assert textures.ensure_dataset(**SMALL) == root
  assert (
    os.path.getmtime(os.path.join(root, "brick", "train", "good", "000.png"))
    == stamp
  )
  assert textures.ensure_dataset(seed=1, **SMALL) != root
  monkeypatch.delenv("VAE_ATTN_CACHE")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert textures.cache_dir() == str(tmp_path / "xdg" / "vae_attn")


def test_killed_write_leaves_no_dataset(tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(textures, "_cut", boom)
  monkeypatch.setitem(textures.DEFECTS, "cut", boom)
  with pytest.raises(KeyboardInterrupt):
    textures.ensure_dataset(tmp_path, **SMALL)
  assert os.listdir(tmp_path) == []


def test_default_dataset_for_trainers(tmp_path, monkeypatch):
  monkeypatch.setenv("VAE_ATTN_CACHE", str(tmp_path))
  root = textures.ensure_dataset()
  for category in textures.CATEGORIES:
    train = mvtec.load(root, category, "train", image_size=64)
    test = mvtec.load(root, category, "test", image_size=64)
    assert len(train) == 40 and len(test) == 24
    assert train[0]["image"].shape == (64, 64, 3)
    assert set(_labels(test)) == {0, 1}


def test_cli_and_bad_arguments(tmp_path, capsys):
  textures.main(
    [
      "--out",
      str(tmp_path),
      "--categories",
      "grass",
      "--image_size",
      "24",
      "--num_train",
      "2",
      "--num_test",
      "5",
    ]
  )
  assert "Wrote" in capsys.readouterr().out
  assert len(mvtec.load(tmp_path, "grass", "test", image_size=24)) == 5
  with pytest.raises(data.DataError, match="Unknown texture category"):
    textures.write_dataset(tmp_path, categories=("marble",))
  with pytest.raises(data.DataError, match="Unknown defect types"):
    textures.write_dataset(tmp_path, defect_types=("crack",))
  with pytest.raises(data.DataError, match="num_test"):
    textures.write_dataset(tmp_path, num_test=2)
  with pytest.raises(data.DataError, match="image_size"):
    textures.write_dataset(tmp_path, image_size=300)


def test_writer_command_reads_its_flags_and_refuses_bad_sizes_in_one_line(
  tmp_path, capsys
):
  argv = [f"--out={tmp_path / 'set'}", "--categories=brick", "--image-size=32"]
  assert textures.main([*argv, "--num-train=1", "--num-test=5"]) == 0
  assert sorted(p.name for p in (tmp_path / "set").iterdir())[0] == "brick"
  assert textures.main([*argv, "--num-train=1", "--num-test=2"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: Need num_train >= 1")
