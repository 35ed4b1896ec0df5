"""Checks and curve arithmetic shared by the localization metrics.

Private to ``eval.metrics``: the exact metrics (``localization``) and the
streaming ones (``pixel_scores``) validate their inputs and count pixels
the same way through these functions.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

STATISTICS = ("max", "mean")


def check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
  scores = np.asarray(scores)
  if scores.ndim != 3:
    raise ValueError(
      f"{name} must have shape [N, H, W], got shape {scores.shape}; squeeze a "
      "trailing channel axis or add a leading batch axis."
    )
  if not np.issubdtype(scores.dtype, np.number) or scores.dtype == bool:
    raise ValueError(f"{name} must be a real-valued array, got {scores.dtype}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError(
      f"{name} contains NaN or infinite values; fix the anomaly maps (e.g. "
      "guard a division by zero in the normalisation) before scoring."
    )
  return scores


def check_binary(values: np.ndarray, name: str) -> np.ndarray:
  values = np.asarray(values)
  if values.dtype == bool:
    return values
  if not np.all((values == 0) | (values == 1)):
    found = np.unique(values)[:5]
    raise ValueError(
      f"{name} must be binary (bool or 0/1), found values {found.tolist()}; "
      "for 0/255 PNG masks pass `masks > 0`."
    )
  return values.astype(bool)


def check_pair(
  scores: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  scores = check_scores(scores)
  masks = np.asarray(masks)
  if masks.shape != scores.shape:
    raise ValueError(
      f"masks shape {masks.shape} does not match scores shape "
      f"{scores.shape}; resize the anomaly maps to the mask resolution "
      "first."
    )
  return scores, check_binary(masks, "masks")


def check_both_classes(num_pos: float, num_neg: float, what: str) -> None:
  if num_pos == 0:
    raise ValueError(
      f"No anomalous {what} (positives) in the ground truth; the metric is "
      "undefined. Include anomalous test images."
    )
  if num_neg == 0:
    raise ValueError(
      f"No normal {what} (negatives) in the ground truth; the metric is "
      "undefined. Include normal test images or pixels."
    )


def check_max_fpr(max_fpr: float) -> None:
  if not 0.0 < max_fpr <= 1.0:
    raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")


def region_weights(
  masks: np.ndarray, connectivity: int
) -> tuple[np.ndarray, int]:
  """Per-pixel weight 1 / (size of its ground-truth region), 0 off regions.

  Args:
    masks: bool ``[N, H, W]``.
    connectivity: 4 or 8, the pixel neighbourhood of a connected component.

  Returns:
    ``(weights, num_regions)``: float64 ``[N, H, W]`` weights and the number
    of connected components over all images.
  """
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
  structure = scipy.ndimage.generate_binary_structure(
    2, 1 if connectivity == 4 else 2
  )
  weights = np.zeros(masks.shape, np.float64)
  num_regions = 0
  for i, mask in enumerate(masks):
    if not mask.any():
      continue
    labels, n = scipy.ndimage.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel())
    inverse = np.zeros(n + 1, np.float64)
    inverse[1:] = 1.0 / sizes[1:]
    weights[i] = inverse[labels]
    num_regions += n
  return weights, num_regions


def integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
  """Trapezoidal area under ``y(x)`` on ``[x[0], x_max]``.

  ``x`` is non-decreasing; the curve is linearly interpolated at ``x_max``.
  """
  last = int(np.searchsorted(x, x_max, side="right")) - 1
  area = float(np.trapezoid(y[: last + 1], x[: last + 1]))
  if last + 1 < x.size and x[last] < x_max:
    x0, x1, y0, y1 = x[last], x[last + 1], y[last], y[last + 1]
    y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    area += 0.5 * (y0 + y_max) * (x_max - x0)
  return area


def best_iou_from_counts(
  tps: np.ndarray, fps: np.ndarray, num_pos: float, thresholds: np.ndarray
) -> tuple[float, float]:
  # IoU = TP / (TP + FP + FN) = TP / (P + FP).
  ious = tps / (num_pos + fps)
  best = int(np.argmax(ious))
  return float(ious[best]), float(thresholds[best])


def image_statistic(scores: np.ndarray, statistic: str) -> np.ndarray:
  if statistic not in STATISTICS:
    raise ValueError(
      f"statistic must be one of {STATISTICS}, got {statistic!r}."
    )
  flat = scores.reshape(scores.shape[0], -1)
  return flat.max(axis=1) if statistic == "max" else flat.mean(axis=1)


def check_labels(labels: np.ndarray, num_images: int) -> np.ndarray:
  labels = check_binary(labels, "labels")
  if labels.shape != (num_images,):
    raise ValueError(
      f"labels must have shape [N] = ({num_images},), got {labels.shape}."
    )
  return labels
