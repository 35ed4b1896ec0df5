"""UCSD Ped1 (Mahadevan et al., CVPR 2010) from its folder layout.

Layout (as ``UCSD_Anomaly_Dataset.v1p2`` unpacks)::

  UCSDped1/Train/Train001/001.tif ... 200.tif     (34 clips, normal)
  UCSDped1/Test/Test001/001.tif ...               (36 clips)
  UCSDped1/Test/Test003_gt/001.bmp ...            (pixel masks, some clips)
  UCSDped1/Test/UCSDped1.m                        (frame-level annotation)

``root`` is ``UCSDped1`` itself or the folder that contains it. Frames (158
x 238 grey) and masks are read by the rules of `vae_attn.data.images`; a
frame's mask is the ``.bmp`` of its stem in ``TestNNN_gt``.

By default (``masked_only=True``) the test split holds only the clips with
pixel masks, a frame's label 1 when its mask is not empty. With
``masked_only=False`` all 36 test clips enter; clips without masks get
all-zero ones with ``"has_mask" = 0`` and frame labels from
``Test/UCSDped1.m`` (`parse_frame_labels`). docs/data.md compares the two.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from vae_attn.data import base, image_mask, images

LAYOUT = """\
  <root>/UCSDped1/Train/TrainNNN/*.tif
  <root>/UCSDped1/Test/TestNNN/*.tif
  <root>/UCSDped1/Test/TestNNN_gt/*.bmp   (pixel masks, some clips)
  <root>/UCSDped1/Test/UCSDped1.m         (frame labels, for masked_only=False)
Download UCSD_Anomaly_Dataset.tar.gz from
http://www.svcl.ucsd.edu/projects/anomaly/dataset.htm, unpack it and pass
UCSD_Anomaly_Dataset.v1p2 (or its UCSDped1 folder) as root."""

# One line of UCSDped1.m per test clip, in clip order (MATLAB appends with
# end+1): ``TestVideoFile{end+1}.gt_frame = [60:152];``.
_GT_LINE = re.compile(
  r"^TestVideoFile\s*\{\s*end\s*\+\s*1\s*\}\s*\.\s*gt_frame\s*=\s*"
  r"\[([^\]]*)\]\s*;?$"
)
_GT_EXAMPLE = "TestVideoFile{end+1}.gt_frame = [60:152];"


def _find_root(root: str | os.PathLike) -> str:
  """The ``UCSDped1`` folder: ``root`` itself or ``root/UCSDped1``."""
  root = os.fspath(root)
  image_mask.require_dir(root, "UCSD Ped1 root", LAYOUT)
  for candidate in (os.path.join(root, "UCSDped1"), root):
    if os.path.isdir(os.path.join(candidate, "Train")) or os.path.isdir(
      os.path.join(candidate, "Test")
    ):
      return candidate
  raise base.DataError(
    f"No UCSDped1 Train/ or Test/ folder in {root}. Expected layout:\n{LAYOUT}"
  )


def _matlab_range(part: str) -> range:
  """A MATLAB colon expression of positive ints: ``a``, ``a:b``, ``a:s:b``."""
  bounds = [int(b) for b in part.split(":")]  # ValueError if not ints.
  if not 1 <= len(bounds) <= 3 or min(bounds) < 1:
    raise ValueError(part)
  if len(bounds) == 1:
    return range(bounds[0], bounds[0] + 1)
  step = bounds[1] if len(bounds) == 3 else 1
  return range(bounds[0], bounds[-1] + 1, step)


def parse_frame_labels(path: str) -> dict[int, set[int]]:
  """Reads ``UCSDped1.m``: clip number -> its anomalous frame numbers.

  The ``k``-th line ``TestVideoFile{end+1}.gt_frame = [5:90, 140:200];``
  gives the frames of clip ``k`` (``TestKKK``): MATLAB ranges ``a:b`` (both
  ends, from 1) or single frames, separated by commas or spaces. Comments
  (``%``) and other lines are skipped.

  Returns:
    ``{clip: {frame, ...}}`` for clips 1..K, K the number of such lines.

  Raises:
    DataError: the file is missing, has no such line, or a ``gt_frame`` line
      is not of that form.
  """
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise base.DataError(
      f"Cannot read the Ped1 frame annotation {path}: {e}. It ships with the "
      "data set (UCSDped1/Test/UCSDped1.m); restore it, or use "
      "masked_only=True."
    ) from e
  labels: dict[int, set[int]] = {}
  for number, line in enumerate(lines, start=1):
    line = line.split("%", 1)[0].strip()
    if "gt_frame" not in line:
      continue
    match = _GT_LINE.match(line)
    ranges = re.sub(r"\s*:\s*", ":", match[1].strip()) if match else ""
    parts = re.split(r"[,\s]+", ranges)
    try:
      frames = {n for part in parts if part for n in _matlab_range(part)}
    except ValueError:
      match = None
    if match is None:
      raise base.DataError(
        f"{path} line {number} is not a frame annotation of the form "
        f"{_GT_EXAMPLE!r} (frame ranges a:b from 1, separated by commas): "
        f"{line!r}. Restore the original UCSDped1.m or use masked_only=True."
      )
    labels[len(labels) + 1] = frames
  if not labels:
    raise base.DataError(
      f"{path} has no {_GT_EXAMPLE!r} lines. Restore the original "
      "UCSDped1.m or use masked_only=True."
    )
  return labels


def _clips(folder: str, prefix: str) -> list[str]:
  pattern = re.compile(rf"^{prefix}\d+$")
  return [d for d in image_mask.subfolders(folder) if pattern.match(d)]


def _frame_number(path: str) -> int:
  digits = re.findall(r"\d+", images.stem(path))
  if not digits:
    raise base.DataError(
      f"Frame {path} has no frame number in its name (expected e.g. 001.tif)."
    )
  return int(digits[-1])


def _entries(
  root: str | os.PathLike, split: str, *, masked_only: bool = True
) -> list[image_mask.Entry]:
  """The `image_mask.Entry` of every frame of the split, checked."""
  split_dir, prefix, clips = _split_clips(root, split)
  if split == "train":
    return _train_entries(split_dir, clips)
  gt_names = _mask_folders(split_dir, prefix, clips)
  masked = [c for c in clips if c in gt_names]
  if masked_only and not masked:
    raise base.DataError(
      f"No TestNNN_gt mask folders in {split_dir}, so no clip has pixel "
      "masks. Restore them, or pass masked_only=False to use every clip "
      "with frame labels from UCSDped1.m."
    )
  frame_labels = None
  labels_file = os.path.join(split_dir, "UCSDped1.m")
  if not masked_only and len(masked) < len(clips):
    frame_labels = parse_frame_labels(labels_file)
  out = []
  for clip in masked if masked_only else clips:
    clip_id = int(clip[len(prefix) :])
    frames = image_mask.require_images(os.path.join(split_dir, clip), LAYOUT)
    if clip in gt_names:
      out += _masked_clip_entries(split_dir, clip, clip_id, frames)
    else:
      out += _labelled_clip_entries(
        split_dir, clip, clip_id, frames, frame_labels, labels_file
      )
  return out


def _split_clips(
  root: str | os.PathLike, split: str
) -> tuple[str, str, list[str]]:
  """The split's folder, its clip prefix and its clip folders (non-empty)."""
  image_mask.check_split(split, "Ped1")
  base_dir = _find_root(root)
  split_dir = image_mask.require_dir(
    os.path.join(base_dir, split.capitalize()),
    f"Ped1 {split.capitalize()} folder",
    LAYOUT,
  )
  prefix = split.capitalize()
  clips = _clips(split_dir, prefix)
  if not clips:
    raise base.DataError(
      f"No {prefix}NNN clip folders in {split_dir}. Expected layout:\n{LAYOUT}"
    )
  return split_dir, prefix, clips


def _train_entries(split_dir: str, clips: list[str]) -> list[image_mask.Entry]:
  """Every frame of the training clips, all normal."""
  return [
    image_mask.Entry(
      f, None, 0, image_mask.NORMAL, extra=(("clip", int(clip[5:])),)
    )
    for clip in clips
    for f in image_mask.require_images(os.path.join(split_dir, clip), LAYOUT)
  ]


def _mask_folders(split_dir: str, prefix: str, clips: list[str]) -> set[str]:
  """The clips that have a ``_gt`` mask folder; a mask folder needs its clip."""
  gt_names = {
    d[: -len("_gt")]
    for d in image_mask.subfolders(split_dir)
    if d.endswith("_gt")
  }
  orphan_gt = sorted(
    n for n in gt_names if n not in clips and n.startswith(prefix)
  )
  if orphan_gt:
    raise base.DataError(
      f"Mask folder {os.path.join(split_dir, orphan_gt[0] + '_gt')} has no "
      f"clip folder {os.path.join(split_dir, orphan_gt[0])}. Add the frames "
      "or remove the masks."
    )
  return gt_names


def _masked_clip_entries(
  split_dir: str, clip: str, clip_id: int, frames: list[str]
) -> list[image_mask.Entry]:
  """A test clip with pixel masks: each frame paired with its mask."""
  masks = image_mask.pair_masks(
    frames,
    os.path.join(split_dir, clip + "_gt"),
    suffixes=("",),
    layout=LAYOUT,
  )
  # The label is read from the mask itself when the entry is decoded.
  return [
    image_mask.Entry(
      f,
      m,
      -1,
      "anomaly",
      extra=(("clip", clip_id), ("frame", _frame_number(f))),
    )
    for f, m in zip(frames, masks, strict=True)
  ]


def _labelled_clip_entries(
  split_dir: str,
  clip: str,
  clip_id: int,
  frames: list[str],
  frame_labels: dict[int, set[int]],
  labels_file: str,
) -> list[image_mask.Entry]:
  """A test clip without masks: frame labels from ``UCSDped1.m``."""
  anomalous = frame_labels.get(clip_id)
  if anomalous is None:
    raise base.DataError(
      f"{labels_file} has {len(frame_labels)} gt_frame lines, so none "
      f"for clip {clip_id} ({clip}). Restore the original file or use "
      "masked_only=True."
    )
  numbers = [_frame_number(f) for f in frames]
  if anomalous and max(anomalous) > max(numbers):
    raise base.DataError(
      f"{labels_file} marks frame {max(anomalous)} of clip {clip_id} "
      f"anomalous, but {os.path.join(split_dir, clip)} ends at frame "
      f"{max(numbers)}. Restore the UCSDped1.m of this data set or the "
      "missing frames, or use masked_only=True."
    )
  return [
    image_mask.Entry(
      f,
      None,
      int(n in anomalous),
      "anomaly" if n in anomalous else image_mask.NORMAL,
      has_mask=False,
      extra=(("clip", clip_id), ("frame", n)),
    )
    for f, n in zip(frames, numbers, strict=True)
  ]


class Ped1Source(image_mask.ImageMaskSource):
  """UCSD Ped1 frames; a masked frame's label is 1 iff its mask is not empty.

  Records: those of `image_mask.ImageMaskSource`, ``"image"`` ``[S, S, 1]``,
  plus ``"clip"`` and (test) ``"frame"``; ``"defect_type"`` is "good" or
  "anomaly". Frames are checked when first read.
  """

  def __getitem__(self, index: int) -> base.Record:
    record = super().__getitem__(index)
    if int(record["label"]) == -1:  # A masked frame: labelled by its mask.
      anomalous = bool(record["mask"].any())
      record["label"] = np.int32(anomalous)
      record["defect_type"] = np.array("anomaly" if anomalous else "good")
    return record


def load(
  root: str | os.PathLike,
  split: str,
  *,
  image_size: int | Sequence[int] = 100,
  masked_only: bool = True,
) -> Ped1Source:
  """Loads UCSD Ped1 frames (see the module docstring for the two modes).

  Args:
    root: ``UCSDped1`` or the folder that contains it.
    split: "train" (all 34 clips, normal) or "test".
    image_size: output size, an int or ``(height, width)``; paper: 100.
    masked_only: test on the clips with pixel masks only, or on every clip
      (see the module docstring).

  Raises:
    DataError: the layout is missing or inconsistent, a frame or mask is
      unreadable, or a mask's size differs from its frame's.
  """
  size = images.check_image_size(image_size)
  found = _entries(root, split, masked_only=masked_only)
  image_mask.check_mask_files(found)
  return Ped1Source(found, image_size=size, channels=1, name=f"ped1/{split}")
