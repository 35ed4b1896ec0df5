"""One attention map on screen: its colour scale, overlay and markings.

Plotting helpers of ``eval.figures``: a map ``[H, W]`` at image size is
scaled to ``[0, 1]`` (:func:`to_unit_range`, by its own maximum or a common
scale), blended over its image in the jet colour map (:func:`overlay`),
given a colour bar in map units (:func:`colorbar`), and, when it is exactly
zero everywhere (:func:`is_zero`), hatched with a "0" badge
(:func:`mark_zero`) so that it is not mistaken for a weak map.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.cm  # noqa: E402
import matplotlib.colors  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import mpl_toolkits.axes_grid1 as mpl_axes_grid  # noqa: E402
import numpy as np  # noqa: E402

CMAP = "jet"


def rgb(image: np.ndarray) -> np.ndarray:
  """``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` -> ``[H, W, 3]`` in [0, 1]."""
  image = np.asarray(image, np.float32)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(
      f"An image must be [H, W], [H, W, 1] or [H, W, 3], got {image.shape}."
    )
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.clip(image, 0.0, 1.0)


def to_unit_range(maps: np.ndarray, scale: float | None = None) -> np.ndarray:
  """Scales maps to ``[0, 1]`` for display (plotting only).

  Unlike ``vae_attn.attention.normalize`` (min-max per map, for any use),
  this can divide by a common ``scale`` so that maps stay comparable.

  Args:
    maps: ``[..., H, W]`` non-negative maps.
    scale: divide by this value and clip (a common scale keeps the maps of
      several images comparable); ``None`` min-max normalises each map (a
      constant map gives 0).

  Returns:
    float32 maps of the same shape in ``[0, 1]``.
  """
  maps = np.asarray(maps, np.float32)
  if scale is not None:
    return np.clip(maps / max(float(scale), 1e-12), 0.0, 1.0)
  lo = maps.min(axis=(-2, -1), keepdims=True)
  hi = maps.max(axis=(-2, -1), keepdims=True)
  return (maps - lo) / np.maximum(hi - lo, 1e-12)


def is_zero(maps: np.ndarray) -> np.ndarray:
  """bool ``[...]``: which maps ``[..., H, W]`` are exactly zero everywhere."""
  return ~np.asarray(maps).reshape(*np.shape(maps)[:-2], -1).any(axis=-1)


def colorbar(
  fig, ax, vmax: float, *, vmin: float = 0.0, visible: bool = True
) -> None:
  """A thin colour bar right of ``ax`` for the jet scale ``[vmin, vmax]``.

  With ``visible=False`` the same space is left empty, so that every cell
  of a grid keeps the same size.
  """
  cax = mpl_axes_grid.make_axes_locatable(ax).append_axes(
    "right", size="6%", pad=0.03
  )
  if not visible:
    cax.axis("off")
    return
  mappable = matplotlib.cm.ScalarMappable(
    matplotlib.colors.Normalize(vmin, max(vmax, vmin + 1e-12)), CMAP
  )
  bar = fig.colorbar(mappable, cax=cax)
  ticks = [vmin, vmax] if vmax > vmin else [vmin]  # A zero map: "0" only.
  bar.set_ticks(ticks)
  bar.ax.set_yticklabels([f"{t:.2g}" for t in ticks], fontsize=5)


def mark_zero(ax) -> None:
  """Hatches an all-zero map and puts a "0" badge on it."""
  ax.add_patch(
    matplotlib.patches.Rectangle(
      (0, 0),
      1,
      1,
      transform=ax.transAxes,
      fill=False,
      hatch="///",
      edgecolor="white",
      linewidth=0,
    )
  )
  ax.text(
    0.5,
    0.5,
    "0",
    transform=ax.transAxes,
    ha="center",
    va="center",
    fontsize=12,
    fontweight="bold",
    color="black",
    bbox={"boxstyle": "circle", "facecolor": "white", "alpha": 0.9},
  )


def show_map(fig, ax, image, m, *, vmax: float | None, bar: bool) -> None:
  """Overlays map ``m`` ``[H, W]`` on ``image`` scaled by ``vmax`` (``None``:
  its own maximum), with a colour bar and the all-zero mark."""
  top = float(np.max(m)) if vmax is None else float(vmax)
  ax.imshow(overlay(image, to_unit_range(m, max(top, 1e-12))))
  colorbar(fig, ax, top, visible=bar)
  if is_zero(m):
    mark_zero(ax)


def overlay(
  image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.5
) -> np.ndarray:
  """Blends a ``[0, 1]`` heat map (jet colour map) over an image.

  Args:
    image: ``[H, W]`` or ``[H, W, C]`` in ``[0, 1]``.
    heat: ``[H, W]`` in ``[0, 1]``, at the image's size.
    alpha: weight of the heat map.

  Returns:
    ``[H, W, 3]`` RGB in ``[0, 1]``.
  """
  base = rgb(image)
  heat = np.asarray(heat, np.float32)
  if heat.shape != base.shape[:2]:
    raise ValueError(
      f"The map {heat.shape} must have the image's size {base.shape[:2]}; "
      "upsample it with vae_attn.attention.upsample first."
    )
  colour = plt.get_cmap(CMAP)(np.clip(heat, 0.0, 1.0))[..., :3]
  return (1.0 - alpha) * base + alpha * colour
