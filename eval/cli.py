"""What the evaluation entry points share: run, report errors, print."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

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


def save_results(
  out: str,
  results: dict[str, Any],
  write_report: Callable[[str, dict], Any],
  start: float,
) -> dict[str, Any]:
  """Writes ``results.json`` and ``report.md`` to ``out``; returns results.

  ``elapsed_time`` (seconds since the ``time.perf_counter()`` value
  ``start``) goes into both; ``out`` is added to the returned dict (for
  :func:`run_report`), not to the file.
  """
  results["elapsed_time"] = time.perf_counter() - start
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  write_report(os.path.join(out, "report.md"), results)
  return {**results, "out": out}


def use_all_cpu_cores() -> None:
  """Two JAX CPU devices per core, unless JAX is already running.

  XLA runs the paper's convolutions on one core per CPU device, so an
  evaluation that deals micro-batches over devices (``inference.batched``)
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
    inference.use_cpu_devices()
  except RuntimeError:  # JAX has started: keep its devices.
    pass
