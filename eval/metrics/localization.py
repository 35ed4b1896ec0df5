"""Pixel- and image-level anomaly localization metrics (NumPy, scikit-learn).

Every function takes anomaly maps ``scores [N, H, W]`` (higher: more
anomalous) and binary ``masks`` of the same shape, and pools every pixel of
every image (paper section 3.3.1). A pixel is flagged at threshold ``t``
when its score is ``>= t``. Bad inputs raise ``ValueError`` naming the fix.
``roc_curve``, ``pixel_report`` and ``image_auroc`` are exact (sklearn);
``pixel_scores`` streams per-batch histograms in ``O(num_bins)`` memory,
with error bounds (cost: docs/evaluation.md).

References:
  Liu et al., "Towards Visually Explaining Variational Autoencoders", CVPR
  2020, section 3.3.1 (pixel AUROC, best IoU).
  Bergmann et al., "The MVTec Anomaly Detection Dataset: A Comprehensive
  Real-World Dataset for Unsupervised Anomaly Detection", IJCV 2021,
  section 5.2 (per-region overlap, AUPRO up to FPR 0.3).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.ndimage
import sklearn.metrics

STATISTICS = ("max", "mean")


# Checks at the boundary.


def _check_scores(scores: np.ndarray) -> np.ndarray:
  scores = np.asarray(scores)
  if scores.ndim != 3:
    raise ValueError(
      f"scores must have shape [N, H, W], got shape {scores.shape}; squeeze "
      "a trailing channel axis or add a leading batch axis."
    )
  if not np.issubdtype(scores.dtype, np.number) or scores.dtype == bool:
    raise ValueError(f"scores must be a real-valued array, got {scores.dtype}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError(
      "scores contains NaN or infinite values; fix the anomaly maps (e.g. "
      "guard a division by zero in the normalisation) before scoring."
    )
  return scores


def _check_binary(values: np.ndarray, name: str) -> np.ndarray:
  values = np.asarray(values)
  if values.dtype != bool and not np.all((values == 0) | (values == 1)):
    raise ValueError(
      f"{name} must be binary (bool or 0/1), found values "
      f"{np.unique(values)[:5].tolist()}; for 0/255 PNG masks pass `masks > 0`."
    )
  return values.astype(bool)


def _check_pair(scores, masks) -> tuple[np.ndarray, np.ndarray]:
  scores, masks = _check_scores(scores), np.asarray(masks)
  if masks.shape != scores.shape:
    raise ValueError(
      f"masks shape {masks.shape} does not match scores shape "
      f"{scores.shape}; resize the anomaly maps to the mask resolution first."
    )
  return scores, _check_binary(masks, "masks")


def _check_labels(labels, num_images: int) -> np.ndarray:
  labels = _check_binary(labels, "labels")
  if labels.shape != (num_images,):
    raise ValueError(
      f"labels must have shape [N] = ({num_images},), got {labels.shape}."
    )
  return labels


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


def _check_options(max_fpr: float, connectivity: int) -> None:
  if not 0.0 < max_fpr <= 1.0:
    raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}.")
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")


# The curves and what is read off them.


def _region_weights(masks: np.ndarray, connectivity: int):
  """``(weights, num_regions)``: float64 ``[N, H, W]``, 1 / (size of the
  pixel's connected ground-truth region), 0 off regions; regions counted
  over all images."""
  structure = scipy.ndimage.generate_binary_structure(2, connectivity // 4)
  weights = np.zeros(masks.shape, np.float64)
  num_regions = 0
  for i, mask in enumerate(masks):
    labels, n = scipy.ndimage.label(mask, structure=structure)
    sizes = np.bincount(labels.ravel())
    weights[i] = np.r_[0.0, 1.0 / sizes[1:]][labels]
    num_regions += n
  return weights, num_regions


class _Curve(NamedTuple):
  """Rates at every threshold, highest first, from the point (0, 0)."""

  fpr: np.ndarray
  tpr: np.ndarray
  pro: np.ndarray | None  # Mean per-region overlap.
  thresholds: np.ndarray  # Starts at inf.
  num_pos: int
  num_neg: int


def _exact_curve(scores, masks, connectivity: int | None = None) -> _Curve:
  """One point per distinct score (``sklearn.metrics.roc_curve``).

  With ``connectivity``, also the PRO curve: weighting each anomalous pixel
  by 1 / (size of its region) and each normal pixel by 1, the weighted TPR
  is the mean per-region overlap and the weighted FPR the plain FPR.
  """
  num_pos = int(np.count_nonzero(masks))
  num_neg = masks.size - num_pos
  _check_both_classes(num_pos, num_neg, "pixels")
  y, s = masks.ravel(), scores.ravel()
  fpr, tpr, thresholds = sklearn.metrics.roc_curve(
    y, s, drop_intermediate=False
  )
  pro = None
  if connectivity is not None:
    weights, _ = _region_weights(masks, connectivity)
    _, pro, _ = sklearn.metrics.roc_curve(
      y, s, sample_weight=np.where(y, weights.ravel(), 1.0),
      drop_intermediate=False,
    )  # fmt: skip
  return _Curve(fpr, tpr, pro, thresholds, num_pos, num_neg)


def _integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
  """Trapezoidal area under ``y(x)`` (``x`` non-decreasing) on
  ``[x[0], x_max]``, the curve linearly interpolated at ``x_max``."""
  last = int(np.searchsorted(x, x_max, side="right")) - 1
  area = float(np.trapezoid(y[: last + 1], x[: last + 1]))
  if last + 1 < x.size and x[last] < x_max:
    x0, x1, y0, y1 = x[last], x[last + 1], y[last], y[last + 1]
    y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    area += 0.5 * (y0 + y_max) * (x_max - x0)
  return area


def _best_iou(curve: _Curve) -> tuple[float, float]:
  # IoU = TP / (TP + FP + FN) = TP / (P + FP), counts recovered from rates.
  tps = np.rint(curve.tpr * curve.num_pos)
  fps = np.rint(curve.fpr * curve.num_neg)
  ious = tps / (curve.num_pos + fps)
  best = int(np.argmax(ious))
  return float(ious[best]), float(curve.thresholds[best])


def _pixel_metrics(curve: _Curve, max_fpr: float) -> dict[str, float]:
  iou, threshold = _best_iou(curve)
  return {
    "pixel_auroc": float(np.trapezoid(curve.tpr, curve.fpr)),
    "best_iou": iou,
    "best_iou_threshold": threshold,
    "aupro": float(_integrate_to(curve.fpr, curve.pro, max_fpr) / max_fpr),
  }


# Exact metrics.


def roc_curve(scores, masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pixel ROC curve pooled over all pixels of all images: ``(fpr, tpr,
  thresholds)`` of ``sklearn.metrics.roc_curve(masks.ravel(),
  scores.ravel(), drop_intermediate=False)``.

  Raises:
    ValueError: mismatched shapes, non-binary masks, non-finite scores, or
      masks without a positive or a negative pixel.
  """
  curve = _exact_curve(*_check_pair(scores, masks))
  return curve.fpr, curve.tpr, curve.thresholds


def pixel_report(
  scores, masks, max_fpr: float = 0.3, *, connectivity: int = 8, curve=False
) -> dict[str, float] | tuple[dict[str, float], tuple]:
  """Pixel AUROC, best IoU and AUPRO from one ROC curve over all pixels.

  * ``pixel_auroc``: the area under :func:`roc_curve` (Liu et al., section
    3.3.1), equal to ``sklearn.metrics.roc_auc_score(masks.ravel(),
    scores.ravel())`` (ties count one half).
  * ``best_iou`` and ``best_iou_threshold``: the best IoU over all ROC
    thresholds (an oracle) and its threshold. At threshold ``t`` the
    predicted region is ``scores >= t`` and ``IoU = TP / (TP + FP + FN)``,
    pooled over all pixels. The threshold is chosen on the test ground
    truth (Liu et al., section 3.3.1, "best IoU"): an upper bound on what
    any fixed threshold achieves.
  * ``aupro``: the normalised area under the per-region-overlap curve up to
    ``max_fpr``. Each connected component ``C`` of the ground truth
    (``connectivity`` 8, as the MVTec-AD code, or 4) is one region;
    ``PRO(t) = mean_C |{p in C : score_p >= t}| / |C|``. The PRO-vs-FPR
    curve from (0, 0), linear between thresholds, is integrated with the
    trapezoid rule to ``max_fpr`` in ``(0, 1]`` and divided by it, so a
    perfect map scores 1 (Bergmann et al., IJCV 2021, section 5.2).

  Returns:
    ``{"pixel_auroc", "best_iou", "best_iou_threshold", "aupro"}``, floats;
    with ``curve=True``, ``(that dict, (fpr, tpr))``: also the
    :func:`roc_curve` it was computed from (one pass, not two).

  Raises:
    ValueError: as :func:`roc_curve`, or a bad ``max_fpr``/``connectivity``.

  Examples:
    >>> masks = np.zeros((2, 4, 4), bool)
    >>> masks[1, :2, :2] = True
    >>> report = pixel_report(masks * 0.9 + 0.05, masks)
    >>> report["pixel_auroc"], report["best_iou"], report["aupro"]
    (1.0, 1.0, 1.0)
  """
  _check_options(max_fpr, connectivity)
  exact = _exact_curve(*_check_pair(scores, masks), connectivity)
  report = _pixel_metrics(exact, max_fpr)
  return (report, (exact.fpr, exact.tpr)) if curve else report


def image_auroc(scores, labels, statistic: str = "max") -> float:
  """Image-level AUROC of each map's ``"max"`` or ``"mean"``:
  ``sklearn.metrics.roc_auc_score(labels, statistic(scores))``, ``labels``
  binary ``[N]``, 1 for anomalous (Bergmann et al., section 5.2).

  Raises:
    ValueError: bad shapes, non-binary or single-class labels, an unknown
      statistic.
  """
  if statistic not in STATISTICS:
    raise ValueError(
      f"statistic must be one of {STATISTICS}, got {statistic!r}."
    )
  scores = _check_scores(scores)
  labels = _check_labels(labels, len(scores))
  _check_both_classes(labels.sum(), (~labels).sum(), "images")
  reduce = np.max if statistic == "max" else np.mean
  return float(sklearn.metrics.roc_auc_score(labels, reduce(scores, (1, 2))))


# Streaming metrics: fixed-bin histograms with error bounds.


class PixelScoresState(NamedTuple):
  """Histograms of :class:`PixelScores`: anomalous / normal pixels per
  score bin (``pos``, ``neg``), the regions' fractions per bin (``pro``)
  and the number of ground-truth regions."""

  pos: np.ndarray
  neg: np.ndarray
  pro: np.ndarray
  num_regions: np.ndarray


class PixelScores:
  """Streaming pixel AUROC, best IoU and AUPRO (from :func:`pixel_scores`):
  pure ``init() -> state``, ``update(state, scores, masks) -> state`` (whole
  images of one size), ``compute(state) -> dict`` and ``curve(state) ->
  (fpr, tpr, thresholds)``."""

  def __init__(self, edges, max_fpr, connectivity):
    self.edges = edges
    self.max_fpr = max_fpr
    self.connectivity = connectivity

  def init(self) -> PixelScoresState:
    num_bins = len(self.edges) - 1
    counts = np.zeros(num_bins, np.int64)
    return PixelScoresState(
      counts, counts.copy(), np.zeros(num_bins), np.zeros((), np.int64)
    )

  def update(self, state, scores, masks) -> PixelScoresState:
    scores, masks = _check_pair(scores, masks)
    num_bins, low, high = len(self.edges) - 1, self.edges[0], self.edges[-1]
    scaled = (scores.astype(np.float64) - low) * (num_bins / (high - low))
    bins = np.clip(np.floor(scaled), 0, num_bins - 1).astype(np.int64)
    weights, num_regions = _region_weights(masks, self.connectivity)
    pos, neg = bins[masks], bins[~masks]
    return PixelScoresState(
      pos=state.pos + np.bincount(pos, minlength=num_bins),
      neg=state.neg + np.bincount(neg, minlength=num_bins),
      pro=state.pro + np.bincount(pos, weights[masks], minlength=num_bins),
      num_regions=state.num_regions + num_regions,
    )

  def _curve(self, state: PixelScoresState) -> _Curve:
    num_pos, num_neg = int(state.pos.sum()), int(state.neg.sum())
    _check_both_classes(num_pos, num_neg, "pixels")
    # Threshold edges[k]: flag every pixel of bins k..end (high to low).
    return _Curve(
      fpr=np.r_[0.0, np.cumsum(state.neg[::-1]) / num_neg],
      tpr=np.r_[0.0, np.cumsum(state.pos[::-1]) / num_pos],
      pro=np.r_[0.0, np.cumsum(state.pro[::-1]) / state.num_regions],
      thresholds=np.r_[np.inf, self.edges[:-1][::-1]],
      num_pos=num_pos,
      num_neg=num_neg,
    )

  def curve(self, state: PixelScoresState) -> tuple[np.ndarray, ...]:
    curve = self._curve(state)
    return curve.fpr, curve.tpr, curve.thresholds

  def compute(self, state: PixelScoresState) -> dict[str, float]:
    curve = self._curve(state)
    report = _pixel_metrics(curve, self.max_fpr)
    p, n = state.pos / curve.num_pos, state.neg / curve.num_neg
    # Boxes that start below max_fpr; one straddling it counts whole.
    boxes = np.diff(curve.fpr) * np.diff(curve.pro)
    boxes = boxes[curve.fpr[:-1] < self.max_fpr]
    report["pixel_auroc_error_bound"] = float(0.5 * np.sum(p * n))
    report["aupro_error_bound"] = float(0.5 * boxes.sum() / self.max_fpr)
    return report


def pixel_scores(
  score_range: tuple[float, float],
  num_bins: int = 1 << 16,
  *,
  max_fpr: float = 0.3,
  connectivity: int = 8,
) -> PixelScores:
  """A streaming accumulator of the metrics of :func:`pixel_report`.

  Scores are binned into ``num_bins`` equal bins over ``score_range``
  (outside it: the end bins); ``compute`` adds error bounds against the
  exact values:

  * ``pixel_auroc``: binning reorders only positive/negative pairs in one
    bin, which the binned AUROC counts one half, so ``|binned - exact| <=
    pixel_auroc_error_bound = 0.5 * sum_b p_b n_b`` (``p_b``, ``n_b``: the
    fractions of positive and negative pixels in bin ``b``).
  * ``best_iou``: exact at the bin edges, so a lower bound of the exact one.
  * ``aupro``: exact at the bin edges; the monotone exact curve stays in the
    box between two edges, so ``|binned - exact| <= aupro_error_bound =
    sum_k dFPR_k dPRO_k / (2 max_fpr)`` over the boxes below ``max_fpr``.

  Args:
    score_range: ``(low, high)``, finite, the range the scores lie in.
    num_bins: bins; ``2**16`` gives bounds of order 1e-5 on smooth scores.
    max_fpr: AUPRO integration limit.
    connectivity: AUPRO region connectivity, 8 or 4.

  Raises:
    ValueError: an empty ``score_range``, ``num_bins < 1``, a bad
      ``max_fpr`` or ``connectivity``.

  Examples:
    >>> acc = pixel_scores(score_range=(0.0, 1.0), num_bins=1024)
    >>> rng = np.random.default_rng(0)
    >>> masks = rng.random((4, 8, 8)) < 0.2
    >>> state = acc.update(acc.init(), 0.5 * rng.random((4, 8, 8)) + 0.5 *
    ...                    masks, masks)
    >>> round(acc.compute(state)["pixel_auroc"], 2)
    1.0
  """
  low, high = (float(v) for v in score_range)
  if not (np.isfinite(low) and np.isfinite(high) and low < high):
    raise ValueError(
      f"score_range must be finite with low < high, got {score_range}."
    )
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
  _check_options(max_fpr, connectivity)
  edges = np.linspace(low, high, num_bins + 1)
  return PixelScores(edges, max_fpr, connectivity)
