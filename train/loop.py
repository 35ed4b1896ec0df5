"""The training loop every trainer shares, for one run or a grid of runs.

:func:`train_and_evaluate` trains a :class:`train.common.Trainer`:

- the state is built under ``jax.jit`` with replicated output shardings over
  a ``jax.sharding.Mesh`` of all devices (axis ``"data"``); batches are split
  over that axis, so the same code runs on one CPU, forced host devices,
  several processes or a pod slice;
- data that fits on the device (``Trainer.device_data``) is placed once and
  each batch is drawn *inside* the compiled step from the step's key; other
  data comes from the host pipeline (``Trainer.batches``);
- ``steps_per_call`` steps run in one compiled call (a ``lax.scan``); metrics
  are summed on the device and read once per log interval; a non-finite loss
  stops the run at the next read, naming the last good checkpoint;
- a grid (several configs that differ in grid fields: seeds and
  hyper-parameters) trains as one program: the members' states are stacked
  and the step is ``jax.vmap``-ed (or ``lax.map``-ed on CPU) over them; each
  member writes an ordinary run directory;
- orbax checkpoints every ``checkpoint_every`` steps, on SIGINT/SIGTERM and at
  the end; a run directory with a checkpoint resumes from its newest good
  step, with the same batches;
- scalars go to ``metrics.jsonl`` and TensorBoard (process 0 only).
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
import tqdm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from train import common, distributed
from train import members as members_lib
from train import program as program_lib
from train.members import member_dirs
from train.program import lowered_text
from workflow import configs as configs_lib
from workflow import runs

__all__ = ["lowered_text", "member_dirs", "train_and_evaluate"]

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Signals.


class _InterruptFlag:
  """Records SIGINT/SIGTERM; a second signal aborts at once."""

  def __init__(self):
    self.signum: int | None = None

  def handler(self, signum, frame):
    del frame
    if self.signum is not None:
      raise KeyboardInterrupt(f"Second {signal.Signals(signum).name}.")
    self.signum = signum
    _log.warning(
      "%s received: saving a checkpoint after this call.",
      signal.Signals(signum).name,
    )


@contextlib.contextmanager
def _catch_signals() -> Iterator[_InterruptFlag]:
  flag = _InterruptFlag()
  if threading.current_thread() is not threading.main_thread():
    yield flag  # Handlers can only be installed from the main thread.
    return
  previous = {
    s: signal.signal(s, flag.handler) for s in (signal.SIGINT, signal.SIGTERM)
  }
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _next_stop(step: int, config: Any, steps_per_call: int) -> int:
  """The end of the call that starts at ``step``: the nearest log, eval,
  checkpoint or final step, at most ``steps_per_call`` ahead."""
  every = [config.log_every, config.checkpoint_every, steps_per_call]
  if config.eval_every:
    every.append(config.eval_every)
  stops = [(step // e + 1) * e for e in every]
  return min([*stops, config.num_steps])


def train_and_evaluate(
  config: Any,
  workdir: str | pathlib.Path,
  trainer: common.Trainer,
  *,
  overwrite: bool = False,
  mesh: jax.sharding.Mesh | None = None,
) -> Any:
  """Trains ``trainer`` to ``num_steps``, resuming from ``workdir``.

  Args:
    config: the trainer's config (a :class:`common.LoopConfig` subclass), or
      a sequence of them that differ only in grid fields: a grid, trained
      as one program; member ``k`` writes ``workdir/<member name>``.
    workdir: the run directory (``workflow.runs``). An existing checkpoint is
      resumed from.
    trainer: the state, step, data and hooks.
    overwrite: delete an old run in ``workdir`` first.
    mesh: the device mesh (default: all devices on the ``"data"`` axis).

  Returns:
    The final state (replicated over ``mesh``); a list of them for a grid.

  Raises:
    ConfigMismatchError: ``workdir`` holds a run of another config.
    NonFiniteLossError: the loss became NaN/inf; the message names the step
      and the last good checkpoint, which is left intact.
    TrainingInterrupted: SIGINT/SIGTERM; the state was saved first.
    WorkdirLockedError: another trainer is writing ``workdir``.
    CheckpointWriteError: the disk is full (the last checkpoint is intact).
  """
  configs = list(config) if isinstance(config, Sequence) else [config]
  for c in configs:
    configs_lib.check_values(c)
  workdir = pathlib.Path(workdir).absolute()
  dirs = member_dirs(workdir, configs)
  mesh = distributed.make_mesh() if mesh is None else mesh
  distributed.check_batch_size(trainer.global_batch_size, mesh)
  if len(configs) > 1 and trainer.device_data is None:
    raise ValueError(
      "A grid of runs draws its data on the device; this data set is read by "
      "the host pipeline. Train the members one by one (one seed per run)."
    )
  is_main = distributed.is_main_process()
  with contextlib.ExitStack() as stack:
    if is_main:
      for d, c in zip(dirs, configs, strict=True):
        stack.enter_context(runs.lock(d))
        members_lib.prepare(d, c, overwrite)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("vae_attn: run directories ready")
    return _train(configs, dirs, trainer, mesh, is_main)


def _train(configs, dirs, trainer, mesh, is_main):
  head = configs[0]
  replicated = NamedSharding(mesh, P())
  program = program_lib.Program(
    trainer=trainer,
    num_members=len(configs),
    grid_mode=program_lib.resolve_grid_mode(head),
    precision=head.precision,
    replicated=replicated,
    data_sharding=NamedSharding(mesh, P(distributed.DATA_AXIS)),
  )
  members = members_lib.Members(configs, dirs, is_main)
  try:
    seeds = [
      distributed.global_array(np.uint32(c.seed), replicated) for c in configs
    ]
    hparams = [
      {
        k: distributed.global_array(np.float32(v), replicated)
        for k, v in trainer.hparams_fn(c).items()
      }
      for c in configs
    ]
    abstract = jax.eval_shape(program_lib.jitted(program, "init"), seeds[0])
    abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
      abstract,
    )
    start_step, states = members_lib.restore_members(members, program, abstract)
    if states is None:
      _log.info("Compiling and running the initialisation.")
      states = [program_lib.jitted(program, "init")(s) for s in seeds]
      start_step = 0
    else:
      _log.info("Resuming from step %d.", start_step)
    # Rows logged after the restored step (or any, with no checkpoint yet)
    # came from a run that crashed: they are cut before logging again.
    members.open_writers(start_step)
    if is_main:
      for d, c in zip(dirs, configs, strict=True):
        spec = trainer.spec_fn(c) if trainer.spec_fn is not None else None
        runs.write_run_files(d, configs_lib.to_dict(c), spec)
    if start_step >= head.num_steps:
      _log.info(
        "Already trained to step %d (num_steps=%d); nothing to do.",
        start_step,
        head.num_steps,
      )
      return states[0] if len(states) == 1 else states
    if len(configs) == 1:
      state, seed_arg, hp_arg = states[0], seeds[0], hparams[0]
    elif program.stacked:
      state = program.stack(states)
      seed_arg = program.stack(seeds)
      hp_arg = program.stack(hparams)
    else:
      state, seed_arg, hp_arg = states, seeds, hparams
    final = _run(program, members, state, seed_arg, hp_arg, start_step, mesh)
    if len(configs) == 1:
      return final
    return [program.member(final, k) for k in range(len(configs))]
  finally:
    members.close()


def _host_batches(trainer, start_step, mesh):
  """Stacks ``length`` host batches as ``[length, B, ...]`` global arrays."""
  it = trainer.batches(start_step, jax.process_index(), jax.process_count())
  sharding = NamedSharding(mesh, P(None, distributed.DATA_AXIS))

  def take(step, length):
    rows = []
    for s in range(step, step + length):
      try:
        rows.append(next(it))
      except StopIteration:
        raise RuntimeError(
          f"The data ran out at step {s}; the trainer's batches must repeat "
          "forever."
        ) from None
    stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return distributed.shard_batch(stacked, sharding)

  return take


def _run(program, members, state, seeds, hparams, start_step, mesh):
  trainer, head = program.trainer, members.configs[0]
  on_device = trainer.device_data is not None
  steps_per_call = program_lib.resolve_steps_per_call(head, on_device)
  data, host = {}, None
  if on_device:
    data = distributed.replicate(trainer.device_data.arrays, mesh)
  else:
    host = _host_batches(trainer, start_step, mesh)
  progress = tqdm.tqdm(
    total=head.num_steps,
    initial=start_step,
    unit="step",
    dynamic_ncols=True,
    disable=not (members.is_main and sys.stderr.isatty()),
  )
  step, acc, count = start_step, None, 0
  last_time, last_step = time.perf_counter(), start_step
  compiled_lengths = set()
  with progress, _catch_signals() as interrupt:
    while step < head.num_steps:
      end = _next_stop(step, head, steps_per_call)
      length = end - step
      if length not in compiled_lengths:
        _log.info("Compiling the train step (%d steps per call).", length)
        compiled_lengths.add(length)
      batches = None if on_device else host(step, length)
      state, sums = program.run_chunk(
        state, seeds, hparams, data, batches, length=length
      )
      acc = sums if acc is None else program.add(acc, sums)
      count, step = count + length, end
      progress.update(length)
      is_last = step == head.num_steps
      stop = distributed.any_process(interrupt.signum is not None)
      do_log = step % head.log_every == 0 or is_last
      do_save = step % head.checkpoint_every == 0 or is_last or stop
      if do_log or do_save:
        host_sums = jax.device_get(acc)
        members.check_finite(step, host_sums)
        if do_log:
          now = time.perf_counter()
          rate = (step - last_step) / max(now - last_time, 1e-9)
          last_time, last_step = now, step
          loss = members.log(trainer, step, host_sums, count, rate)
          progress.set_postfix(loss=f"{loss:.4g}")
          acc, count = None, 0
      if head.eval_every and step % head.eval_every == 0 and not is_last:
        members.evaluate(program, step, state)
      if do_save:
        members.save(program, step, state, final=is_last)
        if is_last:  # After the final save: a failing hook loses nothing.
          members.evaluate(program, step, state)
        if stop and not is_last:
          members.wait()
          raise common.TrainingInterrupted(
            interrupt.signum or signal.SIGTERM,
            step,
            str(members.dirs[0] / runs.CKPT_DIR),
          )
  members.wait()
  return state
