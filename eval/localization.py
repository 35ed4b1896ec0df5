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
mean. --resolution=original (default, the MVTec-AD protocol) upsamples each
map to its mask's original size; --resolution=model compares at the model's
input size with the masks resized there (nearest neighbour, which can
delete small defects). The report names the protocol used. The latent
statistics of the normal data come from the checkpoint (one-class trainer)
or, if absent, from one pass over the training split. --ablation adds every
encoder conv block (conv1/conv2/conv3 for Ped1) and the layer ablation
table.

The data set, folder and category default to the run's (its spec.json),
else to the offline textured-defect set.

Writes into --out (default <workdir>/eval/localization): results.json,
report.md, roc.png (pixel ROC curves), overlays.png (Fig. 6 style: image,
ground truth, maps on the image) and with --ablation, ablation.png.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from eval import cli, restore
from eval import localization_data as data_lib
from eval import localization_maps as maps_lib
from eval import localization_report as report_lib
from eval import localization_scores as scores_lib
from workflow import configs

# Re-exported for callers of the former single module.
COLUMNS = report_lib.COLUMNS
DATASETS = data_lib.DATASETS
CODES = maps_lib.CODES


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
  num_samples: int = configs.field(8, "eq. 5 draws per image", minimum=1)
  positive: str = cli.positive_field()
  chunk_size: int | None = configs.field(
    None,
    "latents per pullback chunk, bounds accelerator memory (default: all at "
    "once, or about 256 rows on CPU)",
    minimum=1,
  )
  batch_size: int = configs.field(8, "test images a batch", minimum=1)
  max_images: int | None = configs.field(
    None,
    "evaluate at most this many test images, evenly spaced, normal and "
    "anomalous (default: all; quick runs)",
    minimum=2,
  )
  num_overlays: int = configs.field(6, "rows of overlays.png", minimum=2)
  seed: int = configs.field(
    0, "seed of the eq. 5 draws", minimum=0, maximum=configs.MAX_SEED
  )
  resolution: str = configs.field(
    "original",
    "original: maps upsampled to each mask's original size (the MVTec-AD "
    "protocol); model: masks resized to the model's input size",
    scores_lib.RESOLUTIONS,
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
  options = data_lib.data_options(
    run.spec,
    dataset=config.dataset,
    data_dir=config.data_dir,
    category=config.category,
  )
  test, train, category = data_lib.load_splits(options, run.input_shape[:2])
  test = data_lib.subset(test, config.max_images)
  cli.stage(
    f"{options.dataset}/{category or '-'}: {len(test)} test images, "
    f"{len(train)} training images, model {run.name} (step {run.step})"
  )
  layers = maps_lib.resolve_layers(run, config.layers or [run.default_layer])
  if config.ablation:
    layers = list(dict.fromkeys([*maps_lib.ablation_layers(run), *layers]))
  return run, options._replace(category=category), test, train, layers


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
    masks = scores_lib.original_masks(entries, data["has_mask"])
  cli.stage(f"scoring {len(maps)} methods at {config.resolution} resolution")

  def on_method(name, values):
    cli.stage(
      f"  {report_lib.label(name)}: pixel AUROC "
      f"{values['pixel_auroc']:.3f}, AUPRO {values['aupro']:.3f}"
    )

  scores, curves = scores_lib.score(
    maps, data, resolution=config.resolution, masks=masks, on_method=on_method
  )
  protocol = scores_lib.describe(
    config.resolution, masks, data["mask"].shape[1:]
  )
  return scores, curves, protocol


def _meta(config, run, options, layers, data, stats_source, protocol) -> dict:
  return {
    "evaluator": "localization",
    "workdir": os.path.abspath(config.workdir),
    "step": run.step,
    "model": run.name,
    "dataset": options.dataset,
    "data_dir": options.data_dir,
    "category": options.category,
    "image_size": list(run.input_shape[:2]),
    "layers": layers,
    "codes": list(config.codes),
    "positive": config.positive,
    "num_samples": config.num_samples,
    "seed": config.seed,
    "latent_stats": stats_source,
    "max_images": config.max_images,
    "resolution": config.resolution,
    "protocol": protocol,
    "num_test_images": int(len(data["label"])),
    "num_anomalous": int(data["label"].sum()),
    "num_with_masks": int(data["has_mask"].sum()),
    "date": datetime.datetime.now(datetime.UTC).isoformat(),
  }


def _ablation(results, scores, layers, codes, dataset) -> dict[str, float]:
  """Adds the ablation table to ``results``; returns the bar chart values."""
  paper = report_lib.PAPER_PED1 if dataset == "ped1" else None
  results["ablation"] = {
    "layers": layers,
    "table": report_lib.ablation_table(scores, layers, codes, paper),
  }
  bars = {
    maps_lib.short(p): scores[maps_lib.method_name(codes[0], p)]["pixel_auroc"]
    for p in layers
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
    stats, stats_source = maps_lib.latent_stats(run, train, config.batch_size)
  cli.stage(
    f"compiling and computing maps of {len(test)} test images at "
    f"{len(layers)} layer(s), codes {' '.join(config.codes)}"
  )
  maps, data = maps_lib.compute_maps(
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
    "rows": [report_lib.row(k, v) for k, v in scores.items()],
    "metrics": {f"{k}/{m}": v for k, s in scores.items() for m, v in s.items()},
  }
  if options.dataset in ("mvtec", "textures"):
    if options.category in report_lib.PAPER_MVTEC:
      results["paper"] = {"mvtec": report_lib.PAPER_MVTEC[options.category]}
  bars = None
  if config.ablation:
    bars = _ablation(results, scores, layers, config.codes, options.dataset)
  cli.stage(f"writing figures to {out}")
  where = options.dataset + (f"/{options.category}" if options.category else "")
  results["figures"] = report_lib.write_figures(
    out,
    maps,
    data,
    curves,
    where=where,
    num_overlays=config.num_overlays,
    ablation=bars,
    ablation_title=f"layer ablation, attention ({config.codes[0]})",
  )
  results = cli.save_results(out, results, report_lib.write_report, start)
  figs = [v for k, v in results["figures"].items() if k != "overlay_rows"]
  cli.stage(f"wrote {out}/report.md and the figures {', '.join(figs)}")
  return results


def main(argv: Sequence[str] | None = None) -> int:
  """The entry point; returns the exit status (2: a user error)."""
  config, debug = cli.parse(
    argv, Config, prog="python -m eval.localization", description=__doc__
  )
  return cli.run_report(evaluate, config, debug=debug)


if __name__ == "__main__":
  sys.exit(main())
