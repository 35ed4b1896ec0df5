r"""Anomaly localization of a one-class VAE (paper section 3.3, Table 2).

  python -m eval.localization --workdir=runs/textures_brick
  python -m eval.localization --workdir=runs/mvtec_bottle \
      --dataset=mvtec --root=/data/mvtec_ad --category=bottle
  python -m eval.localization --workdir=runs/ped1 --dataset=ped1 \
      --root=/data/UCSD_Anomaly_Dataset.v1p2 --ablation

Restores the VAE of --workdir (eval.restore.load_run), runs the test
split of a data set through it and scores, against the pixel masks:

* attention maps (eq. 3-4) of the code "mu" and of the normal difference
  distribution ("difference", eq. 5, averaged over --num-samples draws)
  at the chosen layer(s), upsampled bilinearly to the image;
* the reconstruction-residual baseline |x - sigmoid(decode(mu))|.

Each gets pixel AUROC and the best IoU over the ROC thresholds (the paper's
Table 2 columns), plus AUPRO (FPR <= 0.3) and image AUROC of the map max and
mean (eval.metrics.localization_report). The latent statistics of the
normal data come from the checkpoint (one-class trainer) or, if absent,
from one pass over the training split. --ablation adds every encoder
conv block (conv1/conv2/conv3 for Ped1) and writes the layer ablation table.

Data options default to the training config ("dataset", "category",
"data_root"...) and otherwise to the offline textured-defect set.

Writes into --out (default <workdir>/eval/localization):
results.json, report.md, roc.png (pixel ROC curves),
overlays.png (Fig. 6 style: image, ground truth, maps on the image),
and with --ablation, ablation.png.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from eval import cli, figures, metrics, restore
from vae_attn import anomaly, runs
from vae_attn import attention as attention_lib
from vae_attn.data import pipeline

DATASETS = ("textures", "mvtec", "ped1", "folder")
CODES = ("mu", "difference")

# The paper's numbers (docs/paper.md#results), for the reference rows.
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


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------


def data_options(args: argparse.Namespace, spec: runs.RunSpec | None) -> dict:
  """Dataset, folder and category: the flags, else the run spec's."""
  kwargs = dict(spec.data_kwargs) if spec is not None else {}
  dataset = args.dataset or (spec.data if spec is not None else None)
  if dataset is None:
    dataset = "textures"
  if dataset not in DATASETS:
    raise ValueError(
      f"Localization needs pixel masks; dataset {dataset!r} has none. Pass "
      f"--dataset as one of {DATASETS} (with --data-dir for real data)."
    )
  same_data = spec is not None and dataset == spec.data
  root = args.root or (spec.data_dir if same_data else None) or None
  category = args.category or (kwargs.get("category") if same_data else None)
  return {"dataset": dataset, "root": root, "category": category or None}


def load_splits(
  dataset: str,
  root: str | None,
  category: str | None,
  image_size: tuple[int, int],
) -> tuple[Any, Any, str | None]:
  """``(test_source, train_source, category)`` of a data set with masks."""
  if dataset == "textures":
    from vae_attn.data import mvtec, textures

    category = category or textures.CATEGORIES[0]
    if not (root and os.path.isdir(os.path.join(root, category))):
      # The trainers' data_dir for textures is the cache the set is made in.
      root = textures.ensure_dataset(root or None)
    load = functools.partial(mvtec.load, root, category, image_size=image_size)
    return load("test"), load("train"), category
  if not root:
    raise ValueError(
      f"--dataset={dataset} reads files: pass --root=<the data set folder>."
    )
  if dataset == "mvtec":
    from vae_attn.data import mvtec

    if not category:
      raise ValueError(
        f"--dataset=mvtec needs --category, one of {mvtec.CATEGORIES}."
      )
    load = functools.partial(mvtec.load, root, category, image_size=image_size)
    return load("test"), load("train"), category
  if dataset == "ped1":
    from vae_attn.data import ped1

    load = functools.partial(ped1.load, root, image_size=image_size)
    return load("test"), load("train"), None
  from vae_attn.data import folder

  load = functools.partial(folder.load, root, image_size=image_size)
  return load("test"), load("train"), category


class _Subset:
  """Records ``indices`` of a source (random access, for the pipeline)."""

  def __init__(self, source, indices: np.ndarray):
    self._source, self._indices = source, indices
    self.name = f"{getattr(source, 'name', 'source')}[subset]"

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    return self._source[int(self._indices[index])]


def subset(source, max_images: int | None):
  """At most ``max_images`` records, evenly spaced over the source.

  Test splits are sorted (normal images first), so evenly spaced picks keep
  normal and anomalous images both.
  """
  if max_images is None or max_images >= len(source):
    return source
  indices = np.linspace(0, len(source) - 1, max_images).round()
  return _Subset(source, np.unique(indices.astype(np.int64)))


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
  """Matches the data's channels to the model's (grey <-> RGB)."""
  if x.shape[-1] == channels:
    return x
  if channels == 1:
    return x.mean(axis=-1, keepdims=True)
  return np.repeat(x, channels, axis=-1)


# ----------------------------------------------------------------------------
# Maps.
# ----------------------------------------------------------------------------


def ablation_layers(run: restore.Run) -> list[str]:
  """Every top-level encoder conv block (``encoder/conv1``...), or for the
  ResNet the first conv of each stage."""
  x = jnp.zeros((1, *run.input_shape), jnp.float32)
  valid = attention_lib.layer_paths(run.encode_fn, run.variables, x)
  convs = [p for p in valid if re.fullmatch(r"encoder/conv\d+", p)]
  if convs:
    return convs
  return [p for p in valid if re.fullmatch(r"encoder/stage\d_block1/conv1", p)]


def resolve_layers(run: restore.Run, layers: Sequence[str]) -> list[str]:
  """Full paths of ``layers`` (unique suffixes allowed)."""
  x = jnp.zeros((1, *run.input_shape), jnp.float32)
  valid = attention_lib.layer_paths(run.encode_fn, run.variables, x)
  out = []
  for layer in layers:
    matches = [layer] if layer in valid else []
    matches = matches or [p for p in valid if p.endswith("/" + layer)]
    if len(matches) != 1:
      listing = ", ".join(valid)
      raise ValueError(
        f"--layers: {layer!r} is not a unique conv layer of the {run.name} "
        f"encoder; valid layers: {listing}."
      )
    out.append(matches[0])
  return list(dict.fromkeys(out))


def make_maps_fn(
  run: restore.Run,
  layers: Sequence[str],
  codes: Sequence[str],
  num_samples: int,
  **attention_kwargs,
):
  """A jitted ``fn(x, stats, key) -> {method: [B, H, W]}`` at image size.

  Methods: ``attention_<code>/<layer>`` for each code and layer, and
  ``residual``.
  """
  size = run.input_shape[:2]
  encode_fn = run.encode_fn
  layers = list(layers)

  def maps_fn(x, stats, key):
    out = {}
    (mu, _), maps = attention_lib.value_and_attention(
      encode_fn, layers, code="mu", **attention_kwargs
    )(run.variables, x)
    if "mu" in codes:
      for layer in layers:
        out[f"attention_mu/{_short(layer)}"] = maps[layer].mean
    if "difference" in codes:
      diff_fn = attention_lib.attention(
        encode_fn, layers, code="difference", **attention_kwargs
      )
      keys = jax.random.split(key, num_samples)

      def one_draw(k):
        draw = diff_fn(run.variables, x, key=k, stats=stats)
        return {p: m.mean for p, m in draw.items()}

      draws = jax.lax.map(one_draw, keys)
      for layer in layers:
        out[f"attention_difference/{_short(layer)}"] = draws[layer].mean(0)
    # Same bilinear resize as attention.upsample, whose cached interpolation
    # matrices must not be first built under jit (they would leak a tracer).
    out = {
      k: jax.image.resize(v, (*v.shape[:-2], *size), "linear")
      for k, v in out.items()
    }
    x_hat = jax.nn.sigmoid(
      run.model.apply(run.variables, mu, method=run.model.decode)
    )
    out["residual"] = anomaly.residual_map(x, x_hat)
    return out

  return jax.jit(maps_fn)


def _short(layer: str) -> str:
  return layer.removeprefix("encoder/")


def compute_maps(
  run: restore.Run,
  test_source,
  stats: anomaly.LatentStats,
  *,
  layers: Sequence[str],
  codes: Sequence[str],
  num_samples: int,
  batch_size: int,
  seed: int,
  max_images: int | None = None,
  **attention_kwargs,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Runs the test split; returns ``(maps, data)``.

  ``maps``: method -> ``[N, H, W]``. ``data``: ``image [N, H, W, C]``,
  ``mask [N, H, W]`` (bool), ``label [N]``, ``has_mask [N]`` and
  ``defect_type [N]``.
  """
  fn = make_maps_fn(run, layers, codes, num_samples, **attention_kwargs)
  key = jax.random.key(seed)
  maps: dict[str, list] = {}
  data: dict[str, list] = {
    k: [] for k in ("image", "mask", "label", "has_mask", "defect_type")
  }
  channels = run.input_shape[-1]
  test_source = subset(test_source, max_images)
  test_batches = pipeline.single_pass(test_source, batch_size, num_threads=0)
  for i, batch in enumerate(test_batches):
    x = _to_channels(np.asarray(batch["image"], np.float32), channels)
    out = jax.device_get(fn(jnp.asarray(x), stats, jax.random.fold_in(key, i)))
    for name, value in out.items():
      maps.setdefault(name, []).append(np.asarray(value, np.float32))
    n = len(x)
    data["image"].append(x)
    data["mask"].append(np.asarray(batch["mask"])[..., 0] > 0.5)
    data["label"].append(np.asarray(batch["label"]).astype(bool))
    data["has_mask"].append(
      np.asarray(batch.get("has_mask", np.ones(n))).astype(bool)
    )
    data["defect_type"].append(
      np.asarray(batch.get("defect_type", np.array([""] * n)), dtype=object)
    )
  if not data["image"]:
    raise ValueError("The test split is empty; check --root and --category.")
  order = [f"attention_{c}/{_short(p)}" for c in codes for p in layers]
  maps_np = {k: np.concatenate(maps[k]) for k in [*order, "residual"]}
  data_np = {k: np.concatenate(v) for k, v in data.items()}
  return maps_np, data_np


def latent_stats(
  run: restore.Run, train_source, batch_size: int
) -> tuple[anomaly.LatentStats, str]:
  """The checkpoint's statistics, or one pass over the training split."""
  if run.latent_stats is not None:
    return run.latent_stats, "checkpoint"
  channels = run.input_shape[-1]
  batches = (
    _to_channels(np.asarray(b["image"], np.float32), channels)
    for b in pipeline.single_pass(train_source, batch_size, num_threads=0)
  )
  stats = anomaly.latent_statistics(run.encode_fn, run.variables, batches)
  return stats, f"computed from the training split ({int(stats.count)} images)"


# ----------------------------------------------------------------------------
# Scores and report.
# ----------------------------------------------------------------------------


def score(
  maps: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray]
) -> tuple[dict[str, dict[str, float]], dict[str, tuple]]:
  """Localization metrics and ROC curves of every method.

  Pixel metrics pool the images whose mask is ground truth (``has_mask``);
  image AUROC uses every test image and its label.

  Returns:
    ``(scores, curves)``: method -> metric dict, method -> ``(fpr, tpr,
    auroc)``.
  """
  has_mask = data["has_mask"]
  labels = data["label"]
  if not data["mask"][has_mask].any():
    raise ValueError(
      "No anomalous pixel in the test masks: pixel metrics need defect "
      "images with masks (check the data set's ground_truth folder)."
    )
  if labels.all() or not labels.any():
    raise ValueError(
      "The test split needs both normal and anomalous images for AUROC."
    )
  scores, curves = {}, {}
  for name, m in maps.items():
    masked = m[has_mask]
    mask_labels = labels[has_mask]
    if mask_labels.all() or not mask_labels.any():
      # Pixel metrics only; the report's image AUROC needs both classes.
      report = {
        "pixel_auroc": metrics.pixel_auroc(masked, data["mask"][has_mask]),
        "aupro": metrics.aupro(masked, data["mask"][has_mask]),
      }
      iou, threshold = metrics.best_iou(masked, data["mask"][has_mask])
      report.update(best_iou=iou, best_iou_threshold=threshold)
    else:
      report = metrics.localization_report(
        masked, data["mask"][has_mask], mask_labels
      )
    for statistic in ("max", "mean"):
      report[f"image_auroc_{statistic}"] = metrics.image_auroc(
        m, labels, statistic
      )
    scores[name] = {k: float(v) for k, v in report.items()}
    fpr, tpr, _ = metrics.roc_curve(masked, data["mask"][has_mask])
    curves[name] = (fpr, tpr, scores[name]["pixel_auroc"])
  return scores, curves


def _label(method: str, multiline: bool = False) -> str:
  """Display name of a method (two lines for figure column titles)."""
  if method == "residual":
    return (
      "reconstruction\nresidual" if multiline else "reconstruction residual"
    )
  kind, layer = method.split("/", 1)
  code = kind.removeprefix("attention_")
  sep = "\n" if multiline else " @ "
  return f"attention ({code}){sep}{layer}"


def _row(method: str, values: Mapping[str, float]) -> dict:
  if method == "residual":
    row = {"method": "residual", "code": None, "layer": None}
  else:
    kind, layer = method.split("/", 1)
    row = {
      "method": "attention",
      "code": kind.removeprefix("attention_"),
      "layer": layer,
    }
  row.update(values)
  return row


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
  if paper:
    head.append("paper")
  lines = [
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for layer in layers:
    short = _short(layer)
    cells = [short]
    cells += [
      _fmt(scores[f"attention_{c}/{short}"]["pixel_auroc"]) for c in codes
    ]
    if paper:
      cells.append(_fmt(paper.get(short)))
    lines.append("| " + " | ".join(cells) + " |")
  cells = ["residual", _fmt(scores["residual"]["pixel_auroc"])]
  cells += [""] * (len(codes) - 1)
  if paper:
    cells.append(_fmt(paper.get("residual")))
  lines.append("| " + " | ".join(cells) + " |")
  return lines


def write_report(path: str, results: Mapping[str, Any]) -> str:
  """``report.md`` in the Table 2 format (plus AUPRO and image AUROC)."""
  meta = results["meta"]
  where = meta["dataset"] + (f"/{meta['category']}" if meta["category"] else "")
  lines = [
    f"# Anomaly localization: {where}",
    "",
    f"Model `{meta['model']}` from `{meta['workdir']}` (step {meta['step']}); "
    f"{meta['num_test_images']} test images ({meta['num_anomalous']} "
    f"anomalous, {meta['num_with_masks']} with pixel masks) at "
    f"{meta['image_size'][0]}x{meta['image_size'][1]}. Latent statistics: "
    f"{meta['latent_stats']}. Difference code averaged over "
    f"{meta['num_samples']} draws (seed {meta['seed']}).",
    "",
    "Pixel metrics pool all pixels of the masked test images; best IoU uses "
    "the oracle threshold (chosen on the test ground truth, as in the "
    "paper); AUPRO integrates to FPR 0.3; image AUROC scores each image by "
    "the max or mean of its map. Single run: see `python -m eval.aggregate` "
    "for the mean and spread over seeds.",
    "",
    "| method | code | layer | " + " | ".join(c[1] for c in COLUMNS) + " |",
    "|---|---|---|" + "---|" * len(COLUMNS),
  ]
  for row in results["rows"]:
    cells = [row["method"], row["code"] or "-", row["layer"] or "-"]
    cells += [_fmt(row[k]) for k, _ in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  paper = results.get("paper")
  if paper and "mvtec" in paper:
    auroc, iou = paper["mvtec"]
    lines.append(
      f"| paper (Liu et al., Table 2) | difference | - | {auroc:.2f} | "
      f"{iou:.2f} | - | - | - |"
    )
  if "ablation" in results:
    lines += [
      "",
      "## Layer ablation (pixel AUROC)",
      "",
      *results["ablation"]["table"],
    ]
  lines += [
    "",
    "## Figures",
    "",
    "- `roc.png`: pixel ROC curves of every method (AUROC in the legend).",
    "- `overlays.png`: image, ground truth, and each method's map on the "
    "image; each method's maps share one colour scale over the test set "
    "(its 99.5th percentile), so normal images stay cold when the method "
    "separates them.",
  ]
  if "ablation" in results:
    lines.append("- `ablation.png`: pixel AUROC per attention layer.")
  lines += ["", f"Elapsed: {results['elapsed_time']:.1f} s.", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def pick_overlay_images(data: Mapping[str, np.ndarray], num: int) -> list[int]:
  """Anomalous images of each defect type in turn, then one normal image."""
  labels, types = data["label"], data["defect_type"]
  anomalous = [i for i in np.flatnonzero(labels & data["has_mask"])]
  by_type: dict[str, list[int]] = {}
  for i in anomalous:
    by_type.setdefault(str(types[i]), []).append(int(i))
  picked: list[int] = []
  while len(picked) < num - 1 and any(by_type.values()):
    for queue in by_type.values():
      if queue and len(picked) < num - 1:
        picked.append(queue.pop(0))
  normal = np.flatnonzero(~labels)
  if len(normal):
    picked.append(int(normal[0]))
  return picked


# ----------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m eval.localization",
    description="Pixel-level anomaly localization of a one-class VAE.",
  )
  p.add_argument("--workdir", required=True, help="one-class training run")
  p.add_argument("--step", type=int, help="checkpoint step (default latest)")
  p.add_argument(
    "--dataset",
    choices=DATASETS,
    help="test data (default: the training config's, else textures)",
  )
  p.add_argument(
    "--data-dir",
    "--root",
    dest="root",
    help="data set folder (default: the run's, from its spec.json)",
  )
  p.add_argument("--category", help="MVTec-AD / textures category")
  p.add_argument(
    "--layers", nargs="+", help="attention layer(s) (default: the paper's)"
  )
  p.add_argument(
    "--ablation",
    action="store_true",
    help="also score every encoder conv block (Ped1 conv1/conv2/conv3)",
  )
  p.add_argument(
    "--codes",
    nargs="+",
    choices=CODES,
    default=list(CODES),
    help="attention codes to score",
  )
  p.add_argument("--num-samples", type=int, default=8, help="eq. 5 draws")
  p.add_argument("--positive", choices=("relu", "abs"), default="relu")
  p.add_argument(
    "--chunk-size",
    type=int,
    help="latents per pullback chunk (bounds accelerator memory)",
  )
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument(
    "--max-images",
    type=int,
    help="evaluate at most this many test images, evenly spaced (quick runs)",
  )
  p.add_argument("--num-overlays", type=int, default=6)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", help="default <workdir>/eval/localization")
  return p


def evaluate(args: argparse.Namespace) -> dict:
  """Runs everything for parsed flags; returns the results dict."""
  start = time.perf_counter()
  run = restore.load_run(args.workdir, step=args.step)
  opts = data_options(args, run.spec)
  size = run.input_shape[:2]
  test_source, train_source, category = load_splits(
    opts["dataset"], opts["root"], opts["category"], size
  )
  layers = resolve_layers(run, args.layers or [run.default_layer])
  if args.ablation:
    layers = list(dict.fromkeys([*ablation_layers(run), *layers]))
  stats, stats_source = latent_stats(run, train_source, args.batch_size)
  maps, data = compute_maps(
    run,
    test_source,
    stats,
    layers=layers,
    codes=args.codes,
    num_samples=args.num_samples,
    batch_size=args.batch_size,
    seed=args.seed,
    max_images=args.max_images,
    positive=args.positive,
    chunk_size=args.chunk_size,
  )
  scores, curves = score(maps, data)
  out = args.out or os.path.join(args.workdir, "eval", "localization")
  os.makedirs(out, exist_ok=True)

  results: dict[str, Any] = {
    "meta": {
      "workdir": os.path.abspath(args.workdir),
      "step": run.step,
      "model": run.name,
      "dataset": opts["dataset"],
      "root": opts["root"],
      "category": category,
      "image_size": list(size),
      "layers": layers,
      "codes": list(args.codes),
      "positive": args.positive,
      "num_samples": args.num_samples,
      "seed": args.seed,
      "latent_stats": stats_source,
      "max_images": args.max_images,
      "num_test_images": int(len(data["label"])),
      "num_anomalous": int(data["label"].sum()),
      "num_with_masks": int(data["has_mask"].sum()),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    },
    "rows": [_row(k, v) for k, v in scores.items()],
    "metrics": {f"{k}/{m}": v for k, s in scores.items() for m, v in s.items()},
  }
  if opts["dataset"] in ("mvtec", "textures") and category in PAPER_MVTEC:
    results["paper"] = {"mvtec": PAPER_MVTEC[category]}
  paper_ped1 = PAPER_PED1 if opts["dataset"] == "ped1" else None
  if args.ablation:
    results["ablation"] = {
      "layers": layers,
      "table": ablation_table(scores, layers, args.codes, paper_ped1),
    }
    code = args.codes[0]
    bars = {
      _short(layer): scores[f"attention_{code}/{_short(layer)}"]["pixel_auroc"]
      for layer in layers
    }
    bars["residual"] = scores["residual"]["pixel_auroc"]
    figures.layer_ablation(
      os.path.join(out, "ablation.png"),
      bars,
      title=f"layer ablation, attention ({code})",
    )
  where = opts["dataset"] + (f"/{category}" if category else "")
  figures.roc_curves(
    os.path.join(out, "roc.png"),
    {_label(k): v for k, v in curves.items()},
    title=f"pixel ROC, {where}",
  )
  picked = pick_overlay_images(data, args.num_overlays)
  shown = {}
  for name, m in maps.items():
    lo = float(m.min())
    hi = float(np.percentile(m, 99.5))
    shown[_label(name, multiline=True)] = figures.normalize(
      m[picked] - lo, hi - lo
    )
  figures.localization_overlays(
    os.path.join(out, "overlays.png"),
    data["image"][picked],
    data["mask"][picked],
    shown,
    row_titles=[str(data["defect_type"][i]) for i in picked],
    title=f"{where}: image, ground truth, maps",
  )
  return cli.save_results(out, results, write_report, start)


def main(argv: Sequence[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.num_samples < 1 or args.batch_size < 1 or args.num_overlays < 2:
    parser.error("--num-samples, --batch-size >= 1; --num-overlays >= 2.")
  if args.chunk_size is not None and args.chunk_size < 1:
    parser.error("--chunk-size must be >= 1.")
  if args.max_images is not None and args.max_images < 2:
    parser.error("--max-images must be >= 2 (normal and anomalous images).")
  return cli.run_report(evaluate, args)


if __name__ == "__main__":
  sys.exit(main())
