"""What the evaluation entry points share: run, report errors, print."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import jax

from eval import inference
from vae_attn.data import base


def run_report(
  evaluate: Callable[[argparse.Namespace], dict], args: argparse.Namespace
) -> int:
  """Runs ``evaluate(args)`` and prints the ``report.md`` it wrote.

  A missing run, bad option or data problem prints ``error: ...`` (the
  message says what to fix) and returns exit status 2 instead of a
  traceback.

  Returns:
    The process exit status.
  """
  try:
    results = evaluate(args)
  except (FileNotFoundError, ValueError, base.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  with open(os.path.join(results["out"], "report.md")) as f:
    print(f.read())
  return 0


def use_all_cpu_cores() -> None:
  """Two JAX CPU devices per core, unless JAX is already running.

  XLA runs the paper's convolutions on one core per CPU device, so an
  evaluation that deals micro-batches over devices (``inference.batched``)
  needs several devices to use every core. Nothing changes when the user
  chose a device count (``JAX_NUM_CPU_DEVICES`` or ``XLA_FLAGS``) or when
  JAX has already started in this process (e.g. ``main`` called from Python
  after other JAX work): the existing devices are used as they are.
  """
  chosen = os.environ.get("JAX_NUM_CPU_DEVICES") or (
    "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
  )
  if chosen or jax.config.jax_num_cpu_devices not in (-1, None):
    return
  try:
    inference.use_cpu_devices()
  except RuntimeError:  # JAX has started: keep its devices.
    pass
