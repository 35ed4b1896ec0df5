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
- a grid (several configs that differ in ``GRID_FIELDS``: seeds and
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
import dataclasses
import functools
import json
import logging
import pathlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from train import common, distributed, flags
from vae_attn import attention, metric_writers, runs

_log = logging.getLogger(__name__)

_AUTO_STEPS_PER_CALL = 100


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


# --------------------------------------------------------------------------
# Run directories of the members.


def init_keys(seed) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A run's ``(init_key, step_key, data_key)`` from ``seed`` (may be traced).

  ``init_key`` (for ``create_train_state``) is an ``"rbg"`` key: XLA:CPU
  compiles the initialisation of a model in a fraction of the time it takes
  with threefry; the draws are deterministic for a backend. ``step_key`` is
  folded with ``state.step`` inside the step, ``data_key`` draws the batches
  of data on the device.
  """
  init_key = jax.random.key(seed, impl="rbg")
  root = jax.random.key(seed)
  return init_key, jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)


def _grid_fields(configs: Sequence[Any]) -> list[str]:
  """The fields whose values differ between members, in ``GRID_FIELDS``
  order.

  Raises:
    ValueError: members differ in a field that is not a grid field.
  """
  first = flags.config_to_dict(configs[0])
  varying = {
    k
    for c in configs[1:]
    for k, v in flags.config_to_dict(c).items()
    if v != first[k]
  }
  allowed = tuple(getattr(configs[0], "GRID_FIELDS", ()))
  bad = sorted(varying - set(allowed))
  if bad:
    raise ValueError(
      f"The members of a grid may differ only in {list(allowed)}; they "
      f"differ in {bad}."
    )
  return [k for k in allowed if k in varying]


def member_dirs(workdir: pathlib.Path, configs: Sequence[Any]) -> list:
  """One run directory per member: ``workdir`` itself for a single run."""
  if len(configs) == 1:
    return [workdir]
  varying = _grid_fields(configs)
  names = [flags.member_name(c, varying) for c in configs]
  return [workdir / n for n in names]


def _check_compatible(
  config_dict: Mapping[str, Any],
  saved: Mapping[str, Any],
  where: str,
  ignore: frozenset[str],
) -> None:
  keys = (set(config_dict) | set(saved)) - ignore
  diff = sorted(k for k in keys if config_dict.get(k) != saved.get(k))
  if diff:
    detail = ", ".join(
      f"{k}: saved {saved.get(k)!r}, now {config_dict.get(k)!r}" for k in diff
    )
    raise common.ConfigMismatchError(
      f"{where} holds a run with a different config ({detail}). Pick a new "
      "--workdir, or pass the saved values to resume it."
    )


def _ignored_fields(config: Any) -> frozenset[str]:
  return frozenset(
    set(getattr(config, "RUN_CONTROL_FIELDS", ()))
    | set(getattr(config, "RUN_FIELDS", ()))
  )


def _prepare(run_dir: pathlib.Path, config: Any, overwrite: bool) -> None:
  """Deletes an old run (``overwrite``) and checks ``config.json``."""
  if overwrite:
    for name in (runs.CKPT_DIR, metric_writers.TENSORBOARD_DIR):
      shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in (runs.CONFIG_NAME, runs.SPEC_NAME, metric_writers.JSONL_NAME):
      (run_dir / name).unlink(missing_ok=True)
  ckpt = run_dir / runs.CKPT_DIR
  has_ckpt = ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())
  config_path = run_dir / runs.CONFIG_NAME
  if has_ckpt and config_path.exists():
    saved = json.loads(config_path.read_text())
    _check_compatible(
      flags.config_to_dict(config),
      saved,
      str(run_dir),
      _ignored_fields(config),
    )


# --------------------------------------------------------------------------
# Compiled pieces.


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _resolve_steps_per_call(config: Any, on_device: bool) -> int:
  if config.steps_per_call:
    return config.steps_per_call
  return _AUTO_STEPS_PER_CALL if on_device else 1


def _resolve_grid_mode(config: Any) -> str:
  if config.grid_mode != "auto":
    return config.grid_mode
  return "map" if jax.default_backend() == "cpu" else "vmap"


@dataclasses.dataclass(frozen=True)
class _Program:
  """The compiled calls of one training job (fixed for its members)."""

  trainer: common.Trainer
  num_members: int
  grid_mode: str
  precision: str
  replicated: NamedSharding
  data_sharding: NamedSharding

  def member_chunk(self, state, seed, hparams, data, batches, *, length):
    """``length`` steps of one member: ``(state, sums)``."""
    trainer = self.trainer
    _, step_key, data_key = init_keys(seed)

    def body(state, batch):
      if trainer.device_data is not None:
        key = jax.random.fold_in(data_key, state.step)
        batch = trainer.device_data.sample(data, key, trainer.global_batch_size)
        batch = jax.lax.with_sharding_constraint(batch, self.data_sharding)
      return trainer.train_step(state, batch, step_key, hparams)

    with attention.matmul_precision(self.precision):
      state, metrics = jax.lax.scan(body, state, batches, length=length)
    sums = {k: jnp.sum(v.astype(jnp.float32)) for k, v in metrics.items()}
    finite = jnp.all(jnp.isfinite(metrics["loss"])) & _all_finite(state.params)
    sums["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    return state, sums

  def chunk(self, states, seeds, hparams, data, batches, *, length):
    """``length`` steps of every member (stacked on axis 0 for a grid)."""
    fn = functools.partial(self.member_chunk, length=length)
    if self.num_members == 1:
      return fn(states, seeds, hparams, data, batches)
    if self.grid_mode == "vmap":
      return jax.vmap(fn, in_axes=(0, 0, 0, None, None))(
        states, seeds, hparams, data, batches
      )
    return jax.lax.map(
      lambda args: fn(*args, data, batches), (states, seeds, hparams)
    )

  def init_member(self, seed):
    """A member's initial state from its seed (traced)."""
    init_key, _, _ = init_keys(seed)
    state = self.trainer.create_train_state(init_key)
    # A strongly typed step, as restored ones are, so resuming never retraces.
    return state.replace(step=jnp.asarray(state.step, jnp.int32))

  @property
  def compiled_chunk(self):
    return _jit(self, "chunk")

  @property
  def stack(self):
    return _jit(self, "stack")

  @property
  def take(self):
    return _jit(self, "take")

  @property
  def add(self):
    return _jit(self, "add")


@functools.lru_cache(maxsize=64)
def _jit(program: _Program, name: str):
  """The jitted pieces of ``program``, once per equal program (so a second
  run of the same trainer on the same mesh, a resume, never retraces)."""
  replicated = program.replicated
  if name == "chunk":
    return jax.jit(
      program.chunk,
      static_argnames="length",
      donate_argnums=0,
      out_shardings=(replicated, replicated),
    )
  if name == "init":
    return jax.jit(program.init_member, out_shardings=replicated)
  if name == "stack":
    return jax.jit(
      lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees),
      out_shardings=replicated,
    )
  if name == "take":
    return jax.jit(
      lambda tree, k: jax.tree.map(lambda x: x[k], tree),
      static_argnums=1,
      out_shardings=replicated,
    )
  return jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))


def _next_stop(step: int, config: Any, steps_per_call: int) -> int:
  """The end of the call that starts at ``step``: the nearest log, eval,
  checkpoint or final step, at most ``steps_per_call`` ahead."""
  every = [config.log_every, config.checkpoint_every, steps_per_call]
  if config.eval_every:
    every.append(config.eval_every)
  stops = [(step // e + 1) * e for e in every]
  return min([*stops, config.num_steps])


def lowered_text(
  config: Any,
  trainer: common.Trainer,
  *,
  length: int = 1,
  mesh: jax.sharding.Mesh | None = None,
) -> str:
  """The StableHLO text of one compiled call of ``length`` steps.

  For inspection: e.g. that every convolution and dot carries the config's
  ``precision``.
  """
  mesh = distributed.make_mesh() if mesh is None else mesh
  program = _Program(
    trainer=trainer,
    num_members=1,
    grid_mode="map",
    precision=config.precision,
    replicated=NamedSharding(mesh, P()),
    data_sharding=NamedSharding(mesh, P(distributed.DATA_AXIS)),
  )
  seed = np.uint32(config.seed)
  state = jax.eval_shape(program.init_member, seed)
  hparams = {k: np.float32(v) for k, v in trainer.hparams_fn(config).items()}
  data = trainer.device_data.arrays if trainer.device_data else {}
  batches = None
  if trainer.device_data is None:
    batch = next(trainer.batches(0, 0, 1))
    batches = {k: np.stack([v] * length) for k, v in batch.items()}
  lowered = jax.jit(program.chunk, static_argnames="length").lower(
    state, seed, hparams, data, batches, length=length
  )
  return lowered.as_text()


# --------------------------------------------------------------------------
# The loop.


class _Members:
  """Per-member run directories, managers, writers and configs."""

  def __init__(self, configs, dirs, is_main):
    self.configs = list(configs)
    self.dirs = list(dirs)
    self.is_main = is_main
    self.mngrs = [
      runs.checkpoint_manager(d, max_to_keep=c.max_to_keep)
      for d, c in zip(self.dirs, self.configs, strict=True)
    ]
    self.writers: list[metric_writers.MetricWriter] = []

  def open_writers(self, resume_step: int | None) -> None:
    self.writers = [
      metric_writers.MetricWriter(
        d, enabled=self.is_main, resume_step=resume_step
      )
      for d in self.dirs
    ]

  def close(self) -> None:
    for m in self.mngrs:
      with contextlib.suppress(Exception):
        m.wait_until_finished()
      m.close()
    for w in self.writers:
      w.close()


def _restore_members(members, program, abstract):
  """Restores every member at the newest step all of them have good.

  Returns:
    ``(step, [state per member])`` or ``(None, None)`` with no checkpoint.
  """
  latest = [m.latest_step() for m in members.mngrs]
  if all(s is None for s in latest):
    return None, None
  if any(s is None for s in latest):
    missing = [
      str(d) for d, s in zip(members.dirs, latest, strict=True) if s is None
    ]
    raise runs.CheckpointError(
      f"Some members of the grid have no checkpoint ({missing}) while others "
      "have: the grid was changed. Pass the grid it was trained with, or a "
      "new --workdir."
    )
  found = []
  for mngr, d, c in zip(
    members.mngrs, members.dirs, members.configs, strict=True
  ):
    step, items = runs.restore(
      d,
      items=("state", "config"),
      targets={"state": abstract},
      sharding=program.replicated,
      mngr=mngr,
    )
    _check_compatible(
      flags.config_to_dict(c),
      items["config"],
      f"{d}/ckpt/{step}",
      _ignored_fields(c),
    )
    found.append((step, items["state"]))
  step = min(s for s, _ in found)
  states = []
  for (s, state), mngr, d in zip(
    found, members.mngrs, members.dirs, strict=True
  ):
    if s != step:  # A member saved further: take the common step.
      _, items = runs.restore(
        d,
        items=("state",),
        targets={"state": abstract},
        sharding=program.replicated,
        mngr=mngr,
        step=step,
      )
      state = items["state"]
    states.append(state)
  return step, states


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
      a sequence of them that differ only in ``GRID_FIELDS``: a grid, trained
      as one program; member ``k`` writes ``workdir/<member name>``.
    workdir: the run directory (``vae_attn.runs``). An existing checkpoint is
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
    flags.check_config(c)
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
        _prepare(d, c, overwrite)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("vae_attn: run directories ready")
    return _train(configs, dirs, trainer, mesh, is_main)


def _train(configs, dirs, trainer, mesh, is_main):
  head = configs[0]
  replicated = NamedSharding(mesh, P())
  program = _Program(
    trainer=trainer,
    num_members=len(configs),
    grid_mode=_resolve_grid_mode(head),
    precision=head.precision,
    replicated=replicated,
    data_sharding=NamedSharding(mesh, P(distributed.DATA_AXIS)),
  )
  members = _Members(configs, dirs, is_main)
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
    abstract = jax.eval_shape(_jit(program, "init"), seeds[0])
    abstract = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
      abstract,
    )
    start_step, states = _restore_members(members, program, abstract)
    if states is None:
      _log.info("Compiling and running the initialisation.")
      states = [_jit(program, "init")(s) for s in seeds]
      start_step = 0
    else:
      _log.info("Resuming from step %d.", start_step)
    members.open_writers(start_step if start_step else None)
    if is_main:
      for d, c in zip(dirs, configs, strict=True):
        runs.write_json(d / runs.CONFIG_NAME, flags.config_to_dict(c))
        if trainer.spec_fn is not None:
          runs.write_json(d / runs.SPEC_NAME, trainer.spec_fn(c).to_dict())
    if start_step >= head.num_steps:
      _log.info(
        "Already trained to step %d (num_steps=%d); nothing to do.",
        start_step,
        head.num_steps,
      )
      return states[0] if len(states) == 1 else states
    if len(configs) == 1:
      state, seed_arg, hp_arg = states[0], seeds[0], hparams[0]
    else:
      state = program.stack(states)
      seed_arg = program.stack(seeds)
      hp_arg = program.stack(hparams)
    final = _run(program, members, state, seed_arg, hp_arg, start_step, mesh)
    if len(configs) == 1:
      return final
    return [program.take(final, k) for k in range(len(configs))]
  finally:
    members.close()


def _member_state(program, state, k):
  return state if program.num_members == 1 else program.take(state, k)


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
  steps_per_call = _resolve_steps_per_call(head, on_device)
  data = {}
  if on_device:
    data = distributed.replicate(trainer.device_data.arrays, mesh)
    host = None
  else:
    host = _host_batches(trainer, start_step, mesh)

  def save(step, state, final):
    for k, (mngr, c) in enumerate(
      zip(members.mngrs, members.configs, strict=True)
    ):
      if step in mngr.all_steps():
        continue  # Saved before a crash by a member that was ahead.
      member = _member_state(program, state, k)
      extras = None
      if final and trainer.extras_fn is not None:
        with jax.default_device(jax.local_devices()[0]):
          # Host copies: arrays on one local device are not global arrays,
          # which a multi-process save would refuse.
          extras = jax.device_get(trainer.extras_fn(member, c))
      spec = trainer.spec_fn(c) if trainer.spec_fn is not None else None
      runs.save(
        mngr,
        step,
        state=member,
        config=flags.config_to_dict(c),
        spec=spec,
        extras=extras,
      )
    for w in members.writers:
      w.flush()

  def evaluate(step, state):
    if trainer.eval_fn is None or not members.is_main:
      return
    for k, (c, w) in enumerate(
      zip(members.configs, members.writers, strict=True)
    ):
      with jax.default_device(jax.local_devices()[0]):
        scalars = trainer.eval_fn(_member_state(program, state, k), c)
      w.write_scalars(step, {f"eval/{n}": v for n, v in scalars.items()})

  def check_finite(step, sums):
    bad = [
      d
      for d, n in zip(
        members.dirs, np.atleast_1d(sums["nonfinite"]), strict=True
      )
      if n > 0
    ]
    if not bad:
      return
    last = members.mngrs[0].latest_step()
    where = (
      f"the last good checkpoint is step {last} (kept intact; rerunning "
      "resumes from it)"
      if last is not None
      else "no checkpoint was saved yet"
    )
    member = "" if len(members.dirs) == 1 else f" of {[str(b) for b in bad]}"
    raise common.NonFiniteLossError(
      f"Non-finite loss{member} at step {step} (or in the steps since the "
      f"last log): training stopped; {where}. "
      "Lower the learning rate or check the data for NaNs."
    )

  def log(step, sums, count, rate):
    for k, (c, w) in enumerate(
      zip(members.configs, members.writers, strict=True)
    ):
      scalars = {
        n: np.atleast_1d(v)[k] / count
        for n, v in sums.items()
        if n != "nonfinite"
      }
      if trainer.metrics_fn is not None:
        scalars = trainer.metrics_fn(c, scalars)
      scalars = {f"train/{n}": v for n, v in scalars.items()}
      scalars["train/steps_per_sec"] = rate
      scalars["train/examples_per_sec"] = rate * trainer.global_batch_size
      w.write_scalars(step, scalars)
    return float(np.atleast_1d(sums["loss"])[0] / count)

  is_main = members.is_main
  progress = tqdm.tqdm(
    total=head.num_steps,
    initial=start_step,
    unit="step",
    dynamic_ncols=True,
    disable=not (is_main and sys.stderr.isatty()),
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
      state, sums = program.compiled_chunk(
        state, seeds, hparams, data, batches, length=length
      )
      acc = sums if acc is None else program.add(acc, sums)
      count += length
      step = end
      progress.update(length)
      is_last = step == head.num_steps
      stop = distributed.any_process(interrupt.signum is not None)
      do_log = step % head.log_every == 0 or is_last
      do_save = step % head.checkpoint_every == 0 or is_last or stop
      if do_log or do_save:
        host_sums = jax.device_get(acc)
        check_finite(step, host_sums)
        if do_log:
          now = time.perf_counter()
          rate = (step - last_step) / max(now - last_time, 1e-9)
          last_time, last_step = now, step
          loss = log(step, host_sums, count, rate)
          progress.set_postfix(loss=f"{loss:.4g}")
          acc, count = None, 0
      if head.eval_every and step % head.eval_every == 0 and not is_last:
        evaluate(step, state)
      if do_save:
        save(step, state, final=is_last)  # Before the final evaluation.
        if is_last:
          evaluate(step, state)
        if stop and not is_last:
          for m in members.mngrs:
            runs.wait(m)
          raise common.TrainingInterrupted(
            interrupt.signum or signal.SIGTERM,
            step,
            str(members.dirs[0] / runs.CKPT_DIR),
          )
  for m in members.mngrs:
    runs.wait(m)
  return state
