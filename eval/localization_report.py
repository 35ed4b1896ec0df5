"""The report and figures of ``eval.localization`` (paper Table 2, Fig. 6).

``report.md`` holds one row per method in the Table 2 format (plus AUPRO and
image AUROC), the paper's numbers for reference, the layer ablation table
and a line naming the evaluation protocol; ``roc.png``, ``overlays.png`` and
``ablation.png`` are the figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eval import figures
from eval import localization_maps as maps_lib
from eval import localization_scores as scores_lib

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


def label(method: str, multiline: bool = False) -> str:
  """Display name of a method (two lines for figure column titles)."""
  if method == "residual":
    return (
      "reconstruction\nresidual" if multiline else "reconstruction residual"
    )
  kind, layer = method.split("/", 1)
  code = kind.removeprefix("attention_")
  sep = "\n" if multiline else " @ "
  return f"attention ({code}){sep}{layer}"


def row(method: str, values: Mapping[str, float]) -> dict:
  """A ``results.json`` row: method, code, layer and the metrics."""
  if method == "residual":
    out = {"method": "residual", "code": None, "layer": None}
  else:
    kind, layer = method.split("/", 1)
    code = kind.removeprefix("attention_")
    out = {"method": "attention", "code": code, "layer": layer}
  out.update(values)
  return out


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
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for layer in layers:
    cells = [maps_lib.short(layer)]
    cells += [
      _fmt(scores[maps_lib.method_name(c, layer)]["pixel_auroc"]) for c in codes
    ]
    if paper:
      cells.append(_fmt(paper.get(maps_lib.short(layer))))
    lines.append("| " + " | ".join(cells) + " |")
  cells = ["residual", _fmt(scores["residual"]["pixel_auroc"])]
  cells += [""] * (len(codes) - 1)
  if paper:
    cells.append(_fmt(paper.get("residual")))
  lines.append("| " + " | ".join(cells) + " |")
  return lines


def _intro(meta: Mapping[str, Any]) -> list[str]:
  size = meta["image_size"]
  return [
    f"Model `{meta['model']}` from `{meta['workdir']}` (step {meta['step']}); "
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


def write_report(path: str, results: Mapping[str, Any]) -> str:
  """``report.md`` in the Table 2 format (plus AUPRO and image AUROC)."""
  meta = results["meta"]
  where = meta["dataset"] + (f"/{meta['category']}" if meta["category"] else "")
  lines = [f"# Anomaly localization: {where}", "", *_intro(meta), ""]
  lines += [
    "| method | code | layer | " + " | ".join(c[1] for c in COLUMNS) + " |",
    "|---|---|---|" + "---|" * len(COLUMNS),
  ]
  for r in results["rows"]:
    cells = [r["method"], r["code"] or "-", r["layer"] or "-"]
    cells += [_fmt(r[k]) for k, _ in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  paper = results.get("paper")
  if paper and "mvtec" in paper:
    auroc, iou = paper["mvtec"]
    lines.append(
      f"| paper (Liu et al., Table 2) | difference | - | {auroc:.2f} | "
      f"{iou:.2f} | - | - | - |"
    )
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
  lines += ["", f"Elapsed: {results['elapsed_time']:.1f} s.", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path


def pick_overlay_images(data: Mapping[str, np.ndarray], num: int) -> list[int]:
  """Anomalous images of each defect type in turn, then one normal image."""
  labels, types = data["label"], data["defect_type"]
  by_type: dict[str, list[int]] = {}
  for i in np.flatnonzero(labels & data["has_mask"]):
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
  """Writes ``roc.png``, ``overlays.png`` (and ``ablation.png``).

  Returns:
    ``{"roc": path, "overlays": path, "overlay_rows": [defect types],
    ["ablation": path]}``.
  """
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
    at_size = scores_lib.upsample(m, size)
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
