"""Benchmark: the FactorVAE metric over all 737,280 procedural dSprites images.

Run by hand from the repository root (never by pytest):

  python -m bench.factorvae_metric                  # tabulated (default)
  python -m bench.factorvae_metric --mode=direct    # metric on raw images
  python -m bench.factorvae_metric --smoke          # seconds, small sizes

The encoder is a randomly initialised FactorVAE (``models.factorvae``); its
posterior mean is the representation, computed by ``eval.inference.batched``
(micro-batches of 64, the last zero-padded, dealt over all devices). On CPU
the host is split into ``--cpu_devices`` JAX devices (default 2 per core; XLA
runs these convolutions on one core per device), and the encoder rate on all
devices is printed beside the rate on one device.

* ``tabulated``: ``disentanglement.tabulate`` renders and encodes every
  image of the data set once (this is the "all 737,280 images through the
  encoder" figure, reported as images/s and seconds), then
  ``factor_vae.compute_factor_vae`` (disentanglement_lib convention: 64 images
  per vote, 10,000 + 5,000 votes, 10,000 images for the variances) only looks
  codes up. Total = encode pass + metric.
* ``direct``: the metric renders and encodes its own 10,000 + 15,000 x 64 =
  970,000 images, as disentanglement_lib does.

It prints one line per measurement and a final summary.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from eval import inference
from eval.metrics import disentanglement, factor_vae
from vae_attn import models
from vae_attn.data import dsprites


def make_representation_fn(
  latent_dim: int,
  batch_size: int,
  seed: int,
  devices: list[jax.Device] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
  """A NumPy representation function: images ``[N, 64, 64, 1]`` -> mu."""
  model = models.factorvae(latent_dim=latent_dim)
  dummy = jnp.zeros((1, 64, 64, 1), jnp.float32)
  variables = model.init(jax.random.key(seed), dummy, jax.random.key(seed + 1))
  representation_fn = inference.batched(
    lambda v, x: model.apply(v, x, method=model.encode)[0],
    variables,
    batch_size=batch_size,
    devices=devices,
  )
  num = batch_size * len(devices or jax.devices())
  representation_fn(np.zeros((num, 64, 64, 1), np.float32))  # Compile.
  return representation_fn


def _encode_rate(
  representation_fn: Callable[[np.ndarray], np.ndarray], num: int = 16384
) -> float:
  """Images/s of the encoder alone on ``num`` pre-rendered images."""
  x = (np.random.default_rng(0).random((num, 64, 64, 1)) > 0.8).astype(
    np.float32
  )
  start = time.perf_counter()
  representation_fn(x)
  return num / (time.perf_counter() - start)


def _render_rate(data: dsprites.ProceduralDSprites, batch_size: int) -> float:
  """Images/s of the procedural renderer alone, over 16 batches."""
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  for _ in range(16):
    data.get_batch(rng.integers(len(data), size=batch_size))
  return 16 * batch_size / (time.perf_counter() - start)


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", choices=("tabulated", "direct", "both"))
  parser.add_argument("--batch_size", type=int, help="images per encoder call")
  parser.add_argument("--latent_dim", type=int)
  parser.add_argument("--seed", type=int)
  parser.add_argument(
    "--cpu_devices",
    type=int,
    help="JAX CPU devices to split the host into (0: JAX's default, one)",
  )
  parser.add_argument(
    "--smoke", action="store_true", help="direct mode, tiny sizes"
  )
  parser.set_defaults(
    mode="tabulated",
    batch_size=64,
    latent_dim=32,
    seed=0,
    cpu_devices=2 * (os.cpu_count() or 1),
  )
  return parser.parse_args()


def _print_rates(args, data, representation_fn) -> None:
  """The renderer's and the encoder's rates, on all devices and on one."""
  print(f"renderer alone: {_render_rate(data, 4096):,.0f} images/s")
  rate = _encode_rate(representation_fn)
  if jax.device_count() > 1:
    one = make_representation_fn(
      args.latent_dim, args.batch_size, args.seed, jax.devices()[:1]
    )
    rate_one = _encode_rate(one)
    print(
      f"encoder alone: {rate:,.0f} images/s on {jax.device_count()} "
      f"devices, {rate_one:,.0f} on 1 ({rate / rate_one:.2f}x)"
    )
  else:
    print(f"encoder alone: {rate:,.0f} images/s on 1 device")


def _tabulated(args, data, representation_fn) -> float:
  """Seconds of the code table plus the metric on it."""
  start, cpu_start = time.perf_counter(), time.process_time()
  table_data, lookup = disentanglement.tabulate(
    data, representation_fn, np.random.RandomState(args.seed)
  )
  encode_s = time.perf_counter() - start
  cpu_s = time.process_time() - cpu_start
  num = len(data)
  print(
    f"all {num:,} images rendered + encoded: {encode_s:.1f} s, "
    f"{num / encode_s:,.0f} images/s (micro-batch {args.batch_size} on "
    f"{jax.device_count()} device(s); process "
    f"CPU time {cpu_s:.0f} s, load average {os.getloadavg()[0]:.1f})"
  )
  start = time.perf_counter()
  scores = factor_vae.compute_factor_vae(
    table_data, lookup, np.random.RandomState(args.seed)
  )
  metric_s = time.perf_counter() - start
  print(f"FactorVAE metric on the code table: {metric_s:.1f} s -> {scores}")
  return encode_s + metric_s


def _direct(args, data, representation_fn, **sizes: int) -> float:
  """Seconds of the metric on raw images (it renders and encodes them)."""
  start = time.perf_counter()
  scores = factor_vae.compute_factor_vae(
    data, representation_fn, np.random.RandomState(args.seed), **sizes
  )
  seconds = time.perf_counter() - start
  what = "smoke" if sizes else "970,000 encodes"
  print(f"FactorVAE metric on raw images ({what}): {seconds:.1f} s -> {scores}")
  return seconds


def main() -> None:
  args = _parse_args()
  if args.cpu_devices:
    inference.use_cpu_devices(args.cpu_devices)
  print(
    f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
    f"({jax.device_count()} device(s)); {os.cpu_count()} CPU cores visible"
  )
  data = dsprites.procedural()
  start = time.perf_counter()
  representation_fn = make_representation_fn(
    args.latent_dim, args.batch_size, args.seed
  )
  print(f"init + compile: {time.perf_counter() - start:.1f} s")
  _print_rates(args, data, representation_fn)
  if args.smoke:
    _direct(
      args,
      data,
      representation_fn,
      num_train=50,
      num_eval=50,
      num_variance_estimate=1000,
    )
    return
  summary = {}
  if args.mode in ("tabulated", "both"):
    summary["tabulated"] = _tabulated(args, data, representation_fn)
  if args.mode in ("direct", "both"):
    summary["direct"] = _direct(args, data, representation_fn)
  for mode, seconds in summary.items():
    print(
      f"SUMMARY {mode}: FactorVAE metric (disentanglement_lib convention), "
      f"encoder included, {seconds:.1f} s wall"
    )


if __name__ == "__main__":
  main()
