"""Benchmark: the full disentanglement report, stage by stage, in one run.

Run by hand from the repository root (never by pytest):

  python -m bench.disentanglement_report --workdir=/tmp/h4run
  python -m bench.disentanglement_report             # trains a smoke run first
  python -m bench.disentanglement_report --dci-importance=gbt   # tens of min

It runs exactly what ``python -m eval.disentanglement --workdir=RUN`` runs
(``eval.disentanglement.evaluate`` with the entry point's defaults: every
metric at its published sample sizes, all 737,280 dSprites images encoded
once into a code table shared by the metrics, the random-forest DCI, the
per-factor fits of DCI and SAP over one thread per core, then the two
figures) and prints the seconds of each stage, the total wall time, the CPU
time of the process, and the load average
before and after (the machine may be shared: compare runs made under
similar load). Without ``--workdir`` it first trains
``python -m train.factorvae --loss=ad --preset=smoke`` into a temporary
folder (seconds); the timings hardly depend on the weights, since the
code table makes every metric's cost independent of how many latents are
active.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import resource
import sys
import tempfile
import time

from eval import disentanglement as driver
from eval import inference


def _smoke_run(folder: str) -> str:
  """Trains the smoke AD-FactorVAE into ``folder``; returns it."""
  from train import factorvae  # Only when no run is given.

  config = dataclasses.replace(factorvae.PRESETS["smoke"], loss="ad")
  factorvae.train_and_evaluate(config, folder)
  return folder


def _cpu_seconds() -> float:
  """CPU seconds (user + system) of this process, all threads."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--workdir", help="a FactorVAE run (default: a smoke run)"
  )
  parser.add_argument(
    "--dci-importance", help="passed on (default: the entry point's)"
  )
  parser.add_argument(
    "--quick", action="store_true", help="the quick sizes instead"
  )
  parser.add_argument("--out", help="keep the results here (default: none)")
  args = parser.parse_args(argv)
  load_start = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    out = args.out or os.path.join(tmp, "out")
    flags = [f"--workdir={args.workdir or os.path.join(tmp, 'run')}"]
    flags.append(f"--out={out}")
    if args.dci_importance:
      flags.append(f"--dci-importance={args.dci_importance}")
    if args.quick:
      flags.append("--quick")
    if not args.workdir:
      inference.use_all_cpu_cores()  # As the entry point would.
      _smoke_run(os.path.join(tmp, "run"))
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # The report itself.
      status = driver.main(flags)
    wall = time.perf_counter() - start
    cpu_end = _cpu_seconds()
    if status != 0:
      return status
    with open(os.path.join(out, "results.json")) as f:
      results = json.load(f)
  _print(results, wall, cpu_start, cpu_end, load_start)
  return 0


def _print(results, wall, cpu_start, cpu_end, load_start) -> None:
  import jax  # Started by the evaluation.

  cpu = cpu_end - cpu_start
  meta = results["meta"]
  print(
    f"jax {jax.__version__}, {jax.device_count()} CPU device(s), "
    f"{os.cpu_count()} cores; load average {load_start[0]:.1f} before, "
    f"{os.getloadavg()[0]:.1f} after"
  )
  print(
    f"run {meta['workdir']} (D = {meta['latent_dim']}); "
    f"{'quick' if meta['quick'] else 'published'} sizes, tabulate="
    f"{meta['tabulate']}, DCI importance {meta['dci_importance']}, "
    f"jobs {meta['jobs']}"
  )
  for stage, seconds in results["timings"].items():
    sizes = results["sample_sizes"].get(stage) or {}
    shown = ", ".join(f"{k}={v}" for k, v in sizes.items())
    print(f"{stage:32s} {seconds:7.1f} s  {shown}".rstrip())
  other = wall - sum(results["timings"].values())
  print(f"{'restore, compile, write':32s} {other:7.1f} s")
  for note in results["notes"]:
    print(f"note: {note}")
  print(
    f"TOTAL {wall:.1f} s wall ({wall / 60:.1f} min), {cpu:.0f} s of CPU "
    f"time ({cpu / wall:.2f} cores busy on average)"
  )


if __name__ == "__main__":
  sys.exit(main())
