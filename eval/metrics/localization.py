"""Pixel- and image-level anomaly localization metrics (pure NumPy).

All functions take anomaly maps ``scores`` of shape ``[N, H, W]`` (higher means
more anomalous) and binary ground-truth ``masks`` of the same shape, and pool
over every pixel of every image: there is no per-image normalisation, as in
the paper's section 3.3.1 (TPR = fraction of anomalous pixels flagged, FPR =
fraction of normal pixels flagged).

Two ways to compute them:

* exact (``pixel_auroc``, ``best_iou``, ``aupro``, ``image_auroc``,
  ``localization_report``, ``roc_curve``): one global sort of all pixels,
  about 56 bytes per pixel; AUROC and the ROC curve agree with scikit-learn
  to floating-point precision.
* streaming (``pixel_scores``): an optax-style ``init`` / ``update`` /
  ``compute`` triple over per-batch histograms with a fixed number of bins
  over a known score range, ``O(num_bins)`` memory; every binned figure
  comes with a rigorous error bound computed from the histograms. Images of
  different sizes may go into one state (each update holds images of one
  size), which is how ``eval.localization`` scores maps upsampled to each
  mask's original resolution. Memory and time are measured in
  docs/evaluation.md.

References:
  Liu et al., "Towards Visually Explaining Variational Autoencoders", CVPR
  2020, section 3.3.1 (pixel AUROC, best IoU).
  Bergmann et al., "The MVTec Anomaly Detection Dataset: A Comprehensive
  Real-World Dataset for Unsupervised Anomaly Detection", IJCV 2021,
  section 5.2 (per-region overlap, AUPRO up to FPR 0.3).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import scipy.ndimage
import sklearn.metrics

__all__ = [
  "PixelScores",
  "PixelScoresState",
  "aupro",
  "best_iou",
  "image_auroc",
  "localization_report",
  "pixel_auroc",
  "pixel_scores",
  "roc_curve",
]


# Input checks and curve arithmetic shared by the exact and streaming metrics.

_STATISTICS = ("max", "mean")


def _check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
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


def _check_binary(values: np.ndarray, name: str) -> np.ndarray:
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


def _check_pair(
  scores: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  scores = _check_scores(scores)
  masks = np.asarray(masks)
  if masks.shape != scores.shape:
    raise ValueError(
      f"masks shape {masks.shape} does not match scores shape "
      f"{scores.shape}; resize the anomaly maps to the mask resolution "
      "first."
    )
  return scores, _check_binary(masks, "masks")


def _check_both_classes(num_pos: float, num_neg: float, what: str) -> None:
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


def _check_max_fpr(max_fpr: float) -> None:
  if not 0.0 < max_fpr <= 1.0:
    raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")


def _region_weights(
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


def _integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
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


def _best_iou_from_counts(
  tps: np.ndarray, fps: np.ndarray, num_pos: float, thresholds: np.ndarray
) -> tuple[float, float]:
  # IoU = TP / (TP + FP + FN) = TP / (P + FP).
  ious = tps / (num_pos + fps)
  best = int(np.argmax(ious))
  return float(ious[best]), float(thresholds[best])


def _image_statistic(scores: np.ndarray, statistic: str) -> np.ndarray:
  if statistic not in _STATISTICS:
    raise ValueError(
      f"statistic must be one of {_STATISTICS}, got {statistic!r}."
    )
  flat = scores.reshape(scores.shape[0], -1)
  return flat.max(axis=1) if statistic == "max" else flat.mean(axis=1)


def _check_labels(labels: np.ndarray, num_images: int) -> np.ndarray:
  labels = _check_binary(labels, "labels")
  if labels.shape != (num_images,):
    raise ValueError(
      f"labels must have shape [N] = ({num_images},), got {labels.shape}."
    )
  return labels


# Exact metrics: one global sort of all pixels.


class _ExactCurves(NamedTuple):
  """Counts at every distinct threshold, highest threshold first."""

  thresholds: np.ndarray  # [T]; pixels with score >= threshold are flagged.
  tps: np.ndarray  # [T] anomalous pixels flagged.
  fps: np.ndarray  # [T] normal pixels flagged.
  pro: np.ndarray | None  # [T] mean per-region overlap, or None.
  num_pos: int
  num_neg: int


def _exact_curves(
  scores: np.ndarray,
  masks: np.ndarray,
  *,
  with_pro: bool = False,
  connectivity: int = 8,
) -> _ExactCurves:
  """One descending sort of all pixels; cumulative counts per distinct score."""
  flat_scores = scores.ravel()
  flat_masks = masks.ravel()
  num_pos = int(np.count_nonzero(flat_masks))
  num_neg = flat_masks.size - num_pos
  _check_both_classes(num_pos, num_neg, "pixels")
  order = np.argsort(flat_scores, kind="stable")[::-1]
  sorted_scores = flat_scores[order]
  sorted_pos = flat_masks[order]
  # Last index of each run of equal scores: the threshold takes all ties.
  ends = np.flatnonzero(np.diff(sorted_scores))
  ends = np.append(ends, sorted_scores.size - 1)
  tps = np.cumsum(sorted_pos, dtype=np.int64)[ends]
  fps = (ends + 1) - tps
  pro = None
  if with_pro:
    weights, num_regions = _region_weights(masks, connectivity)
    pro = np.cumsum(weights.ravel()[order])[ends] / num_regions
  return _ExactCurves(
    thresholds=sorted_scores[ends],
    tps=tps,
    fps=fps,
    pro=pro,
    num_pos=num_pos,
    num_neg=num_neg,
  )


def roc_curve(
  scores: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pixel ROC curve pooled over all pixels of all images.

  Same output as ``sklearn.metrics.roc_curve(masks.ravel(), scores.ravel(),
  drop_intermediate=False)``: one point per distinct score plus the origin.

  Args:
    scores: anomaly maps ``[N, H, W]``, higher is more anomalous.
    masks: binary ground truth ``[N, H, W]`` (bool or 0/1).

  Returns:
    ``(fpr, tpr, thresholds)``, each ``[T + 1]`` for ``T`` distinct scores,
    thresholds decreasing and starting at ``inf`` (the point (0, 0)). A pixel
    is flagged at threshold ``t`` when its score is ``>= t``.

  Raises:
    ValueError: on shape mismatch, non-binary masks, non-finite scores, or
      when the masks have no positive or no negative pixel.

  References:
    Liu et al., CVPR 2020, section 3.3.1.
  """
  scores, masks = _check_pair(scores, masks)
  curves = _exact_curves(scores, masks)
  fpr = np.concatenate([[0.0], curves.fps / curves.num_neg])
  tpr = np.concatenate([[0.0], curves.tps / curves.num_pos])
  thresholds = np.concatenate([[np.inf], curves.thresholds.astype(np.float64)])
  return fpr, tpr, thresholds


def pixel_auroc(scores: np.ndarray, masks: np.ndarray) -> float:
  """Exact pixel-level area under the ROC curve, pooled over all pixels.

  Equal to ``sklearn.metrics.roc_auc_score(masks.ravel(), scores.ravel())``
  (ties count one half). For inputs too large for one sort, stream them
  through ``eval.metrics.pixel_scores``.

  Args:
    scores: anomaly maps ``[N, H, W]``.
    masks: binary ground truth ``[N, H, W]``.

  Returns:
    The AUROC in ``[0, 1]``.

  Raises:
    ValueError: as ``roc_curve``.

  References:
    Liu et al., CVPR 2020, section 3.3.1.
  """
  fpr, tpr, _ = roc_curve(scores, masks)
  return float(np.trapezoid(tpr, fpr))


def best_iou(scores: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
  """Best IoU of the thresholded maps over all ROC thresholds (an oracle).

  At threshold ``t`` the predicted region is ``scores >= t`` and
  ``IoU = TP / (TP + FP + FN)`` with counts pooled over all pixels of all
  images. The maximum is taken over every threshold of the ROC curve, i.e.
  the threshold is chosen with the test ground truth: an oracle threshold,
  an upper bound on what any fixed threshold achieves.

  Args:
    scores: anomaly maps ``[N, H, W]``.
    masks: binary ground truth ``[N, H, W]``.

  Returns:
    ``(iou, threshold)``: the best IoU and the score threshold reaching it.

  Raises:
    ValueError: as ``roc_curve``.

  References:
    Liu et al., CVPR 2020, section 3.3.1 ("best IoU").
  """
  scores, masks = _check_pair(scores, masks)
  curves = _exact_curves(scores, masks)
  return _best_iou_from_counts(
    curves.tps, curves.fps, curves.num_pos, curves.thresholds
  )


def _aupro_from_curve(
  fpr: np.ndarray, pro: np.ndarray, max_fpr: float
) -> float:
  fpr = np.concatenate([[0.0], fpr])
  pro = np.concatenate([[0.0], pro])
  return float(_integrate_to(fpr, pro, max_fpr) / max_fpr)


def aupro(
  scores: np.ndarray,
  masks: np.ndarray,
  max_fpr: float = 0.3,
  *,
  connectivity: int = 8,
) -> float:
  """Normalised area under the per-region-overlap curve up to ``max_fpr``.

  Each connected component ``C`` of the ground truth (over all images) is one
  region. At threshold ``t`` the per-region overlap is
  ``PRO(t) = mean_C |{p in C : score_p >= t}| / |C|`` and the FPR is the
  fraction of normal pixels (all images) with ``score >= t``. The PRO-vs-FPR
  curve, starting at (0, 0) and linearly interpolated between thresholds, is
  integrated with the trapezoid rule from FPR 0 to ``max_fpr`` and divided by
  ``max_fpr``, so a perfect map scores 1.

  Args:
    scores: anomaly maps ``[N, H, W]``.
    masks: binary ground truth ``[N, H, W]``.
    max_fpr: upper integration limit in ``(0, 1]`` (0.3 in MVTec-AD).
    connectivity: 8 (default, as the MVTec-AD evaluation code) or 4.

  Returns:
    The AUPRO in ``[0, 1]``.

  Raises:
    ValueError: as ``roc_curve``, or for a bad ``max_fpr``/``connectivity``.

  References:
    Bergmann et al., IJCV 2021, section 5.2.
  """
  _check_max_fpr(max_fpr)
  scores, masks = _check_pair(scores, masks)
  curves = _exact_curves(
    scores, masks, with_pro=True, connectivity=connectivity
  )
  return _aupro_from_curve(curves.fps / curves.num_neg, curves.pro, max_fpr)


def image_auroc(
  scores: np.ndarray, labels: np.ndarray, statistic: str = "max"
) -> float:
  """Image-level AUROC of a per-image statistic of the anomaly maps.

  Args:
    scores: anomaly maps ``[N, H, W]``.
    labels: binary ``[N]``, 1 for anomalous images.
    statistic: ``"max"`` or ``"mean"`` over each map's pixels.

  Returns:
    ``sklearn.metrics.roc_auc_score(labels, statistic(scores))``.

  Raises:
    ValueError: on bad shapes, non-binary labels, an unknown statistic, or
      labels of a single class.

  References:
    Bergmann et al., IJCV 2021, section 5.2 (image-level classification).
  """
  scores = _check_scores(scores)
  labels = _check_labels(labels, scores.shape[0])
  _check_both_classes(labels.sum(), (~labels).sum(), "images")
  return float(
    sklearn.metrics.roc_auc_score(labels, _image_statistic(scores, statistic))
  )


def localization_report(
  scores: np.ndarray,
  masks: np.ndarray,
  labels: np.ndarray | None = None,
  *,
  max_fpr: float = 0.3,
  connectivity: int = 8,
) -> dict[str, float]:
  """All localization metrics from one sort of the pixels.

  Args:
    scores: anomaly maps ``[N, H, W]``.
    masks: binary ground truth ``[N, H, W]``.
    labels: binary ``[N]`` image labels; by default an image is anomalous
      when its mask has a positive pixel.
    max_fpr: AUPRO integration limit.
    connectivity: AUPRO region connectivity, 8 or 4.

  Returns:
    Dict with ``pixel_auroc``, ``best_iou`` (oracle threshold),
    ``best_iou_threshold``, ``aupro``, ``image_auroc_max`` and
    ``image_auroc_mean``; identical to the single-metric functions.

  Examples:
    >>> masks = np.zeros((2, 4, 4), bool)
    >>> masks[1, :2, :2] = True
    >>> report = localization_report(masks * 0.9 + 0.05, masks)
    >>> report["pixel_auroc"], report["best_iou"], report["aupro"]
    (1.0, 1.0, 1.0)

  Raises:
    ValueError: as the single-metric functions.

  References:
    Liu et al., CVPR 2020, section 3.3.1; Bergmann et al., IJCV 2021.
  """
  _check_max_fpr(max_fpr)
  scores, masks = _check_pair(scores, masks)
  if labels is None:
    labels = masks.reshape(masks.shape[0], -1).any(axis=1)
  labels = _check_labels(labels, scores.shape[0])
  _check_both_classes(labels.sum(), (~labels).sum(), "images")
  curves = _exact_curves(
    scores, masks, with_pro=True, connectivity=connectivity
  )
  fpr = curves.fps / curves.num_neg
  tpr = curves.tps / curves.num_pos
  iou, threshold = _best_iou_from_counts(
    curves.tps, curves.fps, curves.num_pos, curves.thresholds
  )
  report = {
    "pixel_auroc": float(np.trapezoid(np.r_[0.0, tpr], np.r_[0.0, fpr])),
    "best_iou": iou,
    "best_iou_threshold": threshold,
    "aupro": _aupro_from_curve(fpr, curves.pro, max_fpr),
  }
  for statistic in _STATISTICS:
    report[f"image_auroc_{statistic}"] = float(
      sklearn.metrics.roc_auc_score(labels, _image_statistic(scores, statistic))
    )
  return report


# Streaming metrics: fixed-bin histograms with error bounds.


class PixelScoresState(NamedTuple):
  """Histograms accumulated by ``pixel_scores``; an explicit, copyable state.

  Attributes:
    pos: int64 ``[num_bins]`` anomalous-pixel counts per score bin.
    neg: int64 ``[num_bins]`` normal-pixel counts per score bin.
    pro: float64 ``[num_bins]`` sum over regions of the fraction of the region
      in each bin.
    num_regions: int64 scalar array, connected ground-truth regions so far.
    image_max: tuple of float64 ``[B]`` arrays, per-image max scores.
    image_mean: tuple of float64 ``[B]`` arrays, per-image mean scores.
    image_labels: tuple of bool ``[B]`` arrays, per-image labels.
  """

  pos: np.ndarray
  neg: np.ndarray
  pro: np.ndarray
  num_regions: np.ndarray
  image_max: tuple[np.ndarray, ...]
  image_mean: tuple[np.ndarray, ...]
  image_labels: tuple[np.ndarray, ...]


class PixelScores(NamedTuple):
  """The pure functions of ``pixel_scores``.

  Attributes:
    init: ``() -> state``.
    update: ``(state, scores, masks, labels=None) -> state``.
    compute: ``(state) -> dict`` of metrics and error bounds.
    curve: ``(state) -> (fpr, tpr, thresholds)``, the binned ROC curve.
  """

  init: Callable[[], PixelScoresState]
  update: Callable[..., PixelScoresState]
  compute: Callable[[PixelScoresState], dict[str, float]]
  curve: Callable[[PixelScoresState], tuple[np.ndarray, ...]]


class _Curves(NamedTuple):
  """Counts at every bin edge, highest threshold first."""

  tps: np.ndarray
  fps: np.ndarray
  pro: np.ndarray
  thresholds: np.ndarray
  num_pos: int
  num_neg: int


def _check_options(score_range, num_bins, max_fpr, connectivity):
  low, high = (float(v) for v in score_range)
  if not (np.isfinite(low) and np.isfinite(high) and low < high):
    raise ValueError(
      f"score_range must be finite with low < high, got {score_range}."
    )
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
  _check_max_fpr(max_fpr)
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
  return low, high


def pixel_scores(
  score_range: tuple[float, float],
  num_bins: int = 1 << 16,
  *,
  max_fpr: float = 0.3,
  connectivity: int = 8,
  image_auroc: bool = True,
) -> PixelScores:
  """Creates a streaming accumulator of pixel AUROC, best IoU and AUPRO.

  Scores are binned into ``num_bins`` equal bins over ``score_range``
  (scores outside it go to the end bins). Per batch, ``update`` adds
  positive/negative pixel counts and per-region overlap mass per bin and
  keeps each image's max and mean score; ``compute`` returns the metrics of
  ``localization_report`` plus error bounds against the exact
  values:

  * ``pixel_auroc``: binning changes the order only of positive/negative
    pairs falling in the same bin, and the binned AUROC counts those pairs
    one half while the exact one counts 0, 1/2 or 1, so
    ``|binned - exact| <= pixel_auroc_error_bound = 0.5 * sum_b p_b n_b``
    where ``p_b`` and ``n_b`` are the fractions of positive and negative
    pixels in bin ``b``.
  * ``best_iou``: evaluated exactly at the bin edges, so it is a lower bound
    of the exact (oracle) best IoU, reached at ``best_iou_threshold``.
  * ``aupro``: PRO and FPR are exact at the bin edges; the exact curve is
    monotone, so between two edges it stays in the box spanned by them and
    differs from the chord by at most half of the box area:
    ``|binned - exact| <= aupro_error_bound = sum_k dFPR_k dPRO_k / (2
    max_fpr)`` over the boxes below ``max_fpr``.
  * ``image_auroc_max`` / ``image_auroc_mean`` (with ``image_auroc``):
    exact (per-image values are kept, two floats per image).

  Args:
    score_range: ``(low, high)``, the range the scores are known to lie in,
      e.g. ``(0, 1)`` for normalised maps.
    num_bins: number of bins; the default ``2**16`` gives bounds of order
      ``1e-5`` on smooth score distributions.
    max_fpr: AUPRO integration limit.
    connectivity: AUPRO region connectivity, 8 or 4. Regions are labelled
      per image, so each image must be passed whole within one update.
    image_auroc: also report the image-level AUROC of the maps' max and
      mean (the images must then hold both classes); ``False`` gives the
      pixel metrics only.

  Returns:
    A ``PixelScores`` of pure functions ``(init, update, compute, curve)``;
    the state is a ``PixelScoresState`` passed in and returned, never stored.

  Raises:
    ValueError: for an empty ``score_range``, ``num_bins < 1`` or a bad
      ``max_fpr``; ``update`` and ``compute`` raise as
      ``localization_report``.

  Examples:
    >>> acc = pixel_scores(score_range=(0.0, 1.0), num_bins=1024)
    >>> state = acc.init()
    >>> rng = np.random.default_rng(0)
    >>> masks = rng.random((4, 8, 8)) < 0.2
    >>> masks[0] = False  # One normal image, for the image-level AUROC.
    >>> state = acc.update(state, 0.5 * rng.random((4, 8, 8)) + 0.5 * masks,
    ...                    masks)
    >>> round(acc.compute(state)["pixel_auroc"], 2)
    1.0

  References:
    Liu et al., CVPR 2020, section 3.3.1; Bergmann et al., IJCV 2021,
    section 5.2.
  """
  low, high = _check_options(score_range, num_bins, max_fpr, connectivity)
  edges = np.linspace(low, high, num_bins + 1)
  return PixelScores(
    init=functools.partial(_init, num_bins=num_bins),
    update=functools.partial(_update, edges=edges, connectivity=connectivity),
    compute=functools.partial(
      _compute, edges=edges, max_fpr=max_fpr, image_auroc=image_auroc
    ),
    curve=functools.partial(_curve, edges=edges),
  )


def _init(*, num_bins: int) -> PixelScoresState:
  return PixelScoresState(
    pos=np.zeros(num_bins, np.int64),
    neg=np.zeros(num_bins, np.int64),
    pro=np.zeros(num_bins, np.float64),
    num_regions=np.zeros((), np.int64),
    image_max=(),
    image_mean=(),
    image_labels=(),
  )


def _update(
  state: PixelScoresState,
  scores: np.ndarray,
  masks: np.ndarray,
  labels: np.ndarray | None = None,
  *,
  edges: np.ndarray,
  connectivity: int,
) -> PixelScoresState:
  scores, masks = _check_pair(scores, masks)
  if labels is None:
    labels = masks.reshape(masks.shape[0], -1).any(axis=1)
  labels = _check_labels(labels, scores.shape[0])
  num_bins, low, high = len(edges) - 1, edges[0], edges[-1]
  scaled = (scores.astype(np.float64) - low) * (num_bins / (high - low))
  bins = np.clip(np.floor(scaled), 0, num_bins - 1).astype(np.int64)
  weights, num_regions = _region_weights(masks, connectivity)
  return PixelScoresState(
    pos=state.pos + np.bincount(bins[masks], minlength=num_bins),
    neg=state.neg + np.bincount(bins[~masks], minlength=num_bins),
    pro=state.pro
    + np.bincount(bins[masks], weights[masks], minlength=num_bins),
    num_regions=state.num_regions + num_regions,
    image_max=(*state.image_max, _image_statistic(scores, "max")),
    image_mean=(*state.image_mean, _image_statistic(scores, "mean")),
    image_labels=(*state.image_labels, labels),
  )


def _curves(state: PixelScoresState, edges: np.ndarray) -> _Curves:
  num_pos, num_neg = int(state.pos.sum()), int(state.neg.sum())
  _check_both_classes(num_pos, num_neg, "pixels")
  # Threshold edges[k]: flag every pixel of bins k..end (high to low).
  return _Curves(
    tps=np.cumsum(state.pos[::-1]),
    fps=np.cumsum(state.neg[::-1]),
    pro=np.cumsum(state.pro[::-1]) / state.num_regions,
    thresholds=edges[:-1][::-1],
    num_pos=num_pos,
    num_neg=num_neg,
  )


def _curve(
  state: PixelScoresState, *, edges: np.ndarray
) -> tuple[np.ndarray, ...]:
  c = _curves(state, edges)
  return (
    np.r_[0.0, c.fps / c.num_neg],
    np.r_[0.0, c.tps / c.num_pos],
    np.r_[np.inf, c.thresholds],
  )


def _compute(
  state: PixelScoresState,
  *,
  edges: np.ndarray,
  max_fpr: float,
  image_auroc: bool,
) -> dict[str, float]:
  c = _curves(state, edges)
  fpr, tpr, _ = _curve(state, edges=edges)
  pro_curve = np.r_[0.0, c.pro]
  iou, threshold = _best_iou_from_counts(c.tps, c.fps, c.num_pos, c.thresholds)
  p, n = state.pos / c.num_pos, state.neg / c.num_neg
  # Boxes that start below max_fpr; one straddling it counts whole.
  boxes = (np.diff(fpr) * np.diff(pro_curve))[fpr[:-1] < max_fpr]
  report = {
    "pixel_auroc": float(np.trapezoid(tpr, fpr)),
    "pixel_auroc_error_bound": float(0.5 * np.sum(p * n)),
    "best_iou": iou,
    "best_iou_threshold": threshold,
    "aupro": float(_integrate_to(fpr, pro_curve, max_fpr) / max_fpr),
    "aupro_error_bound": float(0.5 * boxes.sum() / max_fpr),
  }
  if image_auroc:
    labels = np.concatenate(state.image_labels)
    _check_both_classes(labels.sum(), (~labels).sum(), "images")
    for statistic in _STATISTICS:
      values = np.concatenate(getattr(state, f"image_{statistic}"))
      report[f"image_auroc_{statistic}"] = float(
        sklearn.metrics.roc_auc_score(labels, values)
      )
  return report
