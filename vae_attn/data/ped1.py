"""UCSD Ped1 (Mahadevan et al., CVPR 2010) from its folder layout (`LAYOUT`).

Frames (158 x 238 grey) and masks are read by the rules of
`vae_attn.data.images`; a frame's mask is the ``.bmp`` of its stem in
``TestNNN_gt``. By default (``masked_only=True``) the test split holds only
the clips with pixel masks, a frame's label 1 when its mask is not empty.
With ``masked_only=False`` all 36 test clips enter; clips without masks get
all-zero ones with ``"has_mask" = 0`` and frame labels from
``Test/UCSDped1.m`` (`parse_frame_labels`). docs/data.md compares the two.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

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
  return range(bounds[0], bounds[-1] + 1, bounds[1] if len(bounds) == 3 else 1)


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


def _frame_number(path: str) -> int:
  digits = re.findall(r"\d+", images.stem(path))
  if not digits:
    raise base.DataError(
      f"Frame {path} has no frame number in its name (expected e.g. 001.tif)."
    )
  return int(digits[-1])


def _entries(
  root: str | os.PathLike, split: str, masked_only: bool
) -> list[image_mask.Entry]:
  """The `image_mask.Entry` of every frame of the split, checked."""
  image_mask.check_split(split, "Ped1")
  prefix = split.capitalize()
  split_dir = image_mask.require_dir(
    os.path.join(_find_root(root), prefix), f"Ped1 {prefix} folder", LAYOUT
  )
  folders = image_mask.subfolders(split_dir)
  clips = [d for d in folders if re.match(rf"^{prefix}\d+$", d)]
  if not clips:
    raise base.DataError(
      f"No {prefix}NNN clip folders in {split_dir}. Expected layout:\n{LAYOUT}"
    )

  def frames(clip):
    return image_mask.require_images(os.path.join(split_dir, clip), LAYOUT)

  if split == "train":
    normal = image_mask.NORMAL
    return [
      image_mask.Entry(f, None, 0, normal, extra=(("clip", int(clip[5:])),))
      for clip in clips
      for f in frames(clip)
    ]
  gt_names = {d[: -len("_gt")] for d in folders if d.endswith("_gt")}
  orphans = sorted(
    n for n in gt_names if n not in clips and n.startswith(prefix)
  )
  if orphans:
    raise base.DataError(
      f"Mask folder {os.path.join(split_dir, orphans[0] + '_gt')} has no "
      f"clip folder {os.path.join(split_dir, orphans[0])}. Add the frames "
      "or remove the masks."
    )
  masked = [c for c in clips if c in gt_names]
  if masked_only and not masked:
    raise base.DataError(
      f"No TestNNN_gt mask folders in {split_dir}, so no clip has pixel "
      "masks. Restore them, or pass masked_only=False to use every clip "
      "with frame labels from UCSDped1.m."
    )
  labels_file = os.path.join(split_dir, "UCSDped1.m")
  frame_labels = {}
  if not masked_only and len(masked) < len(clips):
    frame_labels = parse_frame_labels(labels_file)
  out = []
  for clip in masked if masked_only else clips:
    clip_id, files = int(clip[len(prefix) :]), frames(clip)
    if clip in gt_names:  # Pixel masks; each frame labelled by its mask.
      masks = image_mask.pair_masks(
        files,
        os.path.join(split_dir, clip + "_gt"),
        suffixes=("",),
        layout=LAYOUT,
      )
      out += [
        image_mask.Entry(
          f,
          m,
          -1,
          "anomaly",
          extra=(("clip", clip_id), ("frame", _frame_number(f))),
        )
        for f, m in zip(files, masks, strict=True)
      ]
      continue
    anomalous = frame_labels.get(clip_id)  # Frame labels from UCSDped1.m.
    if anomalous is None:
      raise base.DataError(
        f"{labels_file} has {len(frame_labels)} gt_frame lines, so none "
        f"for clip {clip_id} ({clip}). Restore the original file or use "
        "masked_only=True."
      )
    numbers = [_frame_number(f) for f in files]
    if anomalous and max(anomalous) > max(numbers):
      raise base.DataError(
        f"{labels_file} marks frame {max(anomalous)} of clip {clip_id} "
        f"anomalous, but {os.path.join(split_dir, clip)} ends at frame "
        f"{max(numbers)}. Restore the UCSDped1.m of this data set or the "
        "missing frames, or use masked_only=True."
      )
    out += [
      image_mask.Entry(
        f,
        None,
        int(n in anomalous),
        "anomaly" if n in anomalous else image_mask.NORMAL,
        has_mask=False,
        extra=(("clip", clip_id), ("frame", n)),
      )
      for f, n in zip(files, numbers, strict=True)
    ]
  return out


def load(
  root: str | os.PathLike,
  split: str,
  *,
  image_size: int | Sequence[int] = 100,
  masked_only: bool = True,
) -> image_mask.ImageMaskSource:
  """Loads UCSD Ped1 frames (see the module docstring for the two modes).

  Records: those of `image_mask.ImageMaskSource`, ``"image"`` ``[S, S, 1]``,
  plus ``"clip"`` and (test) ``"frame"``; ``"defect_type"`` "good" or
  "anomaly". Frames without a mask are checked when first read.

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
  return image_mask.ImageMaskSource(
    _entries(root, split, masked_only),
    image_size=size,
    name=f"ped1/{split}",
    channels=1,
    check_images=False,
  )
