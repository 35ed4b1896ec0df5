"""Localization scores of anomaly maps under one of two protocols.

``"original"`` (default; the MVTec-AD protocol): each map is upsampled
(``vae_attn.attention.upsample``, bilinear) to the original size of its
image's mask, read from the mask file, and the pixels are pooled at that
size through the streaming ``eval.metrics.pixel_scores`` (65,536 bins over
the maps' range; the report gives the error bound of each figure). Small
defect regions count as drawn.

``"model"``: maps are upsampled to the model's input size and compared with
the masks the loader resized there (nearest neighbour, which can delete small
regions), exactly (``eval.metrics.localization_report``).

Pixel metrics pool the images whose mask is ground truth (``has_mask``);
image AUROC (max or mean of each map at model size) uses every test image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eval import localization_data as data_lib
from eval import metrics
from vae_attn import attention as attention_lib

RESOLUTIONS = ("original", "model")
NUM_BINS = 1 << 16


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """``[N, h, w]`` maps at ``size`` (``vae_attn.attention.upsample``)."""
  if tuple(maps.shape[-2:]) == tuple(size):
    return maps
  return np.asarray(attention_lib.upsample(maps, tuple(size)), np.float32)


def _check_classes(data: Mapping[str, np.ndarray], masks) -> None:
  has_mask, labels = data["has_mask"], data["label"]
  if masks is not None:
    anomalous = any(m.any() for m in masks.values())
  else:
    anomalous = data["mask"][has_mask].any()
  if not anomalous:
    raise ValueError(
      "No anomalous pixel in the test masks: pixel metrics need defect "
      "images with masks (check the data set's ground_truth folder)."
    )
  if labels.all() or not labels.any():
    raise ValueError(
      "The test split needs both normal and anomalous images for AUROC."
    )


def _image_aurocs(m: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  return {
    f"image_auroc_{s}": metrics.image_auroc(m, labels, s)
    for s in ("max", "mean")
  }


def _model_size(m, data) -> tuple[dict[str, float], tuple]:
  """Exact metrics against the masks at model size."""
  has_mask = data["has_mask"]
  masked, masks = m[has_mask], data["mask"][has_mask]
  mask_labels = data["label"][has_mask]
  if mask_labels.all() or not mask_labels.any():
    # Pixel metrics only; image AUROC needs both classes.
    report = {
      "pixel_auroc": metrics.pixel_auroc(masked, masks),
      "aupro": metrics.aupro(masked, masks),
    }
    iou, threshold = metrics.best_iou(masked, masks)
    report.update(best_iou=iou, best_iou_threshold=threshold)
  else:
    report = metrics.localization_report(masked, masks, mask_labels)
  fpr, tpr, _ = metrics.roc_curve(masked, masks)
  return report, (fpr, tpr)


def original_masks(
  entries: Sequence[Any], has_mask: np.ndarray
) -> dict[int, np.ndarray]:
  """Index -> bool ``[H, W]`` mask at original size, for masked images."""
  return {
    i: data_lib.original_mask(entries[i]) for i in np.flatnonzero(has_mask)
  }


def _original_size(
  native: np.ndarray, masks: Mapping[int, np.ndarray]
) -> tuple[dict[str, float], tuple]:
  """Binned metrics with each map upsampled to its mask's size."""
  lo, hi = float(native.min()), float(native.max())
  acc = metrics.pixel_scores(
    (lo, hi if hi > lo else lo + 1.0), NUM_BINS, image_auroc=False
  )
  state = acc.init()
  by_size: dict[tuple[int, int], list[int]] = {}
  for i, mask in masks.items():
    by_size.setdefault(mask.shape, []).append(i)
  for size, ids in by_size.items():
    for start in range(0, len(ids), 16):
      chunk = ids[start : start + 16]
      maps = upsample(native[chunk], size)
      state = acc.update(state, maps, np.stack([masks[i] for i in chunk]))
  fpr, tpr, _ = acc.curve(state)
  return acc.compute(state), (fpr, tpr)


def score(
  maps: Mapping[str, np.ndarray],
  data: Mapping[str, np.ndarray],
  *,
  resolution: str = "model",
  masks: Mapping[int, np.ndarray] | None = None,
  on_method=None,
) -> tuple[dict[str, dict[str, float]], dict[str, tuple]]:
  """Localization metrics and ROC curves of every method.

  Args:
    maps: method -> maps ``[N, h, w]`` at any resolution.
    data: ``mask [N, H, W]`` (bool, model size), ``label [N]`` and
      ``has_mask [N]``.
    resolution: ``"model"`` (masks at the model's size ``H x W``) or
      ``"original"`` (each map upsampled to its mask in ``masks``).
    masks: for ``"original"``: index -> bool ``[H_i, W_i]`` mask of every
      image with ``has_mask`` (:func:`original_masks`).
    on_method: optional ``fn(method, scores)`` called after each method
      (progress lines).

  Returns:
    ``(scores, curves)``: method -> metric dict (``pixel_auroc``,
    ``best_iou``, ``best_iou_threshold``, ``aupro``, ``image_auroc_max``,
    ``image_auroc_mean``, and for ``"original"`` the error bounds of the
    binned figures), method -> ``(fpr, tpr, pixel_auroc)``.

  Raises:
    ValueError: no anomalous pixel, a single class of images, an unknown
      ``resolution`` or ``"original"`` without ``masks``.
  """
  if resolution not in RESOLUTIONS:
    raise ValueError(
      f"Unknown resolution {resolution!r}; choose one of {RESOLUTIONS}."
    )
  if resolution == "original" and masks is None:
    raise ValueError('resolution="original" needs the original masks.')
  _check_classes(data, masks if resolution == "original" else None)
  size = data["mask"].shape[1:]
  scores, curves = {}, {}
  for name, native in maps.items():
    at_model_size = upsample(native, size)
    if resolution == "model":
      report, (fpr, tpr) = _model_size(at_model_size, data)
    else:
      report, (fpr, tpr) = _original_size(native, masks)
    report.update(_image_aurocs(at_model_size, data["label"]))
    scores[name] = {k: float(v) for k, v in report.items()}
    curves[name] = (fpr, tpr, scores[name]["pixel_auroc"])
    if on_method is not None:
      on_method(name, scores[name])
  return scores, curves


def describe(
  resolution: str, masks: Mapping[int, np.ndarray] | None, size
) -> str:
  """One sentence for the report: which protocol, at which sizes."""
  if resolution == "model":
    return (
      f"masks at the model's input size {size[0]}x{size[1]} (nearest "
      "resize), maps upsampled bilinearly to it; exact metrics"
    )
  sizes = sorted({m.shape for m in (masks or {}).values()})
  shown = ", ".join(f"{h}x{w}" for h, w in sizes[:3])
  if len(sizes) > 3:
    shown += f" and {len(sizes) - 3} more"
  return (
    f"original resolution: each map upsampled bilinearly to its mask's own "
    f"size ({shown}); metrics binned over {NUM_BINS} score bins"
  )
