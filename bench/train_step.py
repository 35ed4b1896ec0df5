"""Benchmark of the trainers' jitted train steps, rewrites on and off.

Measures, in one run and interleaved round by round (so that a noisy machine
affects every variant alike), the time per step of the trainers' own
``train_step`` functions on synthetic batches:

  fvae_tc         FactorVAE (recon + KL + gamma TC, discriminator), batch 64
  fvae_ad_random  AD-FactorVAE, one random latent pair, maps at encoder/conv1
  fvae_ad_all     AD-FactorVAE, all D (D - 1) / 2 pairs
  mnist           one-class MNIST VAE, 28x28x1, batch 128 (the paper's)
  mvtec           one-class ResNet-18 VAE, 256x256x3, batch 8 (the paper's)

each traced twice: with the exact XLA:CPU convolution rewrites
(``vae_attn.ops.fast_convolutions``, wherever the trainers and the attention
transform apply it) and without them (``ops.fast_convolutions`` is the
identity while the step is traced, as on other backends). Each step is
jitted as the loop jits it (``donate_argnums=0``, under the config's matmul
precision), compiled and run once before timing. Per variant it prints the
median ms/step over ``--rounds`` rounds of ``--steps`` steps, steps/s, the
compiled step's memory (XLA's memory analysis: arguments + outputs +
temporaries, minus aliased buffers) and the ratio off/on. Figures are in
bench/README.md.

Run from the repository root:

  python -m bench.train_step                       # fvae_tc, fvae_ad_random
  python -m bench.train_step --variants mnist --rewrites on
  python -m bench.train_step --json results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import statistics
import sys
import time

import jax
import numpy as np

from bench.model_forms import rewrites
from train import factorvae, loop, oneclass
from vae_attn import attention, models


def _factorvae_case(loss: str, pair_mode: str, batch_size: int):
  config = dataclasses.replace(
    factorvae.PRESETS["dsprites"],
    loss=loss,
    pair_mode=pair_mode,
    batch_size=batch_size,
  )
  rng = np.random.default_rng(0)
  shape = (batch_size, *models.input_shape(factorvae.make_model(config)))
  batch = {
    "x": (rng.random(shape) < 0.1).astype(np.float32),
    "x2": (rng.random(shape) < 0.1).astype(np.float32),
  }
  return config, factorvae, batch


def _oneclass_case(preset: str, image_size: int, batch_size: int):
  config = dataclasses.replace(
    oneclass.PRESETS[preset], image_size=image_size, batch_size=batch_size
  )
  shape = (batch_size, *models.input_shape(oneclass.make_model(config)))
  batch = {"image": np.random.default_rng(0).random(shape, np.float32)}
  return config, oneclass, batch


VARIANTS = {
  "fvae_tc": lambda a: _factorvae_case("tc", "random", a.batch_size),
  "fvae_ad_random": lambda a: _factorvae_case("ad", "random", a.batch_size),
  "fvae_ad_all": lambda a: _factorvae_case("ad", "all", a.batch_size),
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


def _compile(name: str, on: bool, args):
  config, trainer, batch = VARIANTS[name](args)
  key = jax.random.key(1)
  state = trainer.create_train_state(jax.random.key(0), config)
  step = functools.partial(
    trainer.train_step, weights=loop.weights(config), config=config
  )
  batch = jax.device_put(batch)
  start = time.perf_counter()
  with rewrites(on), attention.matmul_precision(config.precision):
    lowered = jax.jit(step, donate_argnums=0).lower(state, batch, key)
  step_fn = lowered.compile()
  state, metrics = step_fn(state, batch, key)
  jax.block_until_ready(metrics)
  return dict(
    fn=step_fn,
    state=state,
    batch=batch,
    key=key,
    times=[],
    memory=_compiled_bytes(step_fn),
    compile_s=time.perf_counter() - start,
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bench.train_step")
  parser.add_argument(
    "--variants",
    nargs="+",
    choices=sorted(VARIANTS),
    default=["fvae_tc", "fvae_ad_random"],
  )
  parser.add_argument(
    "--rewrites", nargs="+", choices=["on", "off"], default=["on", "off"]
  )
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--mvtec-size", type=int, default=256)
  parser.add_argument("--steps", type=int, default=1, help="steps per round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--json", default="", help="also write results here")
  args = parser.parse_args(argv)

  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform} "
    f"({jax.device_count()} device(s), {os.cpu_count()} CPUs, load average "
    f"{os.getloadavg()[0]:.1f}); {args.rounds} rounds x {args.steps} steps"
  )
  cases = {}
  for name in args.variants:
    for mode in args.rewrites:
      cases[name, mode] = _compile(name, mode == "on", args)
      print(
        f"  compiled {name} (rewrites {mode}) in "
        f"{cases[name, mode]['compile_s']:.1f} s",
        flush=True,
      )

  for _ in range(args.rounds):
    for case in cases.values():
      start = time.perf_counter()
      for _ in range(args.steps):
        case["state"], metrics = case["fn"](
          case["state"], case["batch"], case["key"]
        )
      jax.block_until_ready((case["state"], metrics))
      case["times"].append((time.perf_counter() - start) / args.steps)

  results = {}
  print(
    f"\n{'variant':16} {'rewrites':>8} {'ms/step':>9} {'steps/s':>8} "
    f"{'memory MB':>10}"
  )
  for (name, mode), case in cases.items():
    ms = 1e3 * statistics.median(case["times"])
    mem = case["memory"]
    results[f"{name}/{mode}"] = {
      "ms_per_step": ms,
      "steps_per_s": 1e3 / ms,
      "min_ms": 1e3 * min(case["times"]),
      "memory_mb": None if mem is None else mem / 2**20,
      "compile_s": case["compile_s"],
    }
    mem_text = "n/a" if mem is None else f"{mem / 2**20:.0f}"
    print(f"{name:16} {mode:>8} {ms:9.1f} {1e3 / ms:8.2f} {mem_text:>10}")
  ratios = {}
  for name in args.variants:
    on, off = results.get(f"{name}/on"), results.get(f"{name}/off")
    if on and off:
      ratios[f"{name} off/on"] = off["ms_per_step"] / on["ms_per_step"]
  for name, value in ratios.items():
    print(f"ratio {name}: {value:.2f}x")
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(
    f"peak RSS of this process: {peak_mb:.0f} MB; load average "
    f"{os.getloadavg()[0]:.1f}"
  )
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
