"""Processes, devices and placement: one code path for 1 CPU or a pod slice.

Every array the loop places is a global ``jax.Array`` built from
process-local data or computed under ``jax.jit`` with explicit output
shardings, so the same code runs on one device or several processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

DATA_AXIS = "data"

_log = logging.getLogger(__name__)


def _cluster_detected(env: Mapping[str, str]) -> bool:
  """SLURM with several tasks, a multi-worker Cloud TPU slice, or MPI."""
  return (
    int(env.get("SLURM_NTASKS", "1") or 1) > 1
    or "," in env.get("TPU_WORKER_HOSTNAMES", "")
    or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
  )


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  env: Mapping[str, str] | None = None,
) -> bool:
  """Starts JAX's distributed runtime when the job has several processes;
  returns whether it did. Call it before any other JAX computation.

  The arguments (or ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
  ``JAX_PROCESS_ID``) launch a plain cluster; without them, a cluster that
  ``jax.distributed.initialize`` detects (SLURM, Cloud TPU, MPI) is
  initialised as is. On CPU the collectives use gloo. An incomplete launch
  is a ``ValueError`` naming what is missing.
  """
  env = os.environ if env is None else env
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  if address is None and num_processes is None and process_id is None:
    if not _cluster_detected(env):
      return False
    jax.distributed.initialize()
    return True
  if address is None or num_processes is None or process_id is None:
    raise ValueError(
      "A launch without a detected cluster needs all three of "
      "--coordinator-address=HOST:PORT, --num-processes=N and "
      "--process-id=I (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
      f"JAX_PROCESS_ID); got address={address}, num_processes="
      f"{num_processes}, process_id={process_id}."
    )
  if not 0 <= process_id < num_processes:
    raise ValueError(
      f"--process-id={process_id} is outside 0..{num_processes - 1}."
    )
  if "cpu" in str(jax.config.jax_platforms or "cpu").split(","):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # A step process 0 loaded from the compilation cache never finished its
    # first gloo all-reduce (jax 0.12.1); compiled in every process, it does.
    if jax.config.jax_enable_compilation_cache:
      _log.info("Multi-process CPU run: JAX's compilation cache is off.")
      jax.config.update("jax_enable_compilation_cache", False)
  jax.distributed.initialize(
    address, num_processes=num_processes, process_id=process_id
  )
  _log.info(
    "Process %d of %d, coordinator %s.", process_id, num_processes, address
  )
  return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh of all devices (or ``devices``) with the axis ``"data"``."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh) -> None:
  """A ``ValueError`` unless the batch splits over devices and processes."""
  for num, what in (
    (mesh.devices.size, "devices"),
    (jax.process_count(), "processes"),
  ):
    if global_batch_size % num:
      raise ValueError(
        f"The global batch of {global_batch_size} examples does not split "
        f"over {num} {what}; pass --batch-size as a multiple of {num}."
      )


def place(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Global arrays from this process's share of a pytree of host arrays (all
  of each array where ``sharding`` replicates it), also across processes,
  where ``jax.device_put`` reaches only local devices."""
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
    tree,
  )


def is_main_process() -> bool:
  """Process 0 writes logs, reports and figures."""
  return jax.process_index() == 0


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on any process (a collective: call on all)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.int32(flag))
  return bool(np.any(flags))
