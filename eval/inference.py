"""Evaluation-time inference: fixed micro-batches dealt over local devices.

A disentanglement metric calls its representation function on up to a
million images. ``batched`` turns a jitted ``fn(variables, x)`` into such a
function: it cuts the observations into micro-batches of one size (the last
one zero-padded, so one program is compiled), deals them round-robin over
the local devices, dispatches every micro-batch before reading any result,
and returns NumPy.

On a CPU host XLA runs these convolutions on one core per device, so
``use_cpu_devices`` splits the host into several CPU devices (two per core by
default) before JAX starts, and ``batched`` keeps every core busy
(measurements: bench/README.md, ``python -m bench.factorvae_metric``). On an
accelerator host the devices are the accelerators.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


def use_cpu_devices(count: int | None = None) -> int:
  """Splits the host CPU into ``count`` JAX devices (default 2 per core).

  Must run before the first JAX computation of the process (JAX reads the
  setting when it starts its backends). Only the CPU backend is affected.

  Args:
    count: number of CPU devices; ``None`` for twice ``os.cpu_count()``.

  Returns:
    The count that was set.

  Raises:
    RuntimeError: when JAX has already started (JAX's own message says so).
    ValueError: for a count below 1.
  """
  count = 2 * (os.cpu_count() or 1) if count is None else int(count)
  if count < 1:
    raise ValueError(f"count must be at least 1, got {count}.")
  jax.config.update("jax_num_cpu_devices", count)
  return count


def batched(
  fn: Callable[[Any, jax.Array], Any],
  variables: Any,
  *,
  batch_size: int = 64,
  devices: Sequence[jax.Device] | None = None,
) -> Callable[[np.ndarray], Any]:
  """``fn(variables, x)`` over any number of examples, as NumPy.

  Args:
    fn: a pure function of ``(variables, x [B, ...])`` returning an array
      or pytree of arrays with leading axis ``B``; it is jitted here.
    variables: its first argument, copied once to every device.
    batch_size: examples per call of ``fn`` (per device). Small batches keep
      activations in cache; 64 is fastest for the paper's encoders on CPU.
    devices: where to run; default ``jax.local_devices()``.

  Returns:
    ``apply(x)``: ``x [N, ...]`` -> the outputs for all ``N`` examples, as
    NumPy arrays in the structure ``fn`` returns. One program is compiled
    per input shape ``[batch_size, ...]`` and dtype, whatever ``N`` is.

  Raises:
    ValueError: for a bad ``batch_size`` or an empty device list.
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
      if chunk.shape[0] < batch_size:  # Pad: one compiled shape only.
        pad = np.zeros((batch_size - chunk.shape[0], *x.shape[1:]), x.dtype)
        chunk = np.concatenate([chunk, pad])
      k = i % len(devices)
      # Asynchronous dispatch: every micro-batch is queued before any wait.
      outputs.append(jitted(replicas[k], jax.device_put(chunk, devices[k])))
    outputs = jax.device_get(outputs)
    return jax.tree.map(
      lambda *parts: np.concatenate(parts, axis=0)[:num], *outputs
    )

  return apply


def use_all_cpu_cores() -> None:
  """Two JAX CPU devices per core, unless JAX is already running.

  XLA runs the paper's convolutions on one core per CPU device, so an
  evaluation that deals micro-batches over devices (:func:`batched`)
  needs several devices to use every core. Nothing changes when the user
  chose a device count (``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS``) or when
  JAX has already started in this process (e.g. ``main`` called from Python
  after other JAX work): the existing devices are used as they are.
  """
  # JAX_NUM_CPU_DEVICES is read into the config when jax is imported.
  if jax.config.jax_num_cpu_devices != -1 or (
    "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
  ):
    return
  try:
    use_cpu_devices()
  except RuntimeError:  # JAX has started: keep its devices.
    pass
