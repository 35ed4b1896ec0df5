"""Benchmark of the jitted train steps on this machine (issue #4).

Measures, in one run and interleaved round by round (so that a noisy machine
affects every variant alike), the time per step of the trainers' own
``train_step`` functions on synthetic batches:

  fvae_tc         FactorVAE (recon + KL + gamma TC, discriminator), batch 64
  fvae_ad_random  AD-FactorVAE, one random latent pair, maps at encoder/conv1
  fvae_ad_all     AD-FactorVAE, all D (D - 1) / 2 pairs
  mnist           one-class MNIST VAE, 28x28x1, batch 128 (the paper's)
  mvtec           one-class ResNet-18 VAE, 256x256x3, batch 8 (the paper's)

Each step is jitted as the loop jits it (``donate_argnums=0``), compiled and
run once before timing. Per variant it prints the median ms/step over
``--rounds`` rounds of ``--steps`` steps, steps/s, the compiled step's memory
(XLA's memory analysis: arguments + outputs + temporaries, minus aliased
buffers) and the ratios AD / plain. The process's peak RSS closes the report.

Measured on the project's 2-core CPU machine (jax 0.10.2, XLA:CPU, shared
with other jobs, load average about 5; ``--rounds 5 --steps 3``):

  variant           ms/step  steps/s  compiled-step memory
  fvae_tc             182.7     5.47       125 MB
  fvae_ad_random      226.6     4.41       148 MB   (1.24x fvae_tc)
  fvae_ad_all        1537.2     0.65      1512 MB   (8.42x fvae_tc)
  mnist (B=128)       361.4     2.77       236 MB
  mvtec (B=8, 256)   2338.6     0.43      1577 MB

Run from the repository root:

  python -m bench.train_step
  python -m bench.train_step --variants fvae_tc fvae_ad_random --rounds 5
  python -m bench.train_step --json results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import resource
import statistics
import sys
import time

import jax
import numpy as np
import optax

from train import factorvae, oneclass


def _factorvae_case(pair_mode: str | None, batch_size: int):
  loss = "tc" if pair_mode is None else "ad"
  config = dataclasses.replace(
    factorvae.PRESETS["dsprites"],
    loss=loss,
    pair_mode=pair_mode or "random",
    batch_size=batch_size,
  )
  state = factorvae.create_train_state(jax.random.key(0), config)
  rng = np.random.default_rng(0)
  shape = (batch_size, 64, 64, 1)
  batch = {
    "x": (rng.random(shape) < 0.1).astype(np.float32),
    "x2": (rng.random(shape) < 0.1).astype(np.float32),
  }
  step = functools.partial(
    factorvae.train_step,
    hparams=jax.tree.map(np.float32, factorvae.hparams(config)),
    config=config,
  )
  return state, batch, step


def _oneclass_case(preset: str, image_size: int, batch_size: int):
  config = dataclasses.replace(
    oneclass.PRESETS[preset], image_size=image_size, batch_size=batch_size
  )
  model = oneclass.make_model(config)
  tx = optax.adam(config.learning_rate)
  state = oneclass.create_train_state(jax.random.key(0), config, model, tx)
  channels = 3 if config.model == "resnet18" else 1
  size = 28 if config.model == "mnist" else image_size
  batch = {
    "image": np.random.default_rng(0)
    .random((batch_size, size, size, channels))
    .astype(np.float32)
  }
  step = functools.partial(oneclass.train_step, hparams={}, model=model)
  return state, batch, step


VARIANTS = {
  "fvae_tc": lambda a: _factorvae_case(None, a.batch_size),
  "fvae_ad_random": lambda a: _factorvae_case("random", a.batch_size),
  "fvae_ad_all": lambda a: _factorvae_case("all", a.batch_size),
  "mnist": lambda a: _oneclass_case("mnist", 28, 128),
  "mvtec": lambda a: _oneclass_case("mvtec", a.mvtec_size, 8),
}


def _compiled_bytes(compiled) -> int | None:
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, AttributeError, RuntimeError):
    return None
  if stats is None:
    return None
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.train_step")
  parser.add_argument(
    "--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS)
  )
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--mvtec-size", type=int, default=256)
  parser.add_argument("--steps", type=int, default=5, help="steps per round")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--json", default="", help="also write results here")
  args = parser.parse_args(argv)

  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform} "
    f"({jax.device_count()} device(s)); {args.rounds} rounds x "
    f"{args.steps} steps"
  )
  key = jax.random.key(1)
  cases = {}
  for name in args.variants:
    state, batch, step = VARIANTS[name](args)
    batch = jax.device_put(batch)
    start = time.perf_counter()
    step_fn = jax.jit(step, donate_argnums=0).lower(state, batch, key).compile()
    memory = _compiled_bytes(step_fn)
    state, metrics = step_fn(state, batch, key)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    cases[name] = dict(
      fn=step_fn,
      state=state,
      batch=batch,
      times=[],
      memory=memory,
      compile_s=compile_s,
    )
    print(f"  compiled {name} in {compile_s:.1f} s", flush=True)

  for _ in range(args.rounds):
    for case in cases.values():
      start = time.perf_counter()
      for _ in range(args.steps):
        case["state"], metrics = case["fn"](case["state"], case["batch"], key)
      jax.block_until_ready((case["state"], metrics))
      case["times"].append((time.perf_counter() - start) / args.steps)

  results = {}
  print(f"\n{'variant':16} {'ms/step':>9} {'steps/s':>8} {'memory MB':>10}")
  for name, case in cases.items():
    ms = 1e3 * statistics.median(case["times"])
    mem = case["memory"]
    results[name] = {
      "ms_per_step": ms,
      "steps_per_s": 1e3 / ms,
      "min_ms": 1e3 * min(case["times"]),
      "memory_mb": None if mem is None else mem / 2**20,
      "compile_s": case["compile_s"],
    }
    mem_text = "n/a" if mem is None else f"{mem / 2**20:.0f}"
    print(f"{name:16} {ms:9.1f} {1e3 / ms:8.2f} {mem_text:>10}")
  ratios = {}
  if "fvae_tc" in results:
    for name in ("fvae_ad_random", "fvae_ad_all"):
      if name in results:
        ratios[f"{name}/fvae_tc"] = (
          results[name]["ms_per_step"] / results["fvae_tc"]["ms_per_step"]
        )
  for name, value in ratios.items():
    print(f"ratio {name}: {value:.2f}x")
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"peak RSS of this process: {peak_mb:.0f} MB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {"results": results, "ratios": ratios, "peak_rss_mb": peak_mb},
        f,
        indent=2,
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
