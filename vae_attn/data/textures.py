"""A small textured-defect data set in the MVTec-AD layout, made offline.

Crops of the grey textures that ship inside scikit-image (`CATEGORIES`, 512
x 512), training crops from the top half of each photograph and test crops
from the bottom half with synthetic defects painted in (`DEFECTS`), written
for `vae_attn.data.mvtec.load`; a deterministic function of the seed and the
arguments. A smoke-test stand-in, not comparable with the paper's MVTec-AD
results (docs/data.md). Written by ``python -m vae_attn.data.textures --out
DIR`` or `ensure_dataset` (the trainers' default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from vae_attn.data import base

CATEGORIES = ("brick", "grass", "gravel")
VERSION = 1
_MANIFEST = "textures.json"


def load_texture(category: str) -> np.ndarray:
  """The grey photograph of ``category``: float64 ``[512, 512]`` in [0, 1].

  Raises:
    DataError: the category is unknown.
  """
  if category not in CATEGORIES:
    raise base.DataError(
      f"Unknown texture category {category!r}; choose from {CATEGORIES}."
    )
  import skimage.data  # Deferred: only the generator needs it.

  image = np.asarray(getattr(skimage.data, category)(), dtype=np.float64)
  if image.ndim == 3:
    image = image[..., :3].mean(axis=-1)
  return image / 255.0


def _crop(texture: np.ndarray, rng, size: int, half: int) -> np.ndarray:
  """A random ``size`` crop from the top (0) or bottom (1) half, flipped."""
  height, width = texture.shape  # write_dataset checks that size fits.
  top_lo = 0 if half == 0 else height // 2
  top_hi = (height // 2 if half == 0 else height) - size
  top = int(rng.integers(top_lo, top_hi + 1))
  left = int(rng.integers(0, width - size + 1))
  crop = texture[top : top + size, left : left + size]
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  return np.ascontiguousarray(crop)


def _blob(rng, size: int, min_r: float, max_r: float) -> np.ndarray:
  """A bool mask of an irregular blob (a wobbly ellipse) inside the crop."""
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
  radius = rng.uniform(min_r, max_r) * size
  centre = rng.uniform(radius + 2, size - radius - 2, size=2)
  dy, dx = rows - centre[0], cols - centre[1]
  angle = np.arctan2(dy, dx)
  wobble = 1.0
  for k in (2, 3, 5):
    wobble = wobble + rng.uniform(0.05, 0.18) * np.cos(
      k * angle + rng.uniform(0, 2 * np.pi)
    )
  aspect = rng.uniform(0.6, 1.0)
  theta = rng.uniform(0, np.pi)
  u = dx * np.cos(theta) + dy * np.sin(theta)
  v = (-dx * np.sin(theta) + dy * np.cos(theta)) / aspect
  return np.hypot(u, v) <= radius * wobble


def _scratch(image, rng, texture):
  """A thin curved stroke, much brighter or darker than the surface."""
  del texture
  size = image.shape[0]
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
  ends = rng.uniform(0.15, 0.85, size=(3, 2)) * size
  t = np.linspace(0, 1, 200)[:, None]
  curve = (1 - t) ** 2 * ends[0] + 2 * (1 - t) * t * ends[1] + t**2 * ends[2]
  dist = np.full(image.shape, np.inf)
  for y, x in curve:
    dist = np.minimum(dist, np.hypot(rows - y, cols - x))
  mask = dist <= rng.uniform(0.8, 2.0)
  value = 0.95 if image[mask].mean() < 0.5 else 0.05
  out = image.copy()
  out[mask] = value + rng.normal(0, 0.02, size=int(mask.sum()))
  return out, mask


def _stain(image, rng, texture):
  """An irregular blob whose intensity is shifted and flattened."""
  del texture
  mask = _blob(rng, image.shape[0], 0.08, 0.2)
  out = image.copy()
  mean = image[mask].mean()
  shift = 0.35 if mean < 0.5 else -0.35
  out[mask] = 0.4 * (image[mask] - mean) + mean + shift
  return out, mask


def _hole(image, rng, texture):
  """An irregular dark blob with a faint rim."""
  del texture
  mask = _blob(rng, image.shape[0], 0.06, 0.16)
  out = image.copy()
  rows, cols = np.nonzero(mask)
  out[mask] = 0.04 + rng.normal(0, 0.015, size=rows.size)
  out[mask & ~ndimage.binary_erosion(mask)] = 0.3  # The rim.
  return out, mask


def _cut(image, rng, texture):
  """A rectangle from elsewhere in the texture, turned 90 degrees, pasted."""
  size = image.shape[0]
  height = int(rng.uniform(0.15, 0.3) * size)
  width = int(rng.uniform(0.15, 0.3) * size)
  src_top = int(rng.integers(0, texture.shape[0] - width))
  src_left = int(rng.integers(0, texture.shape[1] - height))
  patch = np.rot90(
    texture[src_top : src_top + width, src_left : src_left + height]
  )
  gain = rng.choice([0.6, 1.5])
  patch = np.clip((patch - patch.mean()) * 1.4 + patch.mean() * gain, 0, 1)
  top = int(rng.integers(2, size - height - 2))
  left = int(rng.integers(2, size - width - 2))
  out = image.copy()
  out[top : top + height, left : left + width] = patch
  mask = np.zeros(image.shape, bool)
  mask[top : top + height, left : left + width] = True
  return out, mask


DEFECTS: dict[str, Callable] = {
  "scratch": _scratch,
  "stain": _stain,
  "hole": _hole,
  "cut": _cut,
}
DEFECT_TYPES = tuple(DEFECTS)


def _save(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.uint8(np.clip(np.round(image * 255), 0, 255))
  Image.fromarray(pixels).save(path, optimize=False)


def _rng(seed: int, category: str, *ids: int) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(category.encode()), *ids])


def write_dataset(
  out_dir: str | os.PathLike,
  *,
  seed: int = 0,
  categories: Sequence[str] = CATEGORIES,
  image_size: int = 128,
  num_train: int = 40,
  num_test: int = 24,
  defect_types: Sequence[str] = DEFECT_TYPES,
) -> str:
  """Writes the data set into ``out_dir`` (category folders directly inside).

  Args:
    out_dir: the root to write; returned as a str.
    seed: the seed; the same arguments always write the same files.
    categories: textures to use, from `CATEGORIES`.
    image_size: square crop size in pixels (native resolution), 16 to 256.
    num_train: good training crops per category.
    num_test: test crops per category: a third good, the rest spread evenly
      over ``defect_types`` (from `DEFECT_TYPES`).

  Raises:
    DataError: an unknown category or defect, or impossible sizes.
  """
  out_dir = os.fspath(out_dir)
  unknown = [d for d in defect_types if d not in DEFECTS]
  if unknown or not defect_types:
    raise base.DataError(
      f"Unknown defect types {unknown}; choose from {DEFECT_TYPES}."
    )
  if num_train < 1 or num_test < len(defect_types) + 1:
    raise base.DataError(
      f"Need num_train >= 1 and num_test >= {len(defect_types) + 1} (one "
      f"good and one image per defect type); got {num_train}, {num_test}."
    )
  if not 16 <= image_size <= 256:
    raise base.DataError(f"image_size must be in [16, 256], got {image_size}.")
  for category in categories:
    texture = load_texture(category)
    cat_dir = os.path.join(out_dir, category)
    num_good = max(1, num_test // 3)
    for half, split, count in ((0, "train", num_train), (1, "test", num_good)):
      for i in range(count):  # Good crops: train from the top half.
        crop = _crop(texture, _rng(seed, category, half, i), image_size, half)
        _save(os.path.join(cat_dir, split, "good", f"{i:03d}.png"), crop)
    for j in range(num_test - num_good):
      defect = defect_types[j % len(defect_types)]
      k = j // len(defect_types)
      rng = _rng(seed, category, 2, j)
      crop = _crop(texture, rng, image_size, 1)
      image, mask = DEFECTS[defect](crop, rng, texture)
      _save(os.path.join(cat_dir, "test", defect, f"{k:03d}.png"), image)
      _save(
        os.path.join(cat_dir, "ground_truth", defect, f"{k:03d}_mask.png"),
        mask.astype(np.float64),
      )
  return out_dir


def cache_dir() -> str:
  """``$VAE_ATTN_CACHE``, else ``$XDG_CACHE_HOME/vae_attn``, else
  ``~/.cache/vae_attn``."""
  if os.environ.get("VAE_ATTN_CACHE"):
    return os.path.expanduser(os.environ["VAE_ATTN_CACHE"])
  xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return os.path.join(os.path.expanduser(xdg), "vae_attn")


def ensure_dataset(
  root: str | os.PathLike | None = None,
  *,
  seed: int = 0,
  categories: Sequence[str] = CATEGORIES,
  image_size: int = 128,
  num_train: int = 40,
  num_test: int = 24,
) -> str:
  """Writes the data set once under ``root`` (default `cache_dir`), in its
  own folder per combination of the options (as in `write_dataset`), and
  returns that folder. A temporary folder renamed into place when complete,
  so a killed write never leaves a half data set.
  """
  options = dict(
    seed=seed,
    categories=list(categories),
    image_size=image_size,
    num_train=num_train,
    num_test=num_test,
  )
  params = {"version": VERSION, **options}
  digest = hashlib.sha256(
    json.dumps(params, sort_keys=True).encode()
  ).hexdigest()[:10]
  parent = os.fspath(root) if root is not None else cache_dir()
  final = os.path.join(parent, f"textures-v{VERSION}-seed{seed}-{digest}")
  if os.path.isfile(os.path.join(final, _MANIFEST)):
    return final
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".textures-tmp-", dir=parent)
  except OSError as e:
    raise base.DataError(
      f"Cannot write the textured-defect data set under {parent}: {e}. Set "
      "$VAE_ATTN_CACHE to a writable folder."
    ) from e
  try:
    write_dataset(tmp, **options)
    with open(os.path.join(tmp, _MANIFEST), "w") as f:
      json.dump(params, f, indent=2)
    try:
      os.rename(tmp, final)
    except OSError:
      if not os.path.isfile(os.path.join(final, _MANIFEST)):
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return final


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m vae_attn.data.textures --out DIR``; returns the exit status,
  0 or 2 after one ``error:`` line (a bad option, an unwritable folder)."""
  parser = argparse.ArgumentParser(
    prog="python -m vae_attn.data.textures",
    description=__doc__.splitlines()[0],
    allow_abbrev=False,
  )
  parser.add_argument("--out", required=True, help="folder to write")
  parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
  parser.add_argument(
    "--categories",
    default=",".join(CATEGORIES),
    help="categories to write, comma-separated (default: all)",
  )
  for name, default, what in (
    ("image-size", 128, "image side in pixels"),
    ("num-train", 40, "normal training images per category"),
    ("num-test", 24, "test images per category"),
  ):
    parser.add_argument(
      f"--{name}",
      f"--{name.replace('-', '_')}",
      type=int,
      default=default,
      help=f"{what} (default {default})",
    )
  args = vars(parser.parse_args(argv))
  args["categories"] = [c for c in args["categories"].split(",") if c]
  try:
    out = write_dataset(args.pop("out"), **args)
  except (ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"Wrote the textured-defect data set to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
