"""Tests for the UCSD Ped1 loader on a tiny on-disk fixture."""

import os

import numpy as np
import pytest
from PIL import Image

from vae_attn import data
from vae_attn.data import ped1, pipeline

H, W = 12, 18


def _labels(source):
  return [int(source[i]["label"]) for i in range(len(source))]


def _save(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def _frame(value):
  return np.full((H, W), value, np.uint8)


def _gt(on):
  m = np.zeros((H, W), np.uint8)
  if on:
    m[3:9, 6:12] = 255
  return m


def _make(root):
  ped = os.path.join(root, "UCSDped1")
  for clip in (1, 2):
    for n in (1, 2, 3):
      _save(
        os.path.join(ped, "Train", f"Train{clip:03d}", f"{n:03d}.tif"),
        _frame(10 * clip + n),
      )
  for clip in (1, 2):
    for n in (1, 2, 3):
      _save(
        os.path.join(ped, "Test", f"Test{clip:03d}", f"{n:03d}.tif"),
        _frame(100 + 10 * clip + n),
      )
  for n in (1, 2, 3):
    _save(os.path.join(ped, "Test", "Test002_gt", f"{n:03d}.bmp"), _gt(n == 2))
  # The data set's own format: one line per test clip, in clip order.
  with open(os.path.join(ped, "Test", "UCSDped1.m"), "w") as f:
    f.write(
      "TestVideoFile = {};\nTestVideoFile{end+1}.gt_frame = [2:3];\n"
      "TestVideoFile{end+1}.gt_frame = [2];\n"
    )
  return ped


def test_train_frames(tmp_path):
  ped = _make(tmp_path)
  for root in (tmp_path, ped):  # The parent or UCSDped1 itself.
    src = ped1.load(root, "train", image_size=6)
    assert len(src) == 6
  rec = src[4]
  assert rec["image"].shape == (6, 6, 1) and rec["image"].dtype == np.float32
  np.testing.assert_allclose(rec["image"], 22 / 255, rtol=1e-6)
  assert rec["label"] == 0 and rec["mask"].sum() == 0
  assert rec["clip"] == 2
  assert ped1.load(ped, "train")[0]["image"].shape == (100, 100, 1)


def test_test_masked_only_by_default(tmp_path):
  _make(tmp_path)
  src = ped1.load(tmp_path, "test", image_size=(6, 9))
  assert len(src) == 3
  np.testing.assert_array_equal(_labels(src), [0, 1, 0])
  recs = [src[i] for i in range(3)]
  assert [int(r["label"]) for r in recs] == [0, 1, 0]
  assert [int(r["frame"]) for r in recs] == [1, 2, 3]
  assert {int(r["clip"]) for r in recs} == {2}
  assert all(int(r["has_mask"]) == 1 for r in recs)
  expected = np.zeros((6, 9))
  expected[1:4, 3:6] = 1  # Nearest: output row i samples input row 2i + 1.
  np.testing.assert_array_equal(recs[1]["mask"][..., 0], expected)
  assert str(recs[1]["defect_type"]) == "anomaly"
  assert str(recs[0]["defect_type"]) == "good"


def test_all_clips_with_zero_masks(tmp_path):
  _make(tmp_path)
  src = ped1.load(tmp_path, "test", image_size=6, masked_only=False)
  assert len(src) == 6
  np.testing.assert_array_equal(_labels(src), [0, 1, 1, 0, 1, 0])
  assert [int(src[i]["has_mask"]) for i in range(6)] == [0, 0, 0, 1, 1, 1]
  assert src[1]["mask"].sum() == 0 and src[4]["mask"].sum() > 0
  batch = next(
    pipeline.batches(
      src, 6, seed=0, shuffle=False, process_index=0, process_count=1
    )
  )
  assert batch["image"].shape == (6, 6, 6, 1)
  assert batch["label"].tolist() == [0, 1, 1, 0, 1, 0]


# The first lines of UCSDped1.m as the data set ships it (clips 1-6).
_REAL_LINES = """\
TestVideoFile = {};
TestVideoFile{end+1}.gt_frame = [60:152];
TestVideoFile{end+1}.gt_frame = [50:175];
TestVideoFile{end+1}.gt_frame = [91:200];
TestVideoFile{end+1}.gt_frame = [31:168];
TestVideoFile{end+1}.gt_frame = [5:90, 140:200];
TestVideoFile{end+1}.gt_frame = [1:100, 110:200];
"""


def test_parse_frame_labels_of_the_real_file(tmp_path):
  path = tmp_path / "UCSDped1.m"
  path.write_text("% frame-level ground truth\n" + _REAL_LINES)
  labels = ped1.parse_frame_labels(str(path))
  assert sorted(labels) == [1, 2, 3, 4, 5, 6]
  assert labels[1] == set(range(60, 153))  # Both ends included.
  assert labels[3] == set(range(91, 201))
  assert labels[5] == set(range(5, 91)) | set(range(140, 201))
  assert len(labels[5]) == 86 + 61 and len(labels[6]) == 100 + 91
  # Single frames, spaces, steps, empty clips, comments, CRLF line ends.
  path.write_bytes(
    b"TestVideoFile{end+1}.gt_frame = [7, 1 : 3 9:2:13];\r\n"
    b"% TestVideoFile{end+1}.gt_frame = [1:200];\r\n"
    b"TestVideoFile{end+1}.gt_frame = []; % no anomaly\r\n"
  )
  assert ped1.parse_frame_labels(str(path)) == {
    1: {1, 2, 3, 7, 9, 11, 13},
    2: set(),
  }


@pytest.mark.parametrize(
  "line",
  [
    "TestDataset{1}.gt_frame = [1:3];",  # Not the data set's form.
    "TestVideoFile{end+1}.gt_frame = [0:3];",  # Frames start at 1.
    "TestVideoFile{end+1}.gt_frame = [a:b];",
    "TestVideoFile{end+1}.gt_frame = 60:152;",
  ],
)
def test_parse_frame_labels_refuses_other_lines(tmp_path, line):
  path = tmp_path / "UCSDped1.m"
  path.write_text(_REAL_LINES + line + "\n")
  with pytest.raises(data.DataError, match="line 8 is not a frame") as info:
    ped1.parse_frame_labels(str(path))
  assert str(path) in str(info.value) and "\n" not in str(info.value)
  path.write_text("nothing here")
  with pytest.raises(data.DataError, match="no 'TestVideoFile"):
    ped1.parse_frame_labels(str(path))


def test_frame_labels_of_every_clip_from_the_real_format(tmp_path):
  ped = _make(tmp_path)
  test = os.path.join(ped, "Test")
  with open(os.path.join(test, "UCSDped1.m"), "w") as f:
    f.write(
      "TestVideoFile = {};\n"
      "TestVideoFile{end+1}.gt_frame = [1, 3:3];\n"  # Clip 1: two ranges.
      "TestVideoFile{end+1}.gt_frame = [1:3];\n"  # Clip 2: has masks.
    )
  src = ped1.load(tmp_path, "test", image_size=6, masked_only=False)
  np.testing.assert_array_equal(_labels(src), [1, 0, 1, 0, 1, 0])
  with open(os.path.join(test, "UCSDped1.m"), "w") as f:
    f.write("TestVideoFile{end+1}.gt_frame = [2:4];\n")
  msg = _raises(
    "marks frame 4 of clip 1 anomalous", tmp_path, masked_only=False
  )
  assert os.path.join(test, "Test001") in msg and "ends at frame 3" in msg
  for n in (1, 2, 3):
    _save(os.path.join(test, "Test003", f"{n:03d}.tif"), _frame(0))
  with open(os.path.join(test, "UCSDped1.m"), "w") as f:
    f.write(_REAL_LINES.splitlines()[0] + "\n")
    f.write("TestVideoFile{end+1}.gt_frame = [2:3];\n" * 2)
  _raises(
    "has 2 gt_frame lines, so none for clip 3", tmp_path, masked_only=False
  )


def _raises(match, root, split="test", **kw):
  with pytest.raises(data.DataError, match=match) as info:
    src = ped1.load(root, split, image_size=6, **kw)
    [src[i] for i in range(len(src))]
  return str(info.value)


def test_bad_input(tmp_path):
  msg = _raises("UCSD Ped1 root not found", tmp_path / "no")
  assert "UCSDped1/Train/TrainNNN/*.tif" in msg
  os.makedirs(tmp_path / "empty")
  _raises("No UCSDped1 Train/ or Test/ folder", tmp_path / "empty")
  _raises("split must be one of", tmp_path / "empty", "val")
  ped = _make(tmp_path)
  test = os.path.join(ped, "Test")
  os.remove(os.path.join(test, "Test002_gt", "003.bmp"))
  msg = _raises("has no mask", tmp_path)
  assert os.path.join(test, "Test002", "003.tif") in msg
  _save(os.path.join(test, "Test002_gt", "003.bmp"), _gt(False))
  _save(os.path.join(test, "Test002_gt", "004.bmp"), _gt(False))
  _raises("004.bmp has no image", tmp_path)
  os.remove(os.path.join(test, "Test002_gt", "004.bmp"))
  _save(os.path.join(test, "Test002_gt", "001.bmp"), np.zeros((5, 5)))
  _raises("001.bmp is 5x5", tmp_path)
  _save(os.path.join(test, "Test002_gt", "001.bmp"), _gt(False))
  _save(os.path.join(test, "Test009_gt", "001.bmp"), _gt(False))
  _raises("Test009_gt has no clip folder", tmp_path)
  os.remove(os.path.join(test, "Test009_gt", "001.bmp"))
  os.rmdir(os.path.join(test, "Test009_gt"))
  with open(os.path.join(test, "Test002", "002.tif"), "wb") as f:
    f.write(b"II*\x00 broken tiff")
  msg = _raises("Cannot read image", tmp_path)
  assert os.path.join(test, "Test002", "002.tif") in msg
  os.remove(os.path.join(test, "UCSDped1.m"))
  _raises("Cannot read the Ped1 frame annotation", tmp_path, masked_only=False)
  for n in (1, 2, 3):
    os.remove(os.path.join(test, "Test002_gt", f"{n:03d}.bmp"))
  os.rmdir(os.path.join(test, "Test002_gt"))
  _raises("masked_only=False", tmp_path)
  for n in (1, 2, 3):
    os.remove(os.path.join(ped, "Train", "Train001", f"{n:03d}.tif"))
  msg = _raises("No images", tmp_path, "train")
  assert "Train001" in msg
