"""Test images of a run's own data, for ``eval.explain``'s figures.

The run spec (``workflow.runs.RunSpec.data``) names the data set: dSprites
(procedural, npz or tfds), digits or MNIST (one image per digit, the normal
digit first), or an image-and-mask set (textures, MVTec-AD, Ped1, a custom
folder; defective images first). A random model without a spec gets the
offline data of its architecture (:data:`DEMO_DATA`).
"""

from __future__ import annotations

import jax
import numpy as np

from eval import localization as data_lib
from eval import restore
from vae_attn.data import digits, dsprites, mnist

# The demo data of a random model (no run spec), by architecture.
DEMO_DATA = {
  "factorvae": "procedural",
  "mnist": "digits",
  "resnet18": "textures",
  "ped1": "textures",
}


def _pick_digits(source, num: int, normal_digit) -> tuple[np.ndarray, list]:
  """One test image per digit, the normal digit first."""
  labels = np.asarray(source.get_batch(np.arange(len(source)))["label"])
  first = int(normal_digit) if normal_digit is not None else 0
  order = [(first + d) % 10 for d in range(10)]
  idx = [int(np.flatnonzero(labels == d)[0]) for d in order if d in labels]
  idx = idx[:num]
  x = np.asarray(source.get_batch(np.asarray(idx))["image"])
  return x, [f"digit {int(labels[i])}" for i in idx]


def _pick_defects_first(source, num: int) -> tuple[np.ndarray, list]:
  """Defective test images first, one of each defect type in turn, then
  normal ones."""
  records = [source[i] for i in range(len(source))]
  # Anomalous images without a defect type count as normal ones.
  kinds = [
    str(r.get("defect_type", "")) if int(r["label"]) else "" for r in records
  ]
  defective = [i for i, kind in enumerate(kinds) if kind]
  normal = [i for i, kind in enumerate(kinds) if not kind]
  types = [kinds[i] for i in defective]
  picked = [defective[i] for i in data_lib.in_turn(types, num)]
  picked += normal[: num - len(picked)]
  x = np.stack([records[i]["image"] for i in picked])
  names = [str(records[i].get("defect_type", "")) or "image" for i in picked]
  return x, names


def _demo_records(run: restore.Run, data: str, num: int, seed: int):
  """``(images, names)`` of ``num`` test images of data set ``data``."""
  spec = run.spec
  kwargs = dict(spec.data_kwargs) if spec is not None else {}
  data_dir = (spec.data_dir if spec is not None else "") or None
  rng = np.random.RandomState(seed)
  if data in ("procedural", "npz"):
    gt = dsprites.load_npz(data_dir) if data == "npz" else dsprites.procedural()
    x = gt.sample_observations(num, rng)
    return x, [f"dSprites {i}" for i in range(len(x))]
  if data == "tfds":
    source = dsprites.load_tfds(data_dir=data_dir)
    idx = rng.choice(len(source), size=min(num, len(source)), replace=False)
    x = np.stack([source[int(i)]["image"] for i in idx])
    return x, [f"dSprites {int(i)}" for i in idx]
  if data in ("digits", "mnist"):
    digit = kwargs.get("normal_digit")
    if data == "digits":
      source = digits.load("test", normal_digit=digit)
    else:
      source = mnist.load("test", normal_digit=digit, data_dir=data_dir)
    return _pick_digits(source, num, digit)
  options = data_lib.data_options(spec if spec else None, dataset=data)
  test, _, _ = data_lib.load_splits(options, run.input_shape[:2])
  return _pick_defects_first(test, num)


def demo_images(
  run: restore.Run, num: int, seed: int
) -> tuple[np.ndarray, list[str], str]:
  """``num`` test images of the run's own data at its input shape.

  Args:
    run: a restored run (its spec names the data) or a random model.
    num: how many images.
    seed: picks the dSprites images.

  Returns:
    ``(x, names, data)``: float32 images ``[N, H, W, C]`` in [0, 1], a
    caption for each and the data set they come from.

  Raises:
    vae_attn.data.DataError: the run's data cannot be read (the message
      names the folder and the fix).
  """
  h, w, c = run.input_shape
  data = run.spec.data if run.spec is not None else DEMO_DATA[run.name]
  x, names = _demo_records(run, data, num, seed)
  x = data_lib.to_channels(np.asarray(x, np.float32), c)
  if x.shape[1:3] != (h, w):
    x = np.asarray(jax.image.resize(x, (len(x), h, w, c), "linear"))
  return x.astype(np.float32), names, data
