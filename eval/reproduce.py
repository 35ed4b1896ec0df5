r"""Re-measures a result table of the paper with seeds: train, score, report.

  python -m eval.reproduce table3 --steps=300000 --seeds=5   # the paper's
  python -m eval.reproduce table3 --steps=20000 --seeds=3    # a GPU hour
  python -m eval.reproduce table3 --steps=200 --seeds=2 --quick   # CPU check

table3: FactorVAE (gamma = 40) and AD-FactorVAE (gamma = 40, lambda = 1) on
dSprites, the paper's Table 3 (FactorVAE metric 0.82 and 0.93; two public
reproductions found no clear gain). Both arms train for the same seeds as
ONE grid (python -m train.factorvae --loss=tc,ad --seeds=...), each member in
its own run directory under WORKDIR/runs; a rerun resumes the grid. Every
member is then scored with the FactorVAE metric in both conventions (the
paper's, which prunes collapsed latents, and disentanglement_lib's), MIG and
DCI (--metrics=factor_vae: the first two only), and WORKDIR/report.md and
results.json give mean, standard deviation and Welch's p per metric and arm
with the paper's numbers beside them, and state the steps, seeds, data
source, backend and sample sizes.

Training runs as a subprocess (python -m train.factorvae): it owns its
devices and process-wide settings; the scoring runs here.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from eval import aggregate, cli, disentanglement, restore
from eval.metrics import disentanglement as suite
from eval.metrics import factor_vae
from vae_attn.data import dsprites
from workflow import configs, errors, runs

_log = logging.getLogger("eval.reproduce")

# The paper's Table 3 (FactorVAE metric; docs/paper.md#results).
ARMS = {
  "tc": ("FactorVAE, gamma = 40", 0.82),
  "ad": ("AD-FactorVAE, gamma = 40, lambda = 1", 0.93),
}
METRICS = {
  "factor_vae/paper/eval_accuracy": "FactorVAE metric (paper convention)",
  "factor_vae/disentanglement_lib/eval_accuracy": (
    "FactorVAE metric (disentanglement_lib convention)"
  ),
  "mig": "MIG",
  "dci/disentanglement": "DCI disentanglement",
}
QUICK_NOTE = " QUICK: small metric samples, a pipeline check."


def train_command(config: Config) -> list[str]:
  """The ``python -m train.factorvae`` grid of both arms."""
  seeds = ",".join(str(s) for s in range(config.seeds))
  log_every = max(1, min(500, config.steps // 4 or 1))
  command = [
    sys.executable,
    "-m",
    "train.factorvae",
    "--loss=tc,ad",
    "--gamma=40",
    "--lambda-ad=1",
    f"--seeds={seeds}",
    f"--num-steps={config.steps}",
    f"--batch-size={config.batch_size}",
    f"--data={config.data}",
    f"--log-every={log_every}",
    f"--checkpoint-every={min(10_000, config.steps)}",
    f"--precision={config.precision}",
    "--no-score",
    f"--workdir={pathlib.Path(config.workdir, 'runs')}",
  ]
  if config.data_dir:
    command.append(f"--data-dir={config.data_dir}")
  return command


def _member_dirs(config: Config) -> dict[str, list[pathlib.Path]]:
  """The grid's member runs per arm, found by their configs (the folder
  names are the trainer's business), in seed order.

  Raises:
    FileNotFoundError: an arm has fewer runs than ``config.seeds``.
  """
  root = pathlib.Path(config.workdir, "runs")
  found: dict[str, list[tuple[int, pathlib.Path]]] = {loss: [] for loss in ARMS}
  if root.is_dir():
    for path in sorted(root.glob(f"*/{runs.CONFIG_NAME}")):
      member = json.loads(path.read_text())
      if member.get("loss") in found and member.get("seed") in range(
        config.seeds
      ):
        found[member["loss"]].append((member["seed"], path.parent))
  for loss, members in found.items():
    if len(members) < config.seeds:
      raise FileNotFoundError(
        f"{root} holds {len(members)} trained {loss} runs, not "
        f"{config.seeds}; run without --skip-training to train them."
      )
  return {loss: [d for _, d in sorted(m)] for loss, m in found.items()}


def _stages(metrics: str, dci_importance: str) -> dict[str, str]:
  """The suite's metrics of the table, each with its progress line."""
  stages = {
    f"factor_vae/{convention}": f"FactorVAE metric ({convention} convention)"
    for convention in factor_vae.FACTOR_VAE_CONVENTIONS
  }
  if metrics == "all":
    stages["mig"] = "MIG"
    stages["dci"] = f"DCI ({dci_importance})"
  return stages


def score_member(
  run_dir: pathlib.Path, config: Config, where: str = ""
) -> dict:
  """The Table 3 metrics of one trained member, from the metric suite
  (``eval.metrics.disentanglement``; a progress line for each metric,
  prefixed with ``where``)."""
  run = restore.load_run(run_dir)
  # The metrics need the ground-truth factor interface: the npz has it, and
  # the procedural source draws the tfds images (docs/data.md).
  if config.data == "npz":
    data, kind = dsprites.load_npz(config.data_dir), "npz"
  else:
    data, kind = dsprites.procedural(), "procedural"
  mu_and_kl = disentanglement.representation_function(run)
  random_state = np.random.RandomState(config.metric_seed)
  if config.tabulate:
    data, mu_and_kl = suite.tabulate(data, mu_and_kl, random_state)
  d = run.latent_dim
  importance = "random_forest" if config.quick else "gbt"
  stages = _stages(config.metrics, importance)
  results = suite.evaluate_suite(
    data,
    lambda x: mu_and_kl(x)[:, :d],
    random_state,
    kl_function=lambda x: mu_and_kl(x)[:, d:],
    quick=config.quick,
    dci_importance=importance,
    metrics=list(stages),
  )
  scores, sizes = {}, {}
  for stage in stages.values():
    cli.stage(f"{where}{stage}")
    result = next(results)  # Runs this metric.
    scores.update({key: float(value) for key, value in result.scores.items()})
    sizes[result.name] = result.sample_sizes
  if "dci" in sizes:
    sizes["dci"]["importance"] = importance
  return {"scores": scores, "sizes": sizes, "step": run.step, "data": kind}


def write_report(path: str, results: dict) -> None:
  """``report.md``: the table, then how it was measured."""
  meta = results["meta"]
  first = next(iter(results["members"].values()), {"sizes": {}})  # All alike.
  rows = []
  for key, name in METRICS.items():
    if key in results["summary"]:
      row = results["summary"][key]
      cells = [aggregate.cell(aggregate.Summary(**row[a])) for a in ARMS]
      p = aggregate.comparison_cells(aggregate.Comparison(**row["comparison"]))
      rows.append([name, *cells, p[1]])
  paper = [f"{value:.2f}" for _, value in ARMS.values()]
  rows.append(["paper, Table 3 (FactorVAE metric)", *paper, ""])
  members = []
  for name, member in results["members"].items():
    scores = member["scores"]
    values = [f"{scores[k]:.3f}" if k in scores else "n/a" for k in METRICS]
    members.append([name, str(member["step"]), *values])
  lines = [
    "# Table 3 re-measured: FactorVAE vs AD-FactorVAE on dSprites",
    "",
    f"{meta['steps']:,} training steps per run (the paper: 300,000), seeds "
    f"{meta['seeds']}, batch {meta['batch_size']}, data: {meta['data']}, "
    f"backend: {meta['backend']} ({meta['devices']}), precision "
    f"{meta['precision']}." + (QUICK_NOTE if meta["quick"] else ""),
    "",
    *cli.markdown_table(
      ["metric", *(label for label, _ in ARMS.values()), "Welch's p"], rows
    ),
    "",
    "Mean ± sample standard deviation over seeds; Welch's two-sided t-test "
    "of the two arms (AD-FactorVAE minus FactorVAE).",
    "",
    "## How it was measured",
    "",
    f"- Training: `{meta['train_command']}` ({meta['train_seconds']:.0f} s).",
    f"- Scoring: this command, {meta['score_seconds']:.0f} s, metric seed "
    f"{meta['metric_seed']}.",
    *(
      f"- Sample sizes, {name}: {disentanglement.format_sizes(sizes)}."
      for name, sizes in first["sizes"].items()
    ),
    f"- Date: {meta['date']}.",
    "",
    *cli.markdown_table(["run", "step", *METRICS.values()], members),
    *cli.software_lines(results["software"]),
  ]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def _train(command: list[str]) -> int:
  """Runs the trainer, passing its output through except its closing
  ``Done.`` block and ``Next:`` lines (this command does what they say).

  The trainer, in its own process group, gets each Ctrl-C once, passed on
  (the first saves, a second aborts); KeyboardInterrupt if it was stopped.
  """
  popen = dict(stdout=subprocess.PIPE, text=True, process_group=0)
  with subprocess.Popen(command, **popen) as proc:
    done = eof = False
    while not eof:
      try:
        for line in proc.stdout:
          done = done or line.rstrip("\n") == "Done."
          if not done and not line.startswith("Next:"):
            print(line, end="", flush=True)
        eof = True
      except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
  if proc.returncode in (130, -signal.SIGINT):
    raise KeyboardInterrupt
  return proc.returncode


def table3(config: Config) -> dict:
  """Trains the grid (or resumes it), scores every member, writes reports."""
  import jax  # The scoring process's backend, for the report.

  os.makedirs(config.workdir, exist_ok=True)
  command = train_command(config)
  start = time.perf_counter()
  if not config.skip_training:
    _log.info("Training: %s", shlex.join(command))
    status = _train(command)
    if status != 0:
      raise errors.UserError(
        f"Training exited with status {status} (its output is above); "
        "rerun the same command to resume it."
      )
  train_seconds = time.perf_counter() - start
  start = time.perf_counter()
  members, per_arm = {}, {loss: [] for loss in ARMS}
  dirs = [(loss, d) for loss, ds in _member_dirs(config).items() for d in ds]
  for k, (loss, run_dir) in enumerate(dirs, start=1):
    where = f"scoring run {k} of {len(dirs)} ({run_dir.name}): "
    members[run_dir.name] = score_member(run_dir, config, where)
    per_arm[loss].append(members[run_dir.name]["scores"])
  summaries = {
    loss: aggregate.summarize(runs) for loss, runs in per_arm.items()
  }
  summary = {}
  for key in METRICS:
    if not all(key in s for s in summaries.values()):
      continue
    comparison = aggregate.compare(summaries["ad"][key], summaries["tc"][key])
    summary[key] = {loss: summaries[loss][key]._asdict() for loss in ARMS}
    summary[key].update(welch_p=comparison.p, comparison=comparison._asdict())
  devices = jax.devices()
  results = {
    "meta": {
      "table": "table3",
      "steps": config.steps,
      "seeds": list(range(config.seeds)),
      "batch_size": config.batch_size,
      "data": config.data,
      "precision": config.precision,
      "quick": config.quick,
      "metrics": config.metrics,
      "backend": jax.default_backend(),
      "devices": f"{len(devices)} x {devices[0].device_kind}",
      "train_command": shlex.join(["python", *command[1:]]),
      "train_seconds": train_seconds,
      "score_seconds": time.perf_counter() - start,
      "metric_seed": config.metric_seed,
      "date": datetime.datetime.now(datetime.UTC).isoformat(),
      "paper": {loss: value for loss, (_, value) in ARMS.items()},
    },
    "summary": summary,
    "members": members,
    "software": runs.software(),
  }
  with open(os.path.join(config.workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, default=float)
  write_report(os.path.join(config.workdir, "report.md"), results)
  return {**results, "out": config.workdir}


def _run(config: Config) -> int:
  """Re-measures the table; prints the headline and where the report is."""
  results = table3(config)
  steps = sorted({m["step"] for m in results["members"].values()})
  key = "factor_vae/paper/eval_accuracy"
  row = results["summary"].get(key, {})
  print(f"Scored at step {', '.join(map(str, steps))} (this run's scores):")
  for loss in ARMS:
    if loss in row:
      print(
        f"  {ARMS[loss][0]}: {aggregate.cell(aggregate.Summary(**row[loss]))}"
      )
  print(f"Report: {os.path.join(config.workdir, 'report.md')}")
  print(f"Numbers: {os.path.join(config.workdir, 'results.json')}")
  return 0


@dataclasses.dataclass(frozen=True)
class Config:
  """The table to re-measure, how long and how often to train, what to score."""

  table: str = configs.field(
    configs.REQUIRED,
    "the table to re-measure: table3",
    ("table3",),
    positional=True,
    metavar="TABLE",
  )
  steps: int = configs.field(
    300_000, "training steps (paper: 3e5)", interval="[1, inf)"
  )
  seeds: int = configs.field(
    3, "seeds per arm (a spread needs two)", interval="[2, 1000]"
  )
  batch_size: int = configs.field(64, "global batch", interval="[1, inf)")
  data: str = configs.field(
    "procedural",
    "dSprites source (procedural: no download)",
    ("procedural", "npz", "tfds"),
  )
  data_dir: str = configs.field("", "npz file or tfds data_dir")
  precision: str = configs.field(
    "highest",
    "matmul precision of the train step",
    ("highest", "high", "default"),
  )
  metrics: str = configs.field(
    "all",
    "all: FactorVAE (both conventions), MIG, DCI; factor_vae: only it",
    ("all", "factor_vae"),
  )
  quick: bool = configs.field(
    False, "small metric samples (a pipeline check, not a measurement)"
  )
  tabulate: bool = configs.field(
    False, "encode all 737,280 images once, then look codes up"
  )
  metric_seed: int = configs.field(
    0, "seed of the metrics' samples", interval=configs.SEEDS
  )
  skip_training: bool = configs.field(
    False, "score the runs already in WORKDIR/runs"
  )
  workdir: str | None = configs.field(
    None, "default: runs/reproduce_<table>_<steps>steps_<seeds>seeds"
  )


def main(argv: Sequence[str] | None = None) -> int:
  """The entry point; returns the exit status (2: a user error)."""
  config, debug = cli.parse(
    argv, Config, prog="python -m eval.reproduce", description=__doc__
  )
  if config.workdir is None:
    default = f"runs/reproduce_{config.table}_{config.steps}steps_"
    config = dataclasses.replace(
      config, workdir=f"{default}{config.seeds}seeds"
    )
  return cli.run_main(_run, config, debug=debug)


if __name__ == "__main__":
  sys.exit(main())
