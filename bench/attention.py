"""Benchmark of the attention transform on XLA:CPU (issue #2).

For each model and layer, and batch sizes 64 and 128 with D = 32, prints the
median time per batch and maps per second of

  (a) the transform: ``jax.jit(attention.attention(encode, layer))``, all D
      per-latent maps from one forward pass;
  (b) a naive loop: one jitted ``jax.grad`` of ``sum_b z_bi`` w.r.t. the
      layer's activation per latent ``i``, called D times from Python;
  (c) the official code's single map: one jitted backward of ``sum(mu)``
      w.r.t. the activation, and its Grad-CAM map;

and the ratios a/c and b/a. Everything is measured in one run, after a
warm-up call of each function, as the median of ``--repeats`` calls.

Run from the repository root:

  python -m bench.attention              # all cases, batch 64 and 128
  python -m bench.attention --batch 64 --repeats 5
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_attn import attention, models, ops

D = 32
CASES = (
  ("mnist", "encoder/conv2", (28, 28, 1)),
  ("factorvae", "encoder/conv1", (64, 64, 1)),
  ("factorvae", "encoder/conv4", (64, 64, 1)),
)


def _median_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # Warm-up (compiles).
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def _activation_grad_fn(encode, layer: str, shape):
  """``(variables, x, ct) -> map`` of ``<ct, mu>`` at ``layer``.

  The layer's output ``A`` gets a zero offset of its full shape (as the
  official code reads the gradient of ``A`` with a hook); the gradient of
  ``<ct, mu>`` w.r.t. the offset is ``d<ct, mu>/dA``, pooled into a
  Grad-CAM map.
  """

  def fn(variables, x, ct):
    def code(delta):
      captured = {}

      def perturb(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if (
          context.method_name == "__call__"
          and "/".join(context.module.path) == layer
        ):
          captured["a"] = out
          return out + delta
        return out

      with nn.intercept_methods(perturb):
        mu, _ = encode(variables, x)
      return jnp.sum(mu * ct), captured["a"]

    delta = jnp.zeros(shape, x.dtype)
    # With the XLA:CPU rewrites, as the transform has them.
    g, a = jax.grad(ops.fast_convolutions(code), has_aux=True)(delta)
    b, h, w, n = g.shape
    # The spatial mean as a matmul (XLA:CPU reductions are slow).
    weights = jnp.full((h * w,), 1.0 / (h * w))
    alpha = jnp.einsum("bpn,p->bn", g.reshape(b, h * w, n), weights)
    return jax.nn.relu(jnp.einsum("bhwn,bn->bhw", a, alpha))

  return jax.jit(fn)


def run_case(name, layer, image_shape, batch, repeats):
  model = models.make_model(name, latent_dim=D)
  x = jax.random.uniform(jax.random.key(0), (batch, *image_shape))
  variables = model.init(jax.random.key(1), x[:2], jax.random.key(2))
  encode = functools.partial(model.apply, method=model.encode)
  shape = attention.layer_paths(encode, variables, x)[layer]

  transform = jax.jit(attention.attention(encode, layer))
  t_a = _median_ms(transform, variables, x, repeats=repeats)

  grad_fn = _activation_grad_fn(encode, layer, shape)
  onehots = [jnp.zeros((batch, D)).at[:, i].set(1.0) for i in range(D)]

  def naive(variables, x):
    return [grad_fn(variables, x, ct) for ct in onehots]

  t_b = _median_ms(naive, variables, x, repeats=max(1, repeats // 2))
  t_c = _median_ms(grad_fn, variables, x, jnp.ones((batch, D)), repeats=repeats)

  maps = batch * D
  print(
    f"{name:9s} {layer:14s} {'x'.join(map(str, shape[1:])):9s} B={batch:3d} "
    f"(a) {t_a:7.1f} ms {maps / t_a * 1e3:8.0f} maps/s | "
    f"(b) {t_b:7.1f} ms {maps / t_b * 1e3:7.0f} maps/s | "
    f"(c) {t_c:6.1f} ms | a/c {t_a / t_c:5.2f} | b/a {t_b / t_a:5.2f}",
    flush=True,
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, nargs="+", default=[64, 128])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument(
    "--case", type=int, nargs="+", default=list(range(len(CASES)))
  )
  args = parser.parse_args()
  print(
    f"jax {jax.__version__}, backend {jax.default_backend()}, "
    f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
    f"D = {D}, median of {args.repeats} (naive loop: of "
    f"{max(1, args.repeats // 2)})"
  )
  for batch in args.batch:
    for i in args.case:
      run_case(*CASES[i], batch, args.repeats)


if __name__ == "__main__":
  main()
