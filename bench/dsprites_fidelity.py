"""Fidelity of the procedural dSprites to the real images, and its fit.

Run by hand from the repository root (never by pytest):

  python -m bench.dsprites_fidelity          # measure the renderer (seconds)
  python -m bench.dsprites_fidelity --fit    # re-derive its geometry first
  python -m bench.dsprites_fidelity --speed  # + images/s of the renderer

The reference is ``tests/data/dsprites_real_frames.npz``: 160 real frames of
the data set with their factor classes (see the README beside it). Half A
holds every second frame of each shape (the 1st, 3rd, ...), half B the
others. ``--fit`` derives the conventions and sizes from the frames alone
(grid searches that minimise the number of differing pixels over half A)
and reports the differing pixels per frame, as (median, max) per shape, on
both halves; then it prints the same figures for ``dsprites.render`` on
half A, half B and all frames. The renderer's constants are the fit's,
rounded (the constants of ``vae_attn/data/dsprites.py``).

The fit's model, in pixel-centre coordinates (pixel (row, col) at (col,
row)): a sprite is centred at ``c0 + step * class`` in x and y, turned by
``orientation * dtheta`` counter-clockwise on screen, its size proportional
to the scale value; a pixel is on when its centre lies in the shape.
Square: half side ``h``. Ellipse: semi-axes ``(a, b)``. Heart: the curve
``x = 16 sin^3 t``, ``y = 13 cos t - 5 cos 2t - 2 cos 3t - cos 4t`` scaled
by ``(sx, sy)`` and raised by ``dy`` (all in pixels at scale 1).
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import time

import numpy as np

from vae_attn.data import dsprites

FRAMES = (
  pathlib.Path(__file__).resolve().parents[1]
  / "tests"
  / "data"
  / "dsprites_real_frames.npz"
)
_WINDOW = 28  # pixels around the sprite centre that the fit looks at.


def load_frames(path=FRAMES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Real frames: images bool [N, 64, 64], classes int64 [N, 5], half A [N]."""
  with np.load(path) as npz:
    images = npz["images"].astype(bool)
    classes = npz["factor_classes"].astype(np.int64)
  half_a = np.zeros(len(classes), bool)
  for shape in range(3):
    (rows,) = np.nonzero(classes[:, 0] == shape)
    half_a[rows[::2]] = True
  return images, classes, half_a


def figures(diff: np.ndarray, classes: np.ndarray, mask=None) -> str:
  """'square (median, max) ...' of differing pixels per frame."""
  out = []
  for shape, name in enumerate(dsprites.SHAPE_NAMES):
    sel = classes[:, 0] == shape
    if mask is not None:
      sel &= mask
    out.append(f"{name} ({np.median(diff[sel]):g}, {diff[sel].max()})")
  return ", ".join(out)


class Frames:
  """Pixel centres of each frame's window in its sprite's scale-1 frame."""

  def __init__(self, images, classes, c0=15.5, step=32 / 31, dtheta=None):
    dtheta = 2 * np.pi / 39 if dtheta is None else dtheta
    self.classes = classes
    cx = c0 + step * classes[:, 3]
    cy = c0 + step * classes[:, 4]
    start = np.floor(np.stack([cy, cx], 1)).astype(int) - _WINDOW // 2 + 1
    grid = np.arange(_WINDOW)
    rows = start[:, :1] + grid  # [N, W]
    cols = start[:, 1:] + grid
    n = np.arange(len(classes))[:, None, None]
    self.labels = images[n, rows[:, :, None], cols[:, None, :]]
    if self.labels.sum() != images.sum():
      raise ValueError("a sprite reaches outside the fit's window")
    x = cols[:, None, :] - cx[:, None, None]
    y = -(rows[:, :, None] - cy[:, None, None])  # up on screen
    theta = (dtheta * classes[:, 2])[:, None, None]
    scale = dsprites.SCALE_VALUES[classes[:, 1]][:, None, None]
    # Turning the shape by +theta = turning the pixel centres by -theta.
    self.u = (np.cos(theta) * x + np.sin(theta) * y) / scale
    self.v = (-np.sin(theta) * x + np.cos(theta) * y) / scale

  def diff(self, inside: np.ndarray) -> np.ndarray:
    return (inside != self.labels).sum(axis=(1, 2))


def square(u, v, h):
  return np.maximum(np.abs(u), np.abs(v)) <= h


def ellipse(u, v, a, b):
  return (u / a) ** 2 + (v / b) ** 2 <= 1


def heart(u, v, sx, sy, dy):
  """Inside the curve: at |x| = 16 sx sin^3 t, y spans [y(pi - t), y(t)]."""
  x = np.abs(u) / (16 * sx)
  y = (v - dy) / sy
  c = np.sqrt(np.maximum(1 - np.cbrt(np.minimum(x, 1)) ** 2, 0))  # cos t
  even = (-8 * c**2 - 2) * c**2 + 4  # y(t) = even + odd, y(pi - t) = even - odd
  odd = (19 - 8 * c**2) * c
  return (x <= 1) & (y <= even + odd) & (y >= even - odd)


def grid_search(frames: Frames, mask, inside_fn, axes) -> tuple:
  """The grid point with the fewest differing pixels over ``mask``."""
  u, v = frames.u[mask], frames.v[mask]
  labels = frames.labels[mask]
  best, best_params = None, None
  for params in itertools.product(*axes):
    d = (inside_fn(u, v, *params) != labels).sum(axis=(1, 2))
    key = (d.sum(), d.max())
    if best is None or key < best:
      best, best_params = key, params
  return best_params


def refine(frames, mask, inside_fn, coarse, fine_steps, spans):
  """A coarse grid, then a fine one around its best point."""
  params = grid_search(frames, mask, inside_fn, coarse)
  axes = [
    p + step * np.arange(-span, span + 1)
    for p, step, span in zip(params, fine_steps, spans, strict=True)
  ]
  return grid_search(frames, mask, inside_fn, axes)


def fit(images, classes, half_a) -> None:
  """Derives the renderer's geometry from half A; prints both halves."""
  # Position: the heart translations, one class at a time, at orientation 0.
  moving = (classes[:, 0] == 2) & (classes[:, 1] == 5) & (classes[:, 2] == 0)
  for axis, name in ((3, "posX"), (4, "posY")):
    image_axis = 1 if axis == 3 else 0  # posX moves columns, posY rows.
    centroid = np.array(
      [np.nonzero(images[i])[image_axis].mean() for i in np.nonzero(moving)[0]]
    )
    slope, _ = np.polyfit(classes[moving, axis], centroid, 1)
    print(f"{name}: centroid moves {slope:.4f} px per class (32/31 = 1.0323)")
  flat = (classes[:, 0] < 2) & (classes[:, 2] == 0)  # square, ellipse.
  centres = [
    (np.nonzero(images[i])[0].mean(), np.nonzero(images[i])[1].mean())
    for i in np.nonzero(flat)[0]
  ]
  print(
    "square and ellipse at orientation 0, position 0: centre (row, col) "
    f"{np.mean(centres, axis=0).round(3).tolist()}, spread "
    f"{np.ptp(centres, axis=0).tolist()}"
  )
  # Orientation convention and square size together.
  for dtheta, sign, name in (
    (2 * np.pi / 39, 1, "2 pi / 39 per class, counter-clockwise"),
    (2 * np.pi / 39, -1, "2 pi / 39 per class, clockwise"),
    (2 * np.pi / 40, 1, "2 pi / 40 per class, counter-clockwise"),
  ):
    frames = Frames(images, classes, dtheta=sign * dtheta)
    sel = half_a & (classes[:, 0] == 0)
    (h,) = refine(frames, sel, square, [np.arange(8.0, 11.0, 0.1)], [0.01], [9])
    d = frames.diff(square(frames.u, frames.v, h))[classes[:, 0] == 0]
    print(
      f"orientation {name}: square half side {h:.2f} px, differing "
      f"pixels (median, max) ({np.median(d):g}, {d.max()})"
    )
  frames = Frames(images, classes)
  fits = {
    0: refine(
      frames,
      half_a & (classes[:, 0] == 0),
      square,
      [np.arange(8.0, 11.0, 0.1)],
      [0.01],
      [9],
    ),
    1: refine(
      frames,
      half_a & (classes[:, 0] == 1),
      ellipse,
      [np.arange(11.0, 14.0, 0.1), np.arange(6.0, 8.5, 0.1)],
      [0.01, 0.01],
      [9, 9],
    ),
    2: refine(
      frames,
      half_a & (classes[:, 0] == 2),
      heart,
      [
        np.arange(0.50, 0.701, 0.02),
        np.arange(0.50, 0.701, 0.02),
        np.arange(0.0, 3.01, 0.25),
      ],
      [0.005, 0.005, 0.05],
      [4, 4, 5],
    ),
  }
  diff = np.zeros(len(classes), np.int64)
  for shape, fn in enumerate((square, ellipse, heart)):
    sel = classes[:, 0] == shape
    inside = fn(frames.u[sel], frames.v[sel], *fits[shape])
    diff[sel] = (inside != frames.labels[sel]).sum(axis=(1, 2))
  names = ("half side", "semi-axes", "(sx, sy, dy)")
  for shape, name in enumerate(names):
    values = ", ".join(f"{p:.3f}" for p in fits[shape])
    print(f"fit {dsprites.SHAPE_NAMES[shape]} {name}: {values} px at scale 1")
  print(f"fit, half A (fitted on): {figures(diff, classes, half_a)}")
  print(f"fit, half B (held out):  {figures(diff, classes, ~half_a)}")


def speed(num: int = 65536) -> None:
  """Images/s of ``ProceduralDSprites.render`` (float32 and uint8)."""
  data = dsprites.procedural()
  rng = np.random.default_rng(0)
  factors = data.sample_factors(num, rng)
  data.render(factors[:1024])  # Compile.
  data.render(factors[:1024], dtype=np.uint8)
  for dtype in (np.float32, np.uint8):
    start = time.perf_counter()
    data.render(factors, dtype=dtype)
    seconds = time.perf_counter() - start
    print(
      f"ProceduralDSprites.render, {num:,} random images as "
      f"{np.dtype(dtype).name}: {seconds:.2f} s, {num / seconds:,.0f} "
      f"images/s (load average {os.getloadavg()[0]:.1f})"
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fit", action="store_true", help="refit first")
  parser.add_argument("--speed", action="store_true", help="time render")
  args = parser.parse_args()
  images, classes, half_a = load_frames()
  if args.fit:
    start = time.perf_counter()
    fit(images, classes, half_a)
    print(f"fit: {time.perf_counter() - start:.1f} s")
  rendered = dsprites.procedural().render(classes)[..., 0].astype(bool)
  diff = (rendered != images).sum(axis=(1, 2))
  print("dsprites.render vs the real frames, differing pixels (median, max):")
  print(f"  half A: {figures(diff, classes, half_a)}")
  print(f"  half B: {figures(diff, classes, ~half_a)}")
  print(f"  all {len(classes)}: {figures(diff, classes)}")
  if args.speed:
    speed()


if __name__ == "__main__":
  main()
