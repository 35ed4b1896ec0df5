"""Plotting only: attention overlays, grids, ROC curves and traversals.

Every function takes NumPy arrays (images NHWC in ``[0, 1]``, maps
``[..., H, W]`` already at image size), writes one PNG with matplotlib's Agg
backend and returns its path. Nothing here computes a metric or runs a
model; the drivers (``eval.explain``, ``eval.localization``,
``eval.disentanglement``) do. How one map is drawn (scale, overlay, colour
bar, the mark of an all-zero map) lives in ``eval.heatmaps``.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from eval import heatmaps  # noqa: E402
from eval.heatmaps import CMAP, is_zero, overlay, to_unit_range  # noqa: E402
from vae_attn import attention as attention_lib  # noqa: E402
from vae_attn import losses  # noqa: E402

_CELL = 1.6  # Inches per image cell.
SCALES = ("map", "image")  # Per-map colour scales, or one per image.
__all__ = [
  "SCALES",
  "attention_grid",
  "is_zero",
  "layer_ablation",
  "localization_overlays",
  "mean_overlays",
  "overlay",
  "roc_curves",
  "to_unit_range",
  "top_latent_figure",
  "top_latent_maps",
  "traversal_figure",
  "traversals",
]


def _grid(num_rows: int, num_cols: int, title: str | None):
  fig, axes = plt.subplots(
    num_rows,
    num_cols,
    figsize=(_CELL * num_cols, _CELL * num_rows + (0.4 if title else 0.0)),
    squeeze=False,
  )
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    width = max(20, int(_CELL * num_cols * 12))  # Characters that fit.
    fig.suptitle(textwrap.fill(title, width), fontsize=9)
  return fig, axes


def _save(fig, path: str | os.PathLike) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  top = 1.0
  if fig._suptitle is not None:  # Keep the title clear of the axes titles.
    lines = fig._suptitle.get_text().count("\n") + 1
    top = 1.0 - (0.1 + 0.2 * lines) / fig.get_figheight()
  fig.tight_layout(rect=(0.0, 0.0, 1.0, top))
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def attention_grid(
  path: str | os.PathLike,
  images: np.ndarray,
  mean_maps: np.ndarray,
  per_latent: np.ndarray,
  latent_ids: np.ndarray,
  *,
  title: str | None = None,
  scale: str = "map",
) -> str:
  """Fig. 1-style grid: image, mean-map overlay, then per-latent overlays.

  Every map has a colour bar in its own units (``0`` to the top of its
  scale), and a map that is exactly zero everywhere is hatched with a "0"
  badge, so that it is not mistaken for a weak one.

  Args:
    path: output PNG.
    images: ``[N, H, W, C]`` in ``[0, 1]``.
    mean_maps: ``[N, H, W]`` mean attention maps (eq. 4).
    per_latent: ``[N, K, H, W]`` maps of the ``K`` latents shown per image.
    latent_ids: ``[N, K]`` the latent index of each shown map.
    title: optional figure title.
    scale: ``"map"`` (each map from 0 to its own maximum, a colour bar each)
      or ``"image"`` (the per-latent maps of an image share one scale, from
      0 to their largest value, with one colour bar at the row's end; the
      mean map keeps its own).

  Returns:
    ``path``.
  """
  if scale not in SCALES:
    raise ValueError(f"Unknown scale {scale!r}; choose one of {SCALES}.")
  images = np.asarray(images)
  n, k = per_latent.shape[:2]
  if mean_maps.shape[0] != n or images.shape[0] != n:
    raise ValueError(
      f"images {images.shape}, mean_maps {mean_maps.shape} and per_latent "
      f"{per_latent.shape} must have the same number of images."
    )
  fig, axes = _grid(n, k + 2, title)
  for i in range(n):
    axes[i, 0].imshow(heatmaps.rgb(images[i]))
    heatmaps.show_map(
      fig, axes[i, 1], images[i], mean_maps[i], vmax=None, bar=True
    )
    row_max = float(per_latent[i].max()) if scale == "image" else None
    for j in range(k):
      heatmaps.show_map(
        fig,
        axes[i, j + 2],
        images[i],
        per_latent[i, j],
        vmax=row_max,
        bar=scale == "map" or j == k - 1,
      )
      if i == 0 or latent_ids.ndim == 2:
        axes[i, j + 2].set_title(f"z{int(latent_ids[i, j])}", fontsize=8)
  axes[0, 0].set_title("image", fontsize=8)
  axes[0, 1].set_title("mean map", fontsize=8)
  return _save(fig, path)


def mean_overlays(
  path: str | os.PathLike,
  images: np.ndarray,
  mean_maps: np.ndarray,
  *,
  names: Sequence[str] | None = None,
  title: str | None = None,
) -> str:
  """Each image (top row) above its mean attention map overlay (bottom).

  Each map is scaled from 0 to its own maximum, shown by its colour bar; an
  all-zero map is hatched with a "0" badge.

  Args:
    path: output PNG.
    images: ``[N, H, W, C]`` in ``[0, 1]``.
    mean_maps: ``[N, H, W]`` maps.
    names: optional caption of each column.
    title: optional figure title.

  Returns:
    ``path``.
  """
  n = len(images)
  fig, axes = _grid(2, n, title)
  for i in range(n):
    axes[0, i].imshow(heatmaps.rgb(images[i]))
    heatmaps.show_map(
      fig, axes[1, i], images[i], mean_maps[i], vmax=None, bar=True
    )
    if names is not None:
      axes[0, i].set_title(names[i], fontsize=8)
  axes[0, 0].set_ylabel("image", fontsize=8)
  axes[1, 0].set_ylabel("mean map", fontsize=8)
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
    axes[i, 0].imshow(heatmaps.rgb(images[i]))
    axes[i, 1].imshow(np.asarray(masks[i]), cmap="gray", vmin=0, vmax=1)
    for j, (name, m) in enumerate(maps.items()):
      heatmaps.show_map(
        fig, axes[i, j + 2], images[i], m[i], vmax=scales[name], bar=i == n - 1
      )
    if row_titles is not None:
      axes[i, 0].set_ylabel(row_titles[i], fontsize=8)
  for j, name in enumerate(["image", "ground truth", *maps]):
    axes[0, j].set_title(name, fontsize=7)
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
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  for label, (fpr, tpr, auc) in curves.items():
    stride = max(1, len(fpr) // max_points)
    idx = np.unique(np.r_[np.arange(0, len(fpr), stride), len(fpr) - 1])
    ax.plot(fpr[idx], tpr[idx], lw=1.5, label=f"{label} ({auc:.3f})")
  ax.plot([0, 1], [0, 1], "k:", lw=0.8)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("false positive rate (normal pixels)")
  ax.set_ylabel("true positive rate (anomalous pixels)")
  ax.legend(loc="lower right", fontsize=7)
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, path)


def top_latent_maps(
  path: str | os.PathLike,
  images: np.ndarray,
  maps: np.ndarray,
  latent_ids: np.ndarray,
  *,
  title: str | None = None,
) -> str:
  """Fig. 8-style: each input with the maps of its strongest latents.

  Args:
    path: output PNG.
    images: ``[N, H, W, C]`` in ``[0, 1]``.
    maps: ``[N, K, H, W]`` maps of the ``K`` highest-responding latents,
      each shown from 0 to its own maximum with a colour bar (an all-zero
      map is hatched with a "0" badge).
    latent_ids: ``[N, K]`` their indices.
    title: optional figure title.

  Returns:
    ``path``.
  """
  n, k = maps.shape[:2]
  fig, axes = _grid(n, k + 1, title)
  for i in range(n):
    axes[i, 0].imshow(heatmaps.rgb(images[i]))
    for j in range(k):
      m = np.asarray(maps[i, j], np.float32)
      top = float(m.max())
      axes[i, j + 1].imshow(m, cmap=CMAP, vmin=0, vmax=max(top, 1e-12))
      heatmaps.colorbar(fig, axes[i, j + 1], top)
      if is_zero(m):
        heatmaps.mark_zero(axes[i, j + 1])
      axes[i, j + 1].set_title(f"z{int(latent_ids[i, j])}", fontsize=8)
  axes[0, 0].set_title("input", fontsize=8)
  return _save(fig, path)


def traversals(
  path: str | os.PathLike,
  decoded: np.ndarray,
  latent_ids: Sequence[int],
  values: np.ndarray,
  *,
  reference: Sequence[np.ndarray] = (),
  reference_labels: Sequence[str] = (),
  row_labels: Sequence[str] | None = None,
  title: str | None = None,
) -> str:
  """Latent traversals: one row per latent, one column per value.

  Args:
    path: output PNG.
    decoded: ``[R, S, H, W, C]`` decoded images in ``[0, 1]``.
    latent_ids: ``[R]`` the latent traversed in each row.
    values: ``[S]`` the values it takes.
    reference: images shown in a first column, one per row from the top
      (e.g. the input and its reconstruction).
    reference_labels: their captions.
    row_labels: optional extra text per row (e.g. its KL).
    title: optional figure title.

  Returns:
    ``path``.
  """
  r, s = decoded.shape[:2]
  offset = 1 if len(reference) else 0
  fig, axes = _grid(r, s + offset, title)
  for i in range(r):
    for j in range(s):
      axes[i, j + offset].imshow(heatmaps.rgb(decoded[i, j]))
    label = f"z{int(latent_ids[i])}"
    if row_labels is not None:
      label += f"\n{row_labels[i]}"
    axes[i, offset].set_ylabel(label, fontsize=8)
  for j in range(s):
    axes[0, j + offset].set_title(f"{float(values[j]):+.1f}", fontsize=8)
  if offset:
    for i in range(r):
      if i < len(reference):
        axes[i, 0].imshow(heatmaps.rgb(reference[i]))
        if i < len(reference_labels):
          axes[i, 0].set_xlabel(reference_labels[i], fontsize=8)
      else:
        axes[i, 0].axis("off")
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
  fig, ax = plt.subplots(figsize=(1.2 * len(aurocs) + 1.5, 3.5))
  labels = list(aurocs)
  values = [aurocs[k] for k in labels]
  bars = ax.bar(range(len(labels)), values, color="tab:blue")
  for bar, value in zip(bars, values, strict=True):
    ax.text(
      bar.get_x() + bar.get_width() / 2,
      value,
      f"{value:.3f}",
      ha="center",
      va="bottom",
      fontsize=8,
    )
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("pixel AUROC")
  if title:
    ax.set_title(title, fontsize=10)
  return _save(fig, path)


# Figures that run the model first (maps, decodes), then draw.


def top_latent_figure(
  run: Any,
  x: np.ndarray,
  layer: str,
  path: str,
  title: str,
) -> dict:
  """Fig. 8: the maps of each input's two highest-responding latents.

  "Highest-responding" is the total mass of a latent's map, the rule of
  ``L_AD``'s ``top2`` pair mode.
  """
  fn = attention_lib.attention(run.encode_fn, layer)
  maps = jax.device_get(jax.jit(fn)(run.variables, jnp.asarray(x)))
  per_latent = np.asarray(maps.per_latent)
  n, d = per_latent.shape[:2]
  response = per_latent.reshape(n, d, -1).sum(-1)
  top = np.argsort(-response, axis=1, kind="stable")[:, :2]
  shown = np.take_along_axis(per_latent, top[:, :, None, None], axis=1)
  shown = np.asarray(attention_lib.upsample(jnp.asarray(shown), x.shape[1:3]))
  overlap = losses.attention_disentanglement(
    jnp.asarray(per_latent), jax.random.key(0), mode="top2"
  )
  top_latent_maps(path, x, shown, top, title=title)
  return {
    "layer": layer,
    "top_latents": top.tolist(),
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
  """Decodes ``mu(x)`` with one latent swept over ``[-limit, limit]``.

  The rows are the ``num_latents`` latents of largest mean KL (the
  informative ones first); ``x`` is one image ``[1, H, W, C]``.
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
  recon = images[-1:]
  traversals(
    path,
    decoded,
    order,
    values,
    reference=[x[0], np.asarray(recon)[0]],
    reference_labels=["input", "reconstruction"],
    row_labels=[f"KL {kl[i]:.2f}" for i in order],
    title=title,
  )
  return {"latents": order.tolist(), "values": values.tolist()}
