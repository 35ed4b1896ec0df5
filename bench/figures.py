"""Time to draw a run report's figures (``train.report``), old and new.

  python -m bench.figures                  # this tree's workflow/figures.py
  python -m bench.figures --compare REF    # and the one of git commit REF

The three figures every trainer writes at the end of a run (latent
traversals of 8 latents x 9 steps, the attention grid of 4 images x 6
latents, the loss curves) for the FactorVAE model, median of ``--repeats``
after a warm-up; with ``--compare``, the figures module of REF is loaded
from git and timed in the same run, and the ratios old / new printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from train import report
from vae_attn import models
from workflow import figures


def _module_at(ref: str, folder: pathlib.Path):
  """``workflow/figures.py`` of commit ``ref``, imported under its own name."""
  source = subprocess.run(
    ["git", "show", f"{ref}:workflow/figures.py"],
    check=True,
    capture_output=True,
    text=True,
  ).stdout
  path = folder / "figures_at_ref.py"
  path.write_text(source)
  spec = importlib.util.spec_from_file_location("figures_at_ref", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _cases(fig, out: pathlib.Path):
  model = models.make_model("factorvae", latent_dim=10)
  x = np.random.default_rng(0).random((4, 64, 64, 1), np.float32)
  variables = model.init(jax.random.key(0), jnp.asarray(x), jax.random.key(1))
  run = report._Run(model, variables, (64, 64, 1))
  kl = np.linspace(1.0, 0.0, 10)
  per = np.random.default_rng(1).random((4, 6, 64, 64), np.float32)
  ids = np.arange(6)[None].repeat(4, 0)
  rows = [
    {"step": s, "train/loss": 1 / s, "train/kl": 0.5} for s in range(1, 30)
  ]
  return {
    "traversals (8 latents x 9 steps)": lambda: fig.traversal_figure(
      run, x[:1], kl, str(out / "t.png"), num_latents=8, limit=2.5, steps=9,
      title="traversals",
    ),
    "attention grid (4 images x 6 latents)": lambda: fig.attention_grid(
      out / "a.png", x, per.mean(1), per, ids, scale="image", title="maps"
    ),
    "loss curves": lambda: fig.scalar_curves(out / "c.png", rows),
  }  # fmt: skip


def _time(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--compare", metavar="REF", help="a git commit")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"load average {os.getloadavg()[0]:.2f}; {args.repeats} repeats")
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp)
    modules = {"new": figures}
    if args.compare:
      modules = {"old": _module_at(args.compare, out), **modules}
    totals = dict.fromkeys(modules, 0.0)
    for name in _cases(figures, out):
      got = {
        label: _time(_cases(module, out)[name], args.repeats)
        for label, module in modules.items()
      }
      line = "  ".join(f"{k} {v:5.2f} s" for k, v in got.items())
      if args.compare:
        line += f"  old/new {got['old'] / got['new']:4.2f}"
      print(f"{name:40s}  {line}")
      for label, seconds in got.items():
        totals[label] += seconds
    summary = "  ".join(f"{k} {v:5.2f} s" for k, v in totals.items())
    if args.compare:
      summary += f"  old/new {totals['old'] / totals['new']:4.2f}"
    print(f"{'all three':40s}  {summary}")


if __name__ == "__main__":
  main()
