"""Evaluation-time inference: fixed micro-batches dealt over local devices.

A disentanglement metric encodes up to a million images. ``batched`` turns
``fn(variables, x)`` into a NumPy function of any number of examples, in
micro-batches of one size dealt round-robin over the local devices. XLA:CPU
runs these convolutions on one core per device, so ``use_cpu_devices``
splits the host into several CPU devices first (bench/README.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


def use_cpu_devices(count: int | None = None) -> int:
  """Splits the host CPU into ``count`` JAX devices (default 2 per core).

  Must run before JAX starts its backends; returns the count set.

  Raises:
    RuntimeError: JAX has already started (JAX's own message).
    ValueError: a count below 1.
  """
  count = 2 * (os.cpu_count() or 1) if count is None else int(count)
  if count < 1:
    raise ValueError(f"count must be at least 1, got {count}.")
  jax.config.update("jax_num_cpu_devices", count)
  return count


def use_all_cpu_cores() -> None:
  """:func:`use_cpu_devices` with its default, unless the user chose a
  device count (``JAX_NUM_CPU_DEVICES``, ``XLA_FLAGS``) or JAX has started
  (its devices are kept)."""
  if jax.config.jax_num_cpu_devices != -1 or (
    "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
  ):
    return
  try:
    use_cpu_devices()
  except RuntimeError:
    pass


def batched(
  fn: Callable[[Any, jax.Array], Any],
  variables: Any,
  *,
  batch_size: int = 64,
  devices: Sequence[jax.Device] | None = None,
) -> Callable[[np.ndarray], Any]:
  """``apply(x [N, ...])``: the outputs of the pure ``fn(variables, x [B,
  ...])`` (jitted here; ``variables`` copied once to each of ``devices``,
  default the local ones) for all ``N`` examples, as NumPy in ``fn``'s
  structure. Micro-batches of ``batch_size`` (the last zero-padded: one
  program per input shape and dtype) are all dispatched before any is read.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
  devices = list(jax.local_devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices is empty; pass at least one jax.Device.")
  jitted = jax.jit(fn)
  replicas = [jax.device_put(variables, d) for d in devices]

  def apply(x: np.ndarray) -> Any:
    x = np.asarray(x)
    if x.ndim == 0:
      raise ValueError("x must have a leading example axis, got a scalar.")
    num = x.shape[0]
    outputs = []
    for i, start in enumerate(range(0, max(num, 1), batch_size)):
      chunk = x[start : start + batch_size]
      pad = [(0, batch_size - len(chunk))] + [(0, 0)] * (x.ndim - 1)
      k = i % len(devices)
      chunk = jax.device_put(np.pad(chunk, pad), devices[k])
      outputs.append(jitted(replicas[k], chunk))
    outputs = jax.device_get(outputs)
    return jax.tree.map(lambda *p: np.concatenate(p)[:num], *outputs)

  return apply
