r"""Anomaly localization of a one-class VAE (paper section 3.3, Table 2).

  python -m eval.localization --workdir=runs/oneclass_textures
  python -m eval.localization --workdir=runs/mvtec_bottle \
      --dataset=mvtec --data-dir=/data/mvtec_ad --category=bottle
  python -m eval.localization --workdir=runs/ped1 --dataset=ped1 \
      --data-dir=/data/UCSD_Anomaly_Dataset.v1p2 --ablation

Restores the VAE of --workdir (eval.restore.load_run), runs the test split
of a data set through it and scores, against the pixel masks:

* attention maps (eq. 3-4) of the code "mu" and of the normal difference
  distribution ("difference", eq. 5, averaged over --num-samples draws) at
  the chosen layer(s);
* the reconstruction-residual baseline |x - sigmoid(decode(mu))|.

Each gets pixel AUROC and the best IoU over the ROC thresholds (the paper's
Table 2 columns), plus AUPRO (FPR <= 0.3) and image AUROC of the map max and
mean, under the protocol the report names (--resolution; model: masks
resized by nearest neighbour, which can delete small defects). The latent
statistics of the normal data come from the checkpoint, else from one pass
over the training split. The data set, folder and category default to the
run's (its spec.json), else to the offline textured-defect set.

Writes into --out (default <workdir>/eval/localization): results.json,
report.md, roc.png (pixel ROC curves), overlays.png (Fig. 6 style: image,
ground truth, maps on the image) and with --ablation, ablation.png.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eval import cli, restore
from eval.metrics import localization as pixel_metrics
from vae_attn import anomaly
from vae_attn import attention as attention_lib
from vae_attn.data import datasets, image_mask, images, pipeline, textures
from workflow import configs, figures, runs

# Test data: from the flags, else the run spec, else the offline set.

DATASETS = datasets.WITH_MASKS


class DataOptions(NamedTuple):
  """The test data of an evaluation."""

  dataset: str  # One of DATASETS.
  data_dir: str | None  # None: the offline set's cache.
  category: str | None  # The MVTec-AD or textures category.


def load_splits(
  spec: runs.RunSpec | None,
  image_size: tuple[int, int],
  *,
  dataset: str | None = None,
  data_dir: str | None = None,
  category: str | None = None,
) -> tuple[Any, Any, DataOptions]:
  """``(test_source, train_source, options)`` of the flags' data set,
  folder and category, else the run spec's (its folder and category only
  for the data set it was trained on), else the offline textured-defect
  set, through the one data-set table (``vae_attn.data.datasets.load``).

  Raises:
    ValueError: the data set has no pixel masks.
    vae_attn.data.DataError: from the loader.
  """
  kwargs = dict(spec.data_kwargs) if spec is not None else {}
  dataset = dataset or (spec.data if spec is not None else None) or "textures"
  same_data = spec is not None and dataset == spec.data
  if dataset not in DATASETS:
    raise ValueError(
      f"Localization needs pixel masks; data set {dataset!r} has none: score "
      "a one-class run of a masked set (python -m train.oneclass "
      f"--dataset={'|'.join(DATASETS)})."
    )
  if spec is not None and not same_data:
    cli.stage(f"WARNING: this run trained on {spec.data}, scored on {dataset}")
  data_dir = data_dir or (spec.data_dir if same_data else None) or None
  category = category or (kwargs.get("category") if same_data else None)
  if dataset == "textures":  # The offline set's default category, named.
    category = category or textures.CATEGORIES[0]
  options = DataOptions(dataset, data_dir, category or None)
  load = dict(
    data_dir=data_dir, category=options.category, image_size=image_size
  )
  test, train = (datasets.load(dataset, s, **load) for s in ("test", "train"))
  return test, train, options


class Subset:
  """Records ``indices`` of a source (random access, for the pipeline)."""

  def __init__(self, source, indices: np.ndarray):
    self._source, self.indices = source, indices
    self.name = f"{getattr(source, 'name', 'source')}[subset]"
    every = getattr(source, "entries", None)  # Of an image-and-mask source.
    self.entries = None if every is None else [every[i] for i in indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self._source[int(self.indices[index])]


def subset(source, max_images: int | None):
  """At most ``max_images`` records, evenly spaced over the (sorted, normal
  first) source, so normal and anomalous images both stay."""
  if max_images is None or max_images >= len(source):
    return source
  indices = np.linspace(0, len(source) - 1, max_images).round()
  return Subset(source, np.unique(indices.astype(np.int64)))


def to_channels(x: np.ndarray, channels: int) -> np.ndarray:
  """Matches the data's channels to the model's (grey <-> RGB)."""
  if x.shape[-1] == channels:
    return x
  if channels == 1:
    return x.mean(axis=-1, keepdims=True)
  return np.repeat(x, channels, axis=-1)


# Maps of the methods attention_<code>/<layer> (no encoder/ prefix), at
# layer resolution, and residual, at the model's input size.

CODES = ("mu", "difference")


def short(layer: str) -> str:
  """``encoder/conv2`` -> ``conv2`` (the name used in reports)."""
  return layer.removeprefix("encoder/")


def method_name(code: str, layer: str) -> str:
  """The name of the attention maps of ``code`` at ``layer``."""
  return f"attention_{code}/{short(layer)}"


def _probe(run: restore.Run) -> jax.Array:
  return jnp.zeros((1, *run.input_shape), jnp.float32)


def ablation_layers(run: restore.Run) -> list[str]:
  """Every top-level encoder conv block, or the ResNet's stage heads."""
  valid = attention_lib.layer_paths(run.encode_fn, run.variables, _probe(run))
  convs = [p for p in valid if re.fullmatch(r"encoder/conv\d+", p)]
  if convs:
    return convs
  return [p for p in valid if re.fullmatch(r"encoder/stage\d_block1/conv1", p)]


def resolve_layers(run: restore.Run, layers: Sequence[str]) -> list[str]:
  """Full paths of ``layers`` (unique suffixes allowed), without repeats.

  Raises:
    ValueError: a layer is unknown or ambiguous (the valid ones are listed).
  """
  try:
    paths = attention_lib.resolve_layers(
      run.encode_fn, run.variables, _probe(run), list(layers)
    )
  except ValueError as e:
    raise ValueError(f"--layers: {e}") from None
  return list(dict.fromkeys(paths.values()))


def make_maps_fn(
  run: restore.Run,
  layers: Sequence[str],
  codes: Sequence[str],
  num_samples: int,
  **attention_kwargs,
):
  """A jitted ``fn(variables, x, stats, key) -> {method: maps}``: attention
  maps ``[B, h, w]`` at layer resolution, the residual ``|x -
  sigmoid(decode(mu))|`` ``[B, H, W]``; every array is an argument.
  """
  layers = list(layers)
  encode_fn, model = run.encode_fn, run.model

  def maps_fn(variables, x, stats, key):
    out = {}
    (mu, _), maps = attention_lib.value_and_attention(
      encode_fn, layers, code="mu", **attention_kwargs
    )(variables, x)
    if "mu" in codes:
      for layer in layers:
        out[method_name("mu", layer)] = maps[layer].mean
    if "difference" in codes:
      draws = anomaly.difference_attention(
        encode_fn, layers, variables, x, stats, key,
        num_samples=num_samples, **attention_kwargs,
      )  # fmt: skip
      for layer in layers:
        out[method_name("difference", layer)] = draws[layer].mean
    x_hat = jax.nn.sigmoid(model.apply(variables, mu, method=model.decode))
    out["residual"] = anomaly.residual_map(x, x_hat)
    return out

  return jax.jit(maps_fn)


def _batches(source, batch_size: int, desc: str):
  """One pass over ``source`` in batches, with progress."""
  total = -(-len(source) // batch_size)
  batches = pipeline.single_pass(source, batch_size, num_threads=0)
  return cli.progress(batches, total=total, desc=desc)


def _records(batch: dict, channels: int) -> dict[str, np.ndarray]:
  """The fields of a test batch that scoring and figures need."""
  n = len(batch["image"])
  return {
    "image": to_channels(np.asarray(batch["image"], np.float32), channels),
    "mask": np.asarray(batch["mask"])[..., 0] > 0.5,
    "label": np.asarray(batch["label"]).astype(bool),
    "has_mask": np.asarray(batch.get("has_mask", np.ones(n))).astype(bool),
    "defect_type": np.asarray(batch.get("defect_type", [""] * n), object),
  }


def compute_maps(
  run: restore.Run,
  test_source,
  stats: anomaly.LatentStats | None,
  *,
  layers: Sequence[str],
  codes: Sequence[str],
  num_samples: int,
  batch_size: int,
  seed: int,
  **attention_kwargs,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Runs the test split through the model; returns ``(maps, data)``.

  ``maps``: method -> float32 maps (codes x layers, then the residual);
  ``data``: ``image [N, H, W, C]``, ``mask [N, H, W]`` (bool, model size),
  ``label``, ``has_mask`` and ``defect_type`` ``[N]``.

  Raises:
    ValueError: the test split is empty.
  """
  fn = make_maps_fn(run, layers, codes, num_samples, **attention_kwargs)
  key = jax.random.key(seed)
  channels = run.input_shape[-1]
  maps: dict[str, list] = {}
  data: dict[str, list] = {}
  for i, batch in enumerate(_batches(test_source, batch_size, "maps")):
    records = _records(batch, channels)
    x, key_i = jnp.asarray(records["image"]), jax.random.fold_in(key, i)
    out = jax.device_get(fn(run.variables, x, stats, key_i))
    for name, value in out.items():
      maps.setdefault(name, []).append(np.asarray(value, np.float32))
    for name, value in records.items():
      data.setdefault(name, []).append(value)
  if not data:
    raise ValueError(
      "The test split is empty; check --data-dir and --category."
    )
  order = [method_name(c, p) for c in codes for p in layers]
  maps_np = {k: np.concatenate(maps[k]) for k in [*order, "residual"]}
  return maps_np, {k: np.concatenate(v) for k, v in data.items()}


def latent_stats(
  run: restore.Run, train_source, batch_size: int
) -> tuple[anomaly.LatentStats, str]:
  """The checkpoint's statistics, or one pass over the training split."""
  if run.latent_stats is not None:
    return run.latent_stats, "checkpoint"
  channels = run.input_shape[-1]
  batches = (
    to_channels(np.asarray(b["image"], np.float32), channels)
    for b in _batches(train_source, batch_size, "latent statistics")
  )
  stats = anomaly.latent_statistics(run.encode_fn, run.variables, batches)
  return stats, f"computed from the training split ({int(stats.count)} images)"


# Scores under one of two protocols: "original" (the MVTec-AD protocol: maps
# upsampled to each mask file's size, binned metrics with error bounds) or
# "model" (masks resized to the model's input size; exact metrics). Pixel
# metrics pool the images with a mask; image AUROC ranks every test image.

RESOLUTIONS = ("original", "model")
NUM_BINS = 1 << 16


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """``[N, h, w]`` maps at ``size`` (``vae_attn.attention.upsample``)."""
  if tuple(maps.shape[-2:]) == tuple(size):
    return maps
  return np.asarray(attention_lib.upsample(maps, tuple(size)), np.float32)


def original_masks(
  entries: Sequence[image_mask.Entry], has_mask: np.ndarray
) -> dict[int, np.ndarray]:
  """Index -> bool ``[H, W]`` mask at its image's size, for the images with
  ``has_mask`` (all False without a mask file); raises ``DataError``."""
  masks = {}
  for i in np.flatnonzero(has_mask):
    entry = entries[i]
    if entry.mask is None:
      masks[i] = np.zeros(images.image_size_of(entry.image), bool)
    else:
      masks[i] = images.read_mask(entry.mask)[..., 0] > 0
  return masks


def _original_size(native: np.ndarray, masks: Mapping[int, np.ndarray]):
  """Binned metrics with each map upsampled to its mask's size."""
  lo, hi = float(native.min()), float(native.max())
  acc = pixel_metrics.pixel_scores((lo, hi if hi > lo else lo + 1.0), NUM_BINS)
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
    data: ``mask [N, H, W]`` (bool, model size), ``label``, ``has_mask``.
    resolution: ``"model"``, or ``"original"`` with ``masks`` (index ->
      bool ``[H_i, W_i]``, :func:`original_masks`).
    on_method: optional ``fn(method, scores)`` called after each method.

  Returns:
    ``(scores, curves)``: method -> ``pixel_auroc``, ``best_iou``,
    ``best_iou_threshold``, ``aupro``, ``image_auroc_{max,mean}`` (and for
    ``"original"`` error bounds); method -> ``(fpr, tpr, pixel_auroc)``.

  Raises:
    ValueError: no anomalous pixel, or a single class of images.
  """
  has_mask, labels = data["has_mask"], data["label"]
  if resolution == "original":
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
  size = data["mask"].shape[1:]
  scores, curves = {}, {}
  for name, native in maps.items():
    at_model_size = upsample(native, size)
    if resolution == "model":
      masked, gt = at_model_size[has_mask], data["mask"][has_mask]
      report, (fpr, tpr) = pixel_metrics.pixel_report(masked, gt, curve=True)
    else:
      report, (fpr, tpr) = _original_size(native, masks)
    for stat in pixel_metrics.STATISTICS:
      auroc = pixel_metrics.image_auroc(at_model_size, labels, stat)
      report[f"image_auroc_{stat}"] = auroc
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


# Report (paper Table 2) and figures (Fig. 6). The paper's numbers
# (docs/paper.md#results), for the reference rows:
PAPER_MVTEC = {
  "carpet": (0.78, 0.10),
  "grid": (0.73, 0.02),
  "leather": (0.95, 0.24),
  "tile": (0.80, 0.23),
  "wood": (0.77, 0.14),
  "bottle": (0.87, 0.27),
  "cable": (0.90, 0.18),
  "capsule": (0.74, 0.11),
  "hazelnut": (0.98, 0.44),
  "metal_nut": (0.94, 0.49),
  "pill": (0.83, 0.18),
  "screw": (0.97, 0.17),
  "toothbrush": (0.94, 0.14),
  "transistor": (0.93, 0.30),
  "zipper": (0.78, 0.06),
}
PAPER_PED1 = {"residual": 0.86, "conv1": 0.89, "conv2": 0.92, "conv3": 0.91}

COLUMNS = (
  ("pixel_auroc", "pixel AUROC"),
  ("best_iou", "best IoU"),
  ("aupro", "AUPRO"),
  ("image_auroc_max", "image AUROC (max)"),
  ("image_auroc_mean", "image AUROC (mean)"),
)


def _code_and_layer(method: str) -> tuple[str | None, str | None]:
  if method == "residual":
    return None, None
  kind, layer = method.split("/", 1)
  return kind.removeprefix("attention_"), layer


def label(method: str, multiline: bool = False) -> str:
  """Display name of a method (two lines for figure column titles)."""
  code, layer = _code_and_layer(method)
  if code is None:
    return (
      "reconstruction\nresidual" if multiline else "reconstruction residual"
    )
  return f"attention ({code})" + ("\n" if multiline else " @ ") + layer


def row(method: str, values: Mapping[str, float]) -> dict:
  """A ``results.json`` row: method, code, layer and the metrics."""
  code, layer = _code_and_layer(method)
  kind = "residual" if code is None else "attention"
  return {"method": kind, "code": code, "layer": layer, **values}


def _fmt(value: float | None) -> str:
  return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


def ablation_table(
  scores: Mapping[str, Mapping[str, float]],
  layers: Sequence[str],
  codes: Sequence[str],
  paper: Mapping[str, float] | None,
) -> list[str]:
  """Markdown lines: pixel AUROC per layer and code, and the residual."""
  head = ["layer", *(f"attention ({c})" for c in codes)]
  rows = [
    [short(p), *(_fmt(scores[method_name(c, p)]["pixel_auroc"]) for c in codes)]
    for p in layers
  ]
  residual = _fmt(scores["residual"]["pixel_auroc"])
  rows.append(["residual", residual, *[""] * (len(codes) - 1)])
  if paper:
    head.append("paper")
    for row, name in zip(rows, [*map(short, layers), "residual"], strict=True):
      row.append(_fmt(paper.get(name)))
  return cli.markdown_table(head, rows)


def _intro(meta: Mapping[str, Any]) -> list[str]:
  size = meta["image_size"]
  return [
    f"Model `{meta['model']}` trained on {meta.get('trained_on') or 'unknown'} "
    f"data, from `{meta['workdir']}` (step {meta['step']}); "
    f"{meta['num_test_images']} test images ({meta['num_anomalous']} "
    f"anomalous, {meta['num_with_masks']} with pixel masks), model input "
    f"{size[0]}x{size[1]}. Latent statistics: {meta['latent_stats']}. "
    f"Difference code averaged over {meta['num_samples']} draws (seed "
    f"{meta['seed']}).",
    "",
    f"Protocol (`--resolution={meta['resolution']}`): "
    f"{meta['protocol']}. Pixel metrics pool all pixels of the masked test "
    "images; best IoU uses the oracle threshold (chosen on the test ground "
    "truth, as in the paper); AUPRO integrates to FPR 0.3; image AUROC "
    "scores each image by the max or mean of its map at model size. Single "
    "run: see `python -m eval.aggregate` for the mean and spread over seeds.",
  ]


def _error_bounds(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  bounds = [
    max(r.get("pixel_auroc_error_bound", 0.0), r.get("aupro_error_bound", 0.0))
    for r in rows
  ]
  if not any(bounds):
    return []
  return [
    "",
    f"Binning error: every pixel AUROC and AUPRO above is within "
    f"{max(bounds):.1e} of its exact value (bounds in results.json).",
  ]


def report_lines(results: Mapping[str, Any]) -> list[str]:
  """``report.md`` in the Table 2 format (plus AUPRO and image AUROC)."""
  meta = results["meta"]
  where = meta["dataset"] + (f"/{meta['category']}" if meta["category"] else "")
  rows = [
    [r["method"], r["code"] or "-", r["layer"] or "-"]
    + [_fmt(r[k]) for k, _ in COLUMNS]
    for r in results["rows"]
  ]
  if "mvtec" in results.get("paper", {}):
    auroc, iou = results["paper"]["mvtec"]
    paper = ["paper (Liu et al., Table 2)", "difference", "-"]
    rows.append([*paper, f"{auroc:.2f}", f"{iou:.2f}", "-", "-", "-"])
  head = ["method", "code", "layer", *(c[1] for c in COLUMNS)]
  lines = [f"# Anomaly localization: {where}", "", *_intro(meta), ""]
  lines += cli.markdown_table(head, rows)
  lines += _error_bounds(results["rows"])
  if "ablation" in results:
    lines += ["", "## Layer ablation (pixel AUROC)", ""]
    lines += results["ablation"]["table"]
  lines += [
    "",
    "## Figures",
    "",
    "- `roc.png`: pixel ROC curves of every method (AUROC in the legend).",
    "- `overlays.png`: image, ground truth, and each method's map on the "
    "image at model size; each method's maps share one colour scale over "
    "the test set (0 to its 99.5th percentile, the colour bar under the "
    "last row), so normal images stay cold when the method separates them; "
    "an all-zero map is hatched with a 0 badge.",
  ]
  if "ablation" in results:
    lines.append("- `ablation.png`: pixel AUROC per attention layer.")
  return [*lines, "", f"Elapsed: {results['elapsed_time']:.1f} s.", ""]


def in_turn(groups: Sequence[str], num: int) -> list[int]:
  """Indices of at most ``num`` items: the first of each group, then the
  second of each, and so on (groups in order of appearance)."""
  members: dict[str, list[int]] = {}
  for i, group in enumerate(groups):
    members.setdefault(group, []).append(i)
  rounds = itertools.zip_longest(*members.values())
  return [i for r in rounds for i in r if i is not None][:num]


def pick_overlay_images(data: Mapping[str, np.ndarray], num: int) -> list[int]:
  """Anomalous images of each defect type in turn, then one normal image."""
  labels = data["label"]
  anomalous = np.flatnonzero(labels & data["has_mask"])
  types = [str(t) for t in data["defect_type"][anomalous]]
  picked = [int(anomalous[i]) for i in in_turn(types, num - 1)]
  return picked + [int(i) for i in np.flatnonzero(~labels)[:1]]


def write_figures(
  out: str,
  maps: Mapping[str, np.ndarray],
  data: Mapping[str, np.ndarray],
  curves: Mapping[str, tuple],
  *,
  where: str,
  num_overlays: int,
  ablation: Mapping[str, float] | None = None,
  ablation_title: str = "",
) -> dict[str, Any]:
  """Writes ``roc.png``, ``overlays.png`` (and ``ablation.png``); returns
  their paths and ``overlay_rows`` (the defect types shown)."""
  written: dict[str, Any] = {}
  written["roc"] = figures.roc_curves(
    os.path.join(out, "roc.png"),
    {label(k): v for k, v in curves.items()},
    title=f"pixel ROC, {where}",
  )
  picked = pick_overlay_images(data, num_overlays)
  size = data["mask"].shape[1:]
  shown, scales = {}, {}
  for name, m in maps.items():
    at_size = upsample(m, size)
    shown[label(name, multiline=True)] = at_size[picked]
    scales[label(name, multiline=True)] = float(np.percentile(at_size, 99.5))
  rows = [str(data["defect_type"][i]) for i in picked]
  written["overlays"] = figures.localization_overlays(
    os.path.join(out, "overlays.png"),
    data["image"][picked],
    data["mask"][picked],
    shown,
    scales,
    row_titles=rows,
    title=f"{where}: image, ground truth, maps",
  )
  written["overlay_rows"] = rows
  if ablation:
    written["ablation"] = figures.layer_ablation(
      os.path.join(out, "ablation.png"), ablation, title=ablation_title
    )
  return written


# The command.


@dataclasses.dataclass(frozen=True)
class Config(cli.SavedRun):
  """What python -m eval.localization scores (a one-class run) and where."""

  dataset: str | None = configs.field(
    None, "test data (default: the run's, else textures)", DATASETS
  )
  data_dir: str | None = configs.field(
    None,
    "data set folder (default: the run's, from its spec.json)",
    alias="--root",
  )
  category: str | None = configs.field(
    None, "MVTec-AD / textures category (default: the run's)"
  )
  layers: tuple[str, ...] = configs.field(
    (),
    "attention layer(s), full paths or unique suffixes (default: the run's "
    "layer)",
  )
  ablation: bool = configs.field(
    False, "also score every encoder conv block (Ped1 conv1/conv2/conv3)"
  )
  codes: tuple[str, ...] = configs.field(
    CODES, "attention codes to score", CODES, nargs="*"
  )
  num_samples: int = configs.field(
    8, "eq. 5 draws per image", interval="[1, inf)"
  )
  positive: str = cli.positive_field()
  chunk_size: int | None = configs.field(
    None,
    "latents per pullback chunk, bounds accelerator memory (default: all at "
    "once, or about 256 rows on CPU)",
    interval="[1, inf)",
  )
  batch_size: int = configs.field(8, "test images a batch", interval="[1, inf)")
  max_images: int | None = configs.field(
    None,
    "evaluate at most this many test images, evenly spaced, normal and "
    "anomalous (default: all; quick runs)",
    interval="[2, inf)",
  )
  num_overlays: int = configs.field(
    6, "rows of overlays.png", interval="[2, inf)"
  )
  seed: int = configs.field(
    0, "seed of the eq. 5 draws", interval=configs.SEEDS
  )
  resolution: str = configs.field(
    "original",
    "original: maps upsampled to each mask's original size (the MVTec-AD "
    "protocol); model: masks resized to the model's input size",
    RESOLUTIONS,
  )
  out: str | None = configs.field(
    None, "output folder (default: <workdir>/eval/localization)"
  )

  def __post_init__(self):
    if not self.codes:
      raise ValueError(f"--codes: name at least one of {', '.join(CODES)}.")


def _load(config: Config):
  """The run, its test data and the layers to score."""
  cli.stage(f"restoring {config.workdir}")
  run = restore.load_run(config.workdir, step=config.step)
  cli.check_trainer(
    run.spec,
    config.workdir,
    "oneclass",
    ", not a one-class anomaly model, so eval.localization does not apply; "
    f"score it with: python -m eval.disentanglement --workdir={config.workdir}",
  )
  flags = {k: getattr(config, k) for k in ("dataset", "data_dir", "category")}
  test, train, options = load_splits(run.spec, run.input_shape[:2], **flags)
  test = subset(test, config.max_images)
  cli.stage(
    f"{options.dataset}/{options.category or '-'}: {len(test)} test images, "
    f"{len(train)} training images, model {run.name} (step {run.step})"
  )
  layers = resolve_layers(run, config.layers or [run.default_layer])
  if config.ablation:
    layers = list(dict.fromkeys([*ablation_layers(run), *layers]))
  return run, options, test, train, layers


def _score(config: Config, test, maps, data):
  """Scores every method under ``config.resolution``; one line per method."""
  masks = None
  if config.resolution == "original":
    entries = getattr(test, "entries", None)
    if entries is None:
      raise ValueError(
        f"{test!r} does not name its mask files, so --resolution=original "
        "cannot read them; pass --resolution=model."
      )
    cli.stage(f"reading {int(data['has_mask'].sum())} masks at original size")
    masks = original_masks(entries, data["has_mask"])
  cli.stage(f"scoring {len(maps)} methods at {config.resolution} resolution")

  def on_method(name, values):
    cli.stage(
      f"  {label(name)}: pixel AUROC "
      f"{values['pixel_auroc']:.3f}, AUPRO {values['aupro']:.3f}"
    )

  scores, curves = score(
    maps, data, resolution=config.resolution, masks=masks, on_method=on_method
  )
  protocol = describe(config.resolution, masks, data["mask"].shape[1:])
  return scores, curves, protocol


def _meta(config, run, options, layers, data, stats_source, protocol) -> dict:
  flags = "positive num_samples seed max_images resolution".split()
  return {
    "evaluator": "localization",
    "workdir": os.path.abspath(config.workdir),
    "step": run.step,
    "model": run.name,
    "trained_on": run.spec.data if run.spec is not None else None,
    **options._asdict(),
    "image_size": list(run.input_shape[:2]),
    "layers": layers,
    "codes": list(config.codes),
    **{k: getattr(config, k) for k in flags},
    "latent_stats": stats_source,
    "protocol": protocol,
    "num_test_images": int(len(data["label"])),
    "num_anomalous": int(data["label"].sum()),
    "num_with_masks": int(data["has_mask"].sum()),
    "date": datetime.datetime.now(datetime.UTC).isoformat(),
  }


def _ablation(results, scores, layers, codes, dataset) -> dict[str, float]:
  """Adds the ablation table to ``results``; returns the bar chart values."""
  paper = PAPER_PED1 if dataset == "ped1" else None
  results["ablation"] = {
    "layers": layers,
    "table": ablation_table(scores, layers, codes, paper),
  }
  bars = {
    short(p): scores[method_name(codes[0], p)]["pixel_auroc"] for p in layers
  }
  bars["residual"] = scores["residual"]["pixel_auroc"]
  return bars


def evaluate(config: Config) -> dict:
  """Runs everything for parsed flags; returns the results dict."""
  start = time.perf_counter()
  run, options, test, train, layers = _load(config)
  out = cli.make_out_dir(
    config.out or os.path.join(config.workdir, "eval", "localization")
  )
  stats, stats_source = None, "not needed (code mu only)"
  if "difference" in config.codes:
    cli.stage("latent statistics of the normal data")
    stats, stats_source = latent_stats(run, train, config.batch_size)
  cli.stage(
    f"compiling and computing maps of {len(test)} test images at "
    f"{len(layers)} layer(s), codes {' '.join(config.codes)}"
  )
  maps, data = compute_maps(
    run,
    test,
    stats,
    layers=layers,
    codes=config.codes,
    num_samples=config.num_samples,
    batch_size=config.batch_size,
    seed=config.seed,
    positive=config.positive,
    chunk_size=config.chunk_size,
  )
  scores, curves, protocol = _score(config, test, maps, data)
  results: dict[str, Any] = {
    "meta": _meta(config, run, options, layers, data, stats_source, protocol),
    "rows": [row(k, v) for k, v in scores.items()],
    "metrics": {f"{k}/{m}": v for k, s in scores.items() for m, v in s.items()},
  }
  if options.dataset in ("mvtec", "textures"):
    if options.category in PAPER_MVTEC:
      results["paper"] = {"mvtec": PAPER_MVTEC[options.category]}
  bars = None
  if config.ablation:
    bars = _ablation(results, scores, layers, config.codes, options.dataset)
  cli.stage(f"writing figures to {out}")
  where = options.dataset + (f"/{options.category}" if options.category else "")
  results["figures"] = write_figures(
    out,
    maps,
    data,
    curves,
    where=where,
    num_overlays=config.num_overlays,
    ablation=bars,
    ablation_title=f"layer ablation, attention ({config.codes[0]})",
  )
  results = cli.save_results(out, results, report_lines, start)
  figs = [v for k, v in results["figures"].items() if k != "overlay_rows"]
  cli.stage(f"wrote {out}/report.md and the figures {', '.join(figs)}")
  return results


def main(argv: Sequence[str] | None = None) -> int:
  """The entry point; returns the exit status (2: a user error)."""
  config, debug = cli.parse(
    argv, Config, prog="python -m eval.localization", description=__doc__
  )

  def evaluate_and_print(config: Config) -> int:
    cli.print_report(evaluate(config)["out"])
    return 0

  return cli.run_main(evaluate_and_print, config, debug=debug)


if __name__ == "__main__":
  sys.exit(main())
