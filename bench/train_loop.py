"""The FactorVAE trainer's bare step, its full loop and a grid, in one run.

Prints steps/s of

  bare   the trainer's jitted ``train_step`` alone, called in a Python loop on
         one batch already on the device (the ceiling);
  loop   ``train.factorvae.train_and_evaluate``: data drawn on the device
         inside the step, ``steps_per_call`` steps per compiled call, metrics
         read once per log interval, checkpoints at the end;
  grid   the same loop training ``--members`` seeds as one program
         (member-steps/s = steps/s x members), in the backend's default grid
         mode (``sequential`` on XLA:CPU, ``vmap`` elsewhere) and, with
         ``--both-modes``, the other one too;

and the ratios loop/bare and grid/loop (member-steps/s of the grid over
steps/s of one run). The loop's rates are the ``train/steps_per_sec`` it logs
for every log interval after the first (which holds the compilation).

  python -m bench.train_loop                          # AD-FactorVAE, B=64
  python -m bench.train_loop --members 6 --log-every 200 --logs 3   # GPU
  python -m bench.train_loop --loss tc --json loop.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax

from train import factorvae, loop
from workflow import grid, writers


def _bare(config, steps: int, repeats: int) -> float:
  """Median steps/s of the jitted step on one device-resident batch."""
  state = jax.jit(factorvae.create_train_state, static_argnums=1)(
    jax.random.key(0), config
  )
  arrays, sample_fn = factorvae.device_data(config)
  batch = jax.jit(sample_fn, static_argnums=2)(
    arrays, jax.random.key(1), config.batch_size
  )
  hparams = loop.weights(config)
  key = jax.random.key(2)

  def step(state, batch, key, hparams):
    with jax.default_matmul_precision(config.precision):
      return factorvae.train_step(state, batch, key, hparams, config)

  step = jax.jit(step, donate_argnums=0)
  state, metrics = step(state, batch, key, hparams)
  jax.block_until_ready(metrics)
  rates = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch, key, hparams)
    jax.block_until_ready((state, metrics))
    rates.append(steps / (time.perf_counter() - start))
  return statistics.median(rates)


def _loop(configs, workdir: str) -> float:
  """Median logged steps/s over the log intervals after the first."""
  configs = configs if isinstance(configs, list) else [configs]
  factorvae.train_and_evaluate(
    configs if len(configs) > 1 else configs[0], workdir, report=False
  )
  dirs = grid.member_dirs(pathlib.Path(workdir).absolute(), configs)
  rows = writers.read_scalars(dirs[0])
  rates = [r["train/steps_per_sec"] for r in rows if "train/loss" in r]
  return statistics.median(rates[1:])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m bench.train_loop",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--loss", default="ad", choices=("ad", "tc"))
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument(
    "--log-every", type=int, default=20, help="steps per timed interval"
  )
  parser.add_argument(
    "--logs", type=int, default=3, help="timed intervals (after the first)"
  )
  parser.add_argument("--members", type=int, default=2, help="grid size")
  parser.add_argument(
    "--steps-per-call",
    type=int,
    default=0,
    help="the loop's steps per compiled call (0: its default for the backend)",
  )
  parser.add_argument(
    "--both-modes", action="store_true", help="time vmap and sequential grids"
  )
  parser.add_argument("--json", default="", help="also write results here")
  args = parser.parse_args(argv)

  steps = args.log_every * (args.logs + 1)
  config = dataclasses.replace(
    factorvae.PRESETS["dsprites"],
    loss=args.loss,
    batch_size=args.batch_size,
    num_steps=steps,
    log_every=args.log_every,
    steps_per_call=args.steps_per_call,
    checkpoint_every=steps,
    score=False,
  )
  backend = jax.default_backend()
  default_mode = "sequential" if backend == "cpu" else "vmap"
  modes = [default_mode]
  if args.both_modes:
    modes.append("vmap" if default_mode == "sequential" else "sequential")
  print(
    f"jax {jax.__version__} on {backend} ({jax.device_count()} device(s)); "
    f"FactorVAE --loss={args.loss}, batch {args.batch_size}, "
    f"{args.logs} timed intervals of {args.log_every} steps",
    flush=True,
  )
  results = {}
  results["bare"] = _bare(config, args.log_every, args.logs)
  print(f"  bare step: {results['bare']:.2f} steps/s", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    results["loop"] = _loop(config, f"{tmp}/single")
    print(f"  loop:      {results['loop']:.2f} steps/s", flush=True)
    for mode in modes:
      members = [
        dataclasses.replace(config, seed=s, grid_mode=mode)
        for s in range(args.members)
      ]
      rate = _loop(members, f"{tmp}/grid_{mode}") * args.members
      results[f"grid_{mode}"] = rate
      print(
        f"  grid ({args.members} members, {mode}): {rate:.2f} member-steps/s",
        flush=True,
      )
  ratios = {"loop/bare": results["loop"] / results["bare"]}
  for mode in modes:
    ratios[f"grid_{mode}/loop"] = results[f"grid_{mode}"] / results["loop"]
  for name, value in ratios.items():
    print(f"ratio {name}: {value:.2f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "backend": backend,
          "args": vars(args),
          "steps_per_s": results,
          "ratios": ratios,
        },
        f,
        indent=2,
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
