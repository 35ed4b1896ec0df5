"""Figures: attention maps, overlays, ROC curves, traversals, scalar curves.

The drawing functions take NumPy arrays (images NHWC in ``[0, 1]``, maps
``[..., H, W]`` at image size unless said otherwise), write one PNG with
matplotlib's object API (no pyplot: nothing process-wide changes, whatever
backend the caller uses) and return its path. ``attention_grid`` (through
``attention_figure`` from a model's maps) is the one way every tool
(``eval.explain``, ``eval.disentanglement``, ``train``'s run report) draws
attention maps: overlays on the image, one stated colour scale, a label on
every row and column, text of at least 8 points at the saved 100 dpi.
``top_latent_figure`` and ``traversal_figure`` run the model first.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.cm
import matplotlib.colors
import matplotlib.figure
import matplotlib.patches
import numpy as np

from vae_attn import attention as attention_lib
from vae_attn import losses

_CELL = 1.6  # Inches per image cell.
# One colour scale per figure, per image (row) or per map.
SCALES = ("figure", "image", "map")
_FONT = 8  # Points: 11 pixels at the saved 100 dpi.
CMAP = "jet"


# Drawing one map: colour map, scale, colour bar, the all-zero mark.


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


def is_zero(maps: np.ndarray) -> np.ndarray:
  """bool ``[...]``: which maps ``[..., H, W]`` are exactly zero everywhere."""
  return ~np.asarray(maps).reshape(*np.shape(maps)[:-2], -1).any(axis=-1)


def colorbar(fig, ax, vmax: float) -> None:
  """A thin colour bar right of ``ax`` for the jet scale ``[0, vmax]``, an
  inset that leaves the size of ``ax`` as it is (cells of a grid stay
  alike with or without one)."""
  cax = ax.inset_axes([1.03, 0.0, 0.06, 1.0])
  mappable = matplotlib.cm.ScalarMappable(
    matplotlib.colors.Normalize(0.0, max(vmax, 1e-12)), CMAP
  )
  bar = fig.colorbar(mappable, cax=cax)
  ticks = [0.0, vmax] if vmax > 0 else [0.0]  # A zero map: "0" only.
  bar.set_ticks(ticks)
  bar.ax.set_yticklabels([f"{t:.2g}" for t in ticks], fontsize=_FONT)


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
  """Blends map ``m`` ``[H, W]`` (jet, scaled to ``[0, vmax]``; ``None``:
  its own maximum) half and half over ``image`` ``[H, W(, C)]``, with a
  colour bar and the all-zero mark."""
  base, m = rgb(image), np.asarray(m, np.float32)
  if m.shape != base.shape[:2]:
    raise ValueError(
      f"The map {m.shape} must have the image's size {base.shape[:2]}; "
      "upsample it with vae_attn.attention.upsample first."
    )
  top = float(np.max(m)) if vmax is None else float(vmax)
  heat = np.clip(m / max(top, 1e-12), 0.0, 1.0)
  ax.imshow(0.5 * base + 0.5 * matplotlib.colormaps[CMAP](heat)[..., :3])
  if bar:
    colorbar(fig, ax, top)
  if is_zero(m):
    mark_zero(ax)


# Figures.


def _grid(
  num_rows: int,
  num_cols: int,
  title: str | None,
  *,
  footer: Sequence[str] = (),
  width_ratios: Sequence[int] | None = None,
):
  """A grid of image cells without ticks, with a title and footer lines;
  ``width_ratios``: the cells each column spans (``num_cols`` in all)."""
  inches = max(_CELL * num_cols, 5.0)  # Room for the labels and notes.
  width = int(inches * 11)  # Characters that fit.
  text = "\n".join(textwrap.fill(line, width) for line in footer)
  lines = text.count("\n") + 1 if footer else 0
  title = textwrap.fill(title, width) if title else None
  title_lines = title.count("\n") + 1 if title else 0
  height = _CELL * num_rows + 0.25 * title_lines + 0.16 * lines
  fig = matplotlib.figure.Figure(figsize=(inches, height))
  ratios = width_ratios or [1] * num_cols
  axes = fig.subplots(num_rows, len(ratios), squeeze=False, width_ratios=ratios)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=9)
  if footer:
    fig.text(0.01, 0.005, text, fontsize=_FONT, va="bottom", ha="left")
    fig._footer_lines = lines
  return fig, axes


def _save(fig, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  top, bottom = 1.0, 0.0
  if fig._suptitle is not None:  # Keep the title clear of the axes titles.
    lines = fig._suptitle.get_text().count("\n") + 1
    top = 1.0 - (0.1 + 0.2 * lines) / fig.get_figheight()
  footer = getattr(fig, "_footer_lines", 0)
  if footer:  # And the footer clear of the bottom row.
    bottom = (0.05 + 0.16 * footer) / fig.get_figheight()
  fig.tight_layout(rect=(0.0, bottom, 1.0, top))
  fig.savefig(path, dpi=100)
  return path


def _scale_note(scale: str, top: float, what: str) -> str:
  if scale == "figure":
    return f"{what}: one colour scale, 0 to {top:.3g}"
  if scale == "image":
    return f"{what}: one colour scale per row (0 to the row's maximum)"
  return (
    f"{what}: each map on its own scale (0 to its maximum); compare colours "
    "within a map, values by its colour bar"
  )


def attention_grid(
  path: str | os.PathLike,
  images: np.ndarray,
  mean_maps: np.ndarray | None,
  per_latent: np.ndarray,
  latent_ids: np.ndarray,
  *,
  title: str | None = None,
  scale: str = "figure",
  num_latents: int | None = None,
  row_labels: Sequence[str] | None = None,
  notes: Sequence[str] = (),
) -> str:
  """Attention maps of a few images, the one way every tool draws them.

  One row per image: the image, its mean map (eq. 4; omitted when
  ``mean_maps`` is None) and ``K`` per-latent maps (eq. 3), each overlaid on
  the image and titled with its latent (``z3``). The figure states its
  colour scale in a footer line: by default the per-latent maps of the whole
  figure share one scale (and the mean maps another), so a near-zero map
  looks cold beside a strong one; a map that is exactly zero everywhere is
  hatched with a "0" badge. Text is at least 8 points (11 pixels at the
  saved 100 dpi).

  Args:
    path: output PNG.
    images: ``[N, H, W, C]`` in ``[0, 1]``.
    mean_maps: ``[N, H, W]`` mean attention maps, or None.
    per_latent: ``[N, K, H, W]`` maps of the ``K`` latents shown per image.
    latent_ids: ``[N, K]`` (or ``[K]``) the latent index of each shown map.
    title: optional figure title.
    scale: ``"figure"`` (one scale for all per-latent maps, one for all
      mean maps), ``"image"`` (one per row) or ``"map"`` (each its own).
    num_latents: ``D``, the model's latent count: the header says "K of D
      latents".
    row_labels: a label per row (file names), on the image's left.
    notes: more footer lines (e.g. that an input was resized).

  Returns:
    ``path``.

  Raises:
    ValueError: an unknown ``scale`` or mismatched image counts.
  """
  if scale not in SCALES:
    raise ValueError(f"Unknown scale {scale!r}; choose one of {SCALES}.")
  images = np.asarray(images)
  per_latent = np.asarray(per_latent, np.float32)
  n, k = per_latent.shape[:2]
  ids = np.broadcast_to(np.asarray(latent_ids), (n, k))
  if images.shape[0] != n or (mean_maps is not None and len(mean_maps) != n):
    raise ValueError(
      f"images {images.shape}, mean_maps "
      f"{None if mean_maps is None else mean_maps.shape} and per_latent "
      f"{per_latent.shape} must have the same number of images."
    )
  first = 1 if mean_maps is None else 2
  shown = f"{k} of {num_latents} latents" if num_latents else f"{k} latents"
  footer = []
  if k:
    top_all = float(per_latent.max())
    footer.append(_scale_note(scale, top_all, f"per-latent maps ({shown})"))
  if mean_maps is not None:
    footer.append(_scale_note(scale, float(np.max(mean_maps)), "mean maps"))
  footer += list(notes)
  fig, axes = _grid(n, k + first, title, footer=footer)

  def top(maps, i):
    if scale == "figure":
      return float(np.max(maps))
    return float(np.max(maps[i])) if scale == "image" else None

  for i in range(n):
    axes[i, 0].imshow(rgb(images[i]))
    if row_labels is not None:
      axes[i, 0].set_ylabel(row_labels[i], fontsize=_FONT)
    if mean_maps is not None:
      show_map(
        fig,
        axes[i, 1],
        images[i],
        mean_maps[i],
        vmax=top(mean_maps, i),
        bar=True,
      )
    for j in range(k):
      show_map(
        fig,
        axes[i, j + first],
        images[i],
        per_latent[i, j],
        vmax=top(per_latent, i),
        bar=scale == "map" or j == k - 1,
      )
      axes[i, j + first].set_title(f"z{int(ids[i, j])}", fontsize=_FONT)
  axes[0, 0].set_title("image", fontsize=_FONT)
  if mean_maps is not None:
    axes[0, 1].set_title("mean map", fontsize=_FONT)
  return _save(fig, path)


def localization_overlays(
  path: str | os.PathLike,
  images: np.ndarray,
  masks: np.ndarray,
  maps: Mapping[str, np.ndarray],
  scales: Mapping[str, float],
  *,
  row_titles: Sequence[str] | None = None,
  title: str | None = None,
) -> str:
  """Fig. 6-style rows: image, ground truth, one overlay per method.

  The maps of a method share one colour scale over all rows (shown by the
  colour bar under the bottom row), so normal images stay cold when the
  method separates them; an all-zero map is hatched with a "0" badge.

  Args:
    path: output PNG.
    images: ``[N, H, W, C]`` in ``[0, 1]``.
    masks: ``[N, H, W]`` binary ground truth.
    maps: method name -> ``[N, H, W]`` non-negative maps at image size.
    scales: method name -> the map value shown at the top of the colour
      scale (e.g. a high percentile of the method's maps on the test set).
    row_titles: optional label of each row (e.g. the defect type).
    title: optional figure title.

  Returns:
    ``path``.
  """
  n = len(images)
  fig, axes = _grid(n, 2 + len(maps), title)
  for i in range(n):
    axes[i, 0].imshow(rgb(images[i]))
    axes[i, 1].imshow(np.asarray(masks[i]), cmap="gray", vmin=0, vmax=1)
    for j, (name, m) in enumerate(maps.items()):
      show_map(
        fig, axes[i, j + 2], images[i], m[i], vmax=scales[name], bar=i == n - 1
      )
    if row_titles is not None:
      axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
  for j, name in enumerate(["image", "ground truth", *maps]):
    axes[0, j].set_title(name, fontsize=_FONT)
  return _save(fig, path)


def scalar_curves(
  path: str | os.PathLike, rows: Sequence[Mapping[str, float]]
) -> str:
  """One panel per logged scalar against the step (a training log).

  A scalar logged at two steps or more is a line (with dots below 20
  points); one logged once is a single marker labelled with its value and
  step, so that a lone dot is not mistaken for an empty panel. Rates
  (``*per_sec*``) are left out.

  Args:
    path: output PNG.
    rows: the log, dicts with ``step`` and scalars (``workflow.writers``).

  Returns:
    ``path``.
  """
  names = sorted(
    {k for r in rows for k in r if k != "step" and "per_sec" not in k}
  )
  cols = min(4, max(1, len(names)))
  num_rows = max(1, -(-len(names) // cols))
  fig = matplotlib.figure.Figure(figsize=(3.2 * cols, 2.4 * num_rows))
  axes = fig.subplots(num_rows, cols, squeeze=False)
  for ax, name in zip(axes.ravel(), names, strict=False):
    points = [(r["step"], r[name]) for r in rows if name in r]
    steps, values = zip(*points, strict=True)
    if len(points) == 1:
      ax.plot(steps, values, "o", markersize=7)
      ax.annotate(
        f"{values[0]:.4g} at step {steps[0]} (logged once)",
        (steps[0], values[0]),
        xytext=(0, 10),
        textcoords="offset points",
        ha="center",
        fontsize=_FONT,
      )
      ax.set_xticks(steps)
    else:
      ax.plot(steps, values, marker="." if len(points) < 20 else None)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step", fontsize=_FONT)
    ax.tick_params(labelsize=_FONT)
  for ax in axes.ravel()[len(names) :]:
    ax.axis("off")
  return _save(fig, path)


def roc_curves(
  path: str | os.PathLike,
  curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
  *,
  title: str | None = None,
  max_points: int = 2000,
) -> str:
  """Pixel-level ROC curves of several methods on one axis.

  Args:
    path: output PNG.
    curves: label -> ``(fpr, tpr, auroc)``.
    title: optional axis title.
    max_points: curves are thinned to about this many points for plotting.

  Returns:
    ``path``.
  """
  fig = matplotlib.figure.Figure(figsize=(4.5, 4.5))
  ax = fig.subplots()
  for label, (fpr, tpr, auc) in curves.items():
    stride = max(1, len(fpr) // max_points)
    idx = np.unique(np.r_[np.arange(0, len(fpr), stride), len(fpr) - 1])
    ax.plot(fpr[idx], tpr[idx], lw=1.5, label=f"{label} ({auc:.3f})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("false positive rate (normal pixels)")
  ax.set_ylabel("true positive rate (anomalous pixels)")
  ax.legend(loc="lower right", fontsize=_FONT)
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, path)


def layer_ablation(
  path: str | os.PathLike,
  aurocs: Mapping[str, float],
  *,
  title: str | None = None,
) -> str:
  """Bar chart of pixel AUROC per attention layer and the residual.

  Args:
    path: output PNG.
    aurocs: label -> pixel AUROC.
    title: optional axis title.

  Returns:
    ``path``.
  """
  fig = matplotlib.figure.Figure(figsize=(1.2 * len(aurocs) + 1.5, 3.5))
  ax = fig.subplots()
  labels = list(aurocs)
  values = [aurocs[k] for k in labels]
  bars = ax.bar(range(len(labels)), values, color="tab:blue")
  ax.bar_label(bars, fmt="%.3f", fontsize=8)
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("pixel AUROC")
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, path)


# Figures that run the model first (maps, decodes), then draw.


def pick_latents(per_latent: np.ndarray, k: int, order: str) -> np.ndarray:
  """Indices ``[N, k]`` of the latents shown: ``"index"``, the first ``k``;
  ``"response"``, the ``k`` of largest map mass per image (the rule of
  ``L_AD``'s ``top2`` pair mode)."""
  n, d = per_latent.shape[:2]
  k = min(k, d)
  if order == "index":
    return np.broadcast_to(np.arange(k), (n, k))
  response = per_latent.reshape(n, d, -1).sum(-1)
  return np.argsort(-response, axis=1, kind="stable")[:, :k]


def attention_figure(
  path: str | os.PathLike,
  x: np.ndarray,
  maps: attention_lib.AttentionMaps,
  *,
  k: int = 8,
  order: str = "index",
  mean: bool = True,
  title: str = "",
  scale: str = "figure",
  names: Sequence[str] | None = None,
  notes: Sequence[str] = (),
) -> str:
  """:func:`attention_grid` of a model's maps of images ``x`` [N, H, W, C].

  Args:
    path: the PNG to write.
    x: the explained images.
    maps: their maps at layer resolution (``vae_attn.attention``),
      upsampled here to the images' size.
    k: per-latent maps shown per image (0: none), picked by ``order``
      (:func:`pick_latents`).
    order: ``"index"`` or ``"response"``.
    mean: also show the mean map (eq. 4).
    title, scale, notes: as :func:`attention_grid`.
    names: a label per image (file names).

  Returns:
    The path written.
  """
  size = x.shape[1:3]
  per_latent = np.asarray(maps.per_latent)
  ids = pick_latents(per_latent, k, order)
  shown = np.take_along_axis(per_latent, ids[:, :, None, None], axis=1)
  return attention_grid(
    path,
    x,
    np.asarray(attention_lib.upsample(maps.mean, size)) if mean else None,
    np.asarray(attention_lib.upsample(jnp.asarray(shown), size)),
    ids,
    title=title,
    scale=scale,
    num_latents=per_latent.shape[1],
    row_labels=names,
    notes=notes,
  )


# Figures that run the model first (maps, decodes), then draw.


def top_latent_figure(
  run: Any, x: np.ndarray, layer: str, path: str, title: str
) -> dict:
  """Fig. 8: the maps of each input's two highest-responding latents, and
  their ``L_AD`` overlap (``top2`` pair mode)."""
  fn = attention_lib.attention(run.encode_fn, layer)
  maps = jax.device_get(jax.jit(fn)(run.variables, jnp.asarray(x)))
  attention_figure(
    path, x, maps, k=2, order="response", mean=False, title=title
  )
  overlap = losses.attention_disentanglement(
    jnp.asarray(maps.per_latent), jax.random.key(0), mode="top2"
  )
  return {
    "layer": layer,
    "top_latents": pick_latents(maps.per_latent, 2, "response").tolist(),
    "top2_overlap_l_ad": [float(v) for v in np.asarray(overlap)],
  }


def traversal_figure(
  run: Any,
  x: np.ndarray,
  kl: np.ndarray,
  path: str,
  *,
  num_latents: int,
  limit: float,
  steps: int,
  title: str,
) -> dict:
  """Latent traversals: ``mu(x)`` decoded with one latent swept over
  ``[-limit, limit]`` in ``steps`` values (columns), a row per latent.

  The rows are the ``num_latents`` latents of largest mean ``kl`` ``[D]``
  (the informative ones first), labelled with it; ``x`` is one image
  ``[1, H, W, C]``, shown with its reconstruction in the first column.
  """
  mu, _ = jax.jit(run.encode_fn)(run.variables, jnp.asarray(x))
  order = np.argsort(-kl, kind="stable")[:num_latents]
  values = np.linspace(-limit, limit, steps, dtype=np.float32)
  z = np.repeat(np.asarray(mu), len(order) * steps, axis=0)
  z = z.reshape(len(order), steps, -1)
  z[
    np.arange(len(order))[:, None], np.arange(steps)[None, :], order[:, None]
  ] = values[None, :]
  # One jitted decode: the traversals, then the reconstruction of mu.
  decode = jax.jit(
    lambda variables, z: jax.nn.sigmoid(
      run.model.apply(variables, z, method=run.model.decode)
    )
  )
  images = np.asarray(
    decode(run.variables, jnp.concatenate([z.reshape(-1, z.shape[-1]), mu]))
  )
  decoded = images[:-1].reshape(len(order), steps, *run.input_shape)
  references = [("input", x[0]), ("reconstruction", images[-1])]
  # A row's traversal is one image (cells parted by white columns): one
  # axes per row instead of one per cell, several times faster to draw.
  h, w = run.input_shape[:2]
  gap = max(1, w // 32)
  fig, axes = _grid(len(order), steps + 1, title, width_ratios=[1, steps])
  for i, latent in enumerate(order):
    cells = [rgb(image) for image in decoded[i]]
    row = np.ones((h, steps * (w + gap) - gap, 3), np.float32)
    for j, cell in enumerate(cells):
      row[:, j * (w + gap) : j * (w + gap) + w] = cell
    axes[i, 1].imshow(row)
    axes[i, 1].set_ylabel(f"z{int(latent)}\nKL {kl[latent]:.2f}", fontsize=8)
    if i < len(references):
      caption, image = references[i]
      axes[i, 0].imshow(rgb(image))
      axes[i, 0].set_xlabel(caption, fontsize=8)
    else:
      axes[i, 0].axis("off")
  top = axes[0, 1]
  top.set_xticks(np.arange(steps) * (w + gap) + (w - 1) / 2)
  top.set_xticklabels([f"{float(v):+.1f}" for v in values], fontsize=8)
  top.tick_params(axis="x", length=0, top=True, labeltop=True, bottom=False)
  top.tick_params(axis="x", labelbottom=False)
  _save(fig, path)
  return {"latents": order.tolist(), "values": values.tolist()}
