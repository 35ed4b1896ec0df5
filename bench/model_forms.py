"""Benchmark: the attention maps of one architecture written three ways.

The FactorVAE encoder (docs/paper.md#architectures: four Conv4x4/2/1 with
ReLU, Linear 128, mu and logvar of D = 32) as

  ours   ``vae_attn.models.factorvae``'s encoder (``encoder/conv1``),
  linen  a user's Linen module: ``nn.relu(nn.Conv(...)(x))`` (``conv1``),
  nnx    a user's ``nnx.Module`` with ``nnx.Conv`` layers (``conv1``),

all with the same weights, each timed as ``jax.jit(attention(encode_fn,
layer))`` at the first conv (32x32x32, the L_AD layer), with the exact
XLA:CPU convolution rewrites (``vae_attn.ops.fast_convolutions``, which the
attention transform applies) and without them (``ops.fast_convolutions`` is
the identity while tracing, as on other backends). Compiled once each, then
timed in interleaved rounds, median of ``--repeats``. Prints ms per batch,
the ratio of each form to ours with the same setting, off/on per form, and
the largest difference of each form's maps from ours. Figures are in
bench/README.md.

Run from the repository root:

  python -m bench.model_forms
  python -m bench.model_forms --batch 64 --repeats 10
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from vae_attn import attention, models, ops

D = 32
WIDTHS = (32, 32, 64, 64)


@contextlib.contextmanager
def rewrites(enabled: bool):
  """While tracing inside: ``ops.fast_convolutions`` as is, or the identity."""
  if enabled:
    yield
    return
  saved = ops.fast_convolutions
  ops.fast_convolutions = lambda fn: fn
  try:
    yield
  finally:
    ops.fast_convolutions = saved


class LinenEncoder(nn.Module):
  """The encoder as a Linen user writes it: stock layers, functional ReLU."""

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(WIDTHS):
      conv = nn.Conv(width, (4, 4), strides=2, padding=1, name=f"conv{i + 1}")
      x = nn.relu(conv(x))
    x = nn.relu(nn.Dense(128, name="fc1")(x.reshape(x.shape[0], -1)))
    return nn.Dense(D, name="mu")(x), nn.Dense(D, name="logvar")(x)


class NnxEncoder(nnx.Module):
  """The encoder as an NNX user writes it."""

  def __init__(self, rngs: nnx.Rngs):
    widths = (1, *WIDTHS)
    for i in range(4):
      conv = nnx.Conv(
        widths[i], widths[i + 1], (4, 4), strides=2, padding=1, rngs=rngs
      )
      setattr(self, f"conv{i + 1}", conv)
    self.fc1 = nnx.Linear(4 * 4 * 64, 128, rngs=rngs)
    self.mu = nnx.Linear(128, D, rngs=rngs)
    self.logvar = nnx.Linear(128, D, rngs=rngs)

  def __call__(self, x):
    for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
      x = nnx.relu(conv(x))
    x = nnx.relu(self.fc1(x.reshape(x.shape[0], -1)))
    return self.mu(x), self.logvar(x)


def forms(x):
  """``{name: (encode_fn, layer, first argument)}``, the same weights."""
  model = models.make_model("factorvae", latent_dim=D)
  variables = model.init(jax.random.key(1), x[:1], jax.random.key(2))
  encoder = variables["params"]["encoder"]
  params = {f"conv{i}": encoder[f"conv{i}"]["conv"] for i in range(1, 5)} | {
    name: encoder["head"][name] for name in ("fc1", "mu", "logvar")
  }
  nnx_model = NnxEncoder(nnx.Rngs(0))
  for name, layer in params.items():
    getattr(nnx_model, name).kernel.value = layer["kernel"]
    getattr(nnx_model, name).bias.value = layer["bias"]
  return {
    "ours": (
      functools.partial(model.apply, method=model.encode),
      "encoder/conv1",
      variables,
    ),
    "linen": (LinenEncoder().apply, "conv1", {"params": params}),
    "nnx": (lambda module, x: module(x), "conv1", nnx_model),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m bench.model_forms")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  print(
    f"jax {jax.__version__}, backend {jax.default_backend()}, "
    f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
    f"FactorVAE encoder at conv1 (32x32x32), B = {args.batch}, D = {D}, "
    f"median of {args.repeats}",
    flush=True,
  )
  x = jax.random.uniform(jax.random.key(0), (args.batch, 64, 64, 1))
  cases, maps, failed = {}, {}, {}
  for name, (encode_fn, layer, first) in forms(x).items():
    for mode in ("on", "off"):
      try:
        with rewrites(mode == "on"):
          fn = jax.jit(attention.attention(encode_fn, layer))
          maps[name, mode] = jax.block_until_ready(fn(first, x)).per_latent
      except (TypeError, ValueError) as e:  # A form this version refuses.
        failed[name] = str(e).splitlines()[0][:100]
        break
      cases[name, mode] = (fn, first, [])
  for _ in range(args.repeats):
    for fn, first, times in cases.values():
      start = time.perf_counter()
      jax.block_until_ready(fn(first, x))
      times.append(time.perf_counter() - start)
  ms = {k: 1e3 * statistics.median(times) for k, (_, _, times) in cases.items()}

  print(f"\n{'form':6} {'rewrites':>8} {'ms':>8} {'/ ours':>7} {'max diff':>9}")
  for (name, mode), t in ms.items():
    ratio = t / ms["ours", mode] if ("ours", mode) in ms else float("nan")
    diff = jnp.abs(maps[name, mode] - maps["ours", "on"]).max()
    print(f"{name:6} {mode:>8} {t:8.1f} {ratio:7.2f} {float(diff):9.1e}")
  for name in dict.fromkeys(n for n, _ in ms):
    if (name, "off") in ms:
      print(f"{name}: off/on {ms[name, 'off'] / ms[name, 'on']:.2f}")
  for name, why in failed.items():
    print(f"{name}: not run, the attention transform refused it: {why}")
  print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
