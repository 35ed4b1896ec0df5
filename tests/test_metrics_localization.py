"""Tests for eval.metrics.localization: sklearn agreement and known answers."""

import doctest

import numpy as np
import pytest
import scipy.ndimage
import sklearn.metrics

from eval.metrics import localization


def _random_maps(seed, shape=(6, 16, 16), decimals=None, dtype=np.float64):
  """Scores that are higher on the (random) anomalous pixels, plus noise."""
  rng = np.random.default_rng(seed)
  masks = rng.random(shape) < 0.15
  masks[0] = False  # At least one normal image.
  masks[1, 2:6, 3:9] = True  # At least one anomalous image with a region.
  scores = rng.random(shape) + 0.4 * masks
  if decimals is not None:  # Many ties.
    scores = scores.round(decimals)
  return scores.astype(dtype), masks


def _brute_force_curve(scores, masks, connectivity=8):
  """Per-threshold FPR, TPR, IoU and PRO computed directly from definitions."""
  structure = scipy.ndimage.generate_binary_structure(
    2, 1 if connectivity == 4 else 2
  )
  regions = []
  for i, mask in enumerate(masks):
    labels, n = scipy.ndimage.label(mask, structure=structure)
    regions += [(i, labels == r) for r in range(1, n + 1)]
  points = []
  for t in np.unique(scores)[::-1]:
    flagged = scores >= t
    tp = np.sum(flagged & masks)
    fp = np.sum(flagged & ~masks)
    fn = np.sum(~flagged & masks)
    pro = np.mean([flagged[i][region].mean() for i, region in regions])
    points.append(
      (fp / np.sum(~masks), tp / masks.sum(), tp / (tp + fp + fn), pro, t)
    )
  return np.array(points)


def _reference_aupro(fpr, pro, max_fpr):
  """Trapezoid area of the curve from (0, 0), cut by interpolation."""
  fpr = np.r_[0.0, fpr]
  pro = np.r_[0.0, pro]
  keep = fpr <= max_fpr
  x, y = list(fpr[keep]), list(pro[keep])
  if x[-1] < max_fpr and keep.sum() < fpr.size:
    nxt = keep.sum()
    slope = (pro[nxt] - y[-1]) / (fpr[nxt] - x[-1])
    y.append(y[-1] + slope * (max_fpr - x[-1]))
    x.append(max_fpr)
  area = sum(
    0.5 * (y[k] + y[k + 1]) * (x[k + 1] - x[k]) for k in range(len(x) - 1)
  )
  return area / max_fpr


@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_auroc_and_roc_curve_match_sklearn(decimals, dtype):
  scores, masks = _random_maps(0, decimals=decimals, dtype=dtype)
  expected = sklearn.metrics.roc_auc_score(masks.ravel(), scores.ravel())
  report = localization.pixel_report(scores, masks)
  assert abs(report["pixel_auroc"] - expected) < 1e-12
  fpr, tpr, thresholds = localization.roc_curve(scores, masks)
  ref = sklearn.metrics.roc_curve(
    masks.ravel(), scores.ravel(), drop_intermediate=False
  )
  np.testing.assert_allclose(fpr, ref[0], atol=1e-12)
  np.testing.assert_allclose(tpr, ref[1], atol=1e-12)
  np.testing.assert_array_equal(thresholds, ref[2])
  # The report with the curve it came from (eval.localization's one pass).
  with_curve, (fpr1, tpr1) = localization.pixel_report(
    scores, masks, curve=True
  )
  assert with_curve == report
  np.testing.assert_array_equal(fpr1, fpr)
  np.testing.assert_array_equal(tpr1, tpr)


def test_pixel_auroc_accepts_01_masks():
  scores, masks = _random_maps(1)
  as_01 = localization.pixel_report(scores, masks.astype(np.uint8))
  as_bool = localization.pixel_report(scores, masks)
  assert as_01["pixel_auroc"] == as_bool["pixel_auroc"]


def test_perfect_and_inverted_maps():
  _, masks = _random_maps(2)
  scores = masks.astype(np.float64)
  perfect = localization.pixel_report(scores, masks)
  inverted = localization.pixel_report(-scores, masks)
  assert perfect["pixel_auroc"] == 1.0
  assert inverted["pixel_auroc"] == 0.0
  assert (perfect["best_iou"], perfect["best_iou_threshold"]) == (1.0, 1.0)
  assert perfect["aupro"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 2])
def test_best_iou_matches_brute_force(decimals):
  scores, masks = _random_maps(3, shape=(4, 10, 10), decimals=decimals)
  curve = _brute_force_curve(scores, masks)
  best = np.argmax(curve[:, 2])
  report = localization.pixel_report(scores, masks)
  assert abs(report["best_iou"] - curve[best, 2]) < 1e-12
  assert report["best_iou_threshold"] == curve[best, 4]


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("max_fpr", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(connectivity, max_fpr):
  scores, masks = _random_maps(4, shape=(4, 10, 10), decimals=2)
  curve = _brute_force_curve(scores, masks, connectivity)
  expected = _reference_aupro(curve[:, 0], curve[:, 3], max_fpr)
  got = localization.pixel_report(
    scores, masks, max_fpr, connectivity=connectivity
  )["aupro"]
  assert abs(got - expected) < 1e-12


def test_aupro_hand_made_per_region_average():
  # Two regions: one of 1 pixel fully found, one of 4 pixels half found.
  # PRO = (1 + 1/2) / 2 = 0.75 at FPR 0 (while pixel TPR would be 3/5),
  # then a straight line to (1, 1): area to 0.3 is
  # 0.3 * (0.75 + 0.825) / 2, so AUPRO = 0.7875.
  masks = np.zeros((1, 6, 6), bool)
  masks[0, 0, 0] = True
  masks[0, 3:5, 3:5] = True
  scores = np.zeros((1, 6, 6))
  scores[0, 0, 0] = 1.0
  scores[0, 3, 3:5] = 1.0
  aupro = localization.pixel_report(scores, masks)["aupro"]
  assert aupro == pytest.approx(0.7875, abs=1e-12)


def test_aupro_hand_made_with_false_positives():
  # 16 normal pixels, 2 of them at 0.9: FPR 1/8 before any region pixel.
  # The region (4 pixels) is half found at 0.8, fully at 0.1. Curve:
  # (0,0) (1/8,0) (1/8,1/2) (1/8,1) (1,1): area to 0.3 = 0.175 -> 7/12.
  masks = np.zeros((1, 4, 5), bool)
  masks[0, :2, :2] = True
  scores = np.zeros((1, 4, 5))
  scores[0, 3, 3:5] = 0.9
  scores[0, 0, :2] = 0.8
  scores[0, 1, :2] = 0.1
  aupro = localization.pixel_report(scores, masks)["aupro"]
  assert aupro == pytest.approx(7 / 12, abs=1e-12)
  # Over the whole curve: 1/8 * 0 + 7/8 * 1 = 0.875.
  whole = localization.pixel_report(scores, masks, max_fpr=1.0)["aupro"]
  assert whole == pytest.approx(0.875)


def test_aupro_connectivity_changes_regions():
  # Two diagonal neighbours: one region with 8-connectivity, two with 4.
  masks = np.zeros((1, 5, 5), bool)
  masks[0, 1, 1] = masks[0, 2, 2] = True
  masks[0, 2, 1] = True  # Region {(1,1),(2,1),(2,2)} is 4-connected anyway.
  masks[0, 3, 3] = True  # Diagonal to (2,2): joins only with 8-connectivity.
  scores = np.zeros((1, 5, 5))
  scores[0, 3, 3] = 1.0
  # 8: one region of 4 pixels, 1/4 found -> PRO 0.25; 4: regions of 3 and 1,
  # (0 + 1) / 2 = 0.5. AUPRO = p + 0.15 (1 - p).
  eight = localization.pixel_report(scores, masks, connectivity=8)["aupro"]
  four = localization.pixel_report(scores, masks, connectivity=4)["aupro"]
  assert eight == pytest.approx(0.25 + 0.15 * 0.75)
  assert four == pytest.approx(0.5 + 0.15 * 0.5)


@pytest.mark.parametrize("statistic", ["max", "mean"])
def test_image_auroc_matches_sklearn(statistic):
  scores, masks = _random_maps(5)
  labels = masks.reshape(6, -1).any(axis=1)
  reduce = np.max if statistic == "max" else np.mean
  expected = sklearn.metrics.roc_auc_score(labels, reduce(scores, axis=(1, 2)))
  got = localization.image_auroc(scores, labels, statistic)
  assert abs(got - expected) < 1e-12


def test_pixel_report_matches_definitions():
  scores, masks = _random_maps(6, decimals=2)
  report = localization.pixel_report(scores, masks)
  curve = _brute_force_curve(scores, masks)
  best = np.argmax(curve[:, 2])
  fpr, tpr, _ = localization.roc_curve(scores, masks)
  expected = {
    "pixel_auroc": np.trapezoid(tpr, fpr),
    "best_iou": curve[best, 2],
    "best_iou_threshold": curve[best, 4],
    "aupro": _reference_aupro(curve[:, 0], curve[:, 3], 0.3),
  }
  assert report.keys() == expected.keys()
  for key, value in expected.items():
    assert abs(report[key] - value) < 1e-12, key
    assert isinstance(report[key], float), key
  # The image-level AUROC beside it, as eval.localization.score adds it:
  # an image is anomalous when its mask has a positive.
  labels = masks.reshape(6, -1).any(axis=1)
  for statistic in localization.STATISTICS:
    image = localization.image_auroc(scores, labels, statistic)
    assert isinstance(image, float), statistic


@pytest.mark.parametrize("num_bins", [256, 4096])
def test_binned_pixel_scores_within_stated_bounds(num_bins):
  scores, masks = _random_maps(7, shape=(8, 24, 24))
  scores = scores / scores.max()
  exact = localization.pixel_report(scores, masks)
  accumulator = localization.pixel_scores((0.0, 1.0), num_bins)
  state = accumulator.init()
  for start in range(0, 8, 3):  # Uneven batches.
    batch = slice(start, start + 3)
    state = accumulator.update(state, scores[batch], masks[batch])
  binned = accumulator.compute(state)
  auroc_bound = binned["pixel_auroc_error_bound"]
  assert abs(binned["pixel_auroc"] - exact["pixel_auroc"]) <= auroc_bound
  assert abs(binned["aupro"] - exact["aupro"]) <= binned["aupro_error_bound"]
  assert binned["best_iou"] <= exact["best_iou"] + 1e-12
  # The bounds shrink like 1 / num_bins on continuous scores.
  assert auroc_bound < 50 / num_bins
  assert binned["aupro_error_bound"] < 50 / num_bins
  assert exact["best_iou"] - binned["best_iou"] < 50 / num_bins
  bounds = {"pixel_auroc_error_bound", "aupro_error_bound"}
  assert binned.keys() == exact.keys() | bounds


def test_binned_pixel_scores_is_exact_on_bin_aligned_scores():
  # Scores on the bin grid: every pixel sits at a bin edge; no information
  # is lost, so the binned AUROC equals sklearn's (ties count one half).
  scores, masks = _random_maps(8)
  scores = np.floor(scores / scores.max() * 9.999)  # Integers 0..9.
  accumulator = localization.pixel_scores((0.0, 10.0), num_bins=10)
  state = accumulator.update(accumulator.init(), scores, masks)
  binned = accumulator.compute(state)
  expected = sklearn.metrics.roc_auc_score(masks.ravel(), scores.ravel())
  assert abs(binned["pixel_auroc"] - expected) < 1e-12


def test_pixel_scores_clips_out_of_range_scores_into_end_bins():
  scores, masks = _random_maps(9)
  accumulator = localization.pixel_scores((0.2, 0.8), num_bins=64)
  state = accumulator.update(accumulator.init(), scores, masks)
  assert int(state.pos.sum() + state.neg.sum()) == scores.size
  binned = accumulator.compute(state)
  exact = localization.pixel_report(scores, masks)["pixel_auroc"]
  assert abs(binned["pixel_auroc"] - exact) <= binned["pixel_auroc_error_bound"]


@pytest.mark.parametrize(
  "scores, masks, message",
  [
    (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), "does not match"),
    (np.zeros((2, 4, 4)), np.full((2, 4, 4), 255), "binary"),
    (np.zeros((4, 4)), np.zeros((4, 4)), r"\[N, H, W\]"),
    (np.full((2, 4, 4), np.nan), np.eye(4)[None].repeat(2, 0), "NaN"),
    (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), "No anomalous"),
    (np.zeros((2, 4, 4)), np.ones((2, 4, 4)), "No normal"),
  ],
)
def test_bad_inputs_raise(scores, masks, message):
  for fn in (localization.roc_curve, localization.pixel_report):
    with pytest.raises(ValueError, match=message):
      fn(scores, masks)


def test_bad_arguments_raise():
  scores, masks = _random_maps(10)
  labels = masks.reshape(6, -1).any(axis=1)
  with pytest.raises(ValueError, match="statistic"):
    localization.image_auroc(scores, labels, "median")
  with pytest.raises(ValueError, match="labels must have shape"):
    localization.image_auroc(scores, labels[:3])
  with pytest.raises(ValueError, match="No normal images"):
    localization.image_auroc(scores, np.ones(6, bool))
  with pytest.raises(ValueError, match="max_fpr"):
    localization.pixel_report(scores, masks, max_fpr=0.0)
  with pytest.raises(ValueError, match="connectivity"):
    localization.pixel_report(scores, masks, connectivity=6)
  with pytest.raises(ValueError, match="score_range"):
    localization.pixel_scores((1.0, 1.0))
  accumulator = localization.pixel_scores((0.0, 1.0))
  with pytest.raises(ValueError, match="No anomalous pixels"):
    accumulator.compute(accumulator.init())


def test_docstring_examples_run():
  result = doctest.testmod(localization)
  assert result.attempted >= 3 and result.failed == 0


def test_pixel_scores_pools_images_of_different_sizes():
  # Two sizes in one state (maps at each mask's original resolution) give
  # the exact metrics of all pixels pooled.
  small, small_masks = _random_maps(11, shape=(3, 8, 8))
  large, large_masks = _random_maps(12, shape=(3, 12, 12))
  top = max(small.max(), large.max())
  acc = localization.pixel_scores((0.0, top), 1 << 12)
  state = acc.update(acc.init(), small, small_masks)
  state = acc.update(state, large, large_masks)
  binned = acc.compute(state)
  assert "image_auroc_max" not in binned
  flat_scores = np.r_[small.ravel(), large.ravel()]
  flat_masks = np.r_[small_masks.ravel(), large_masks.ravel()]
  exact = sklearn.metrics.roc_auc_score(flat_masks, flat_scores)
  assert abs(binned["pixel_auroc"] - exact) <= binned["pixel_auroc_error_bound"]
  iou = localization.pixel_report(
    flat_scores[None, None], flat_masks[None, None]
  )["best_iou"]
  assert iou - 1e-2 < binned["best_iou"] <= iou + 1e-12
  fpr, tpr, thresholds = acc.curve(state)
  assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
  assert np.isinf(thresholds[0]) and np.all(np.diff(thresholds[1:]) < 0)
  np.testing.assert_allclose(np.trapezoid(tpr, fpr), binned["pixel_auroc"])
