"""The loop every trainer shares, for one run or a grid of runs.

A trainer (``train.factorvae``, ``train.oneclass``) calls
:func:`train_and_evaluate` with its config and plain functions:
``create_train_state(key, config)``, ``train_step(state, batch, key, weights,
config)`` and optional ``evaluate``/``final_items``. The loop does the rest:

- mesh: the state is built under ``jax.jit`` replicated over a
  ``jax.sharding.Mesh`` of all devices (axis ``"data"``); batches are split
  over that axis, so the same code runs on one CPU, forced host devices,
  several processes or a pod slice (``train.distributed``);
- keys: ``(init, step, data)`` keys from the seed; the step folds
  ``state.step`` into its key, data on the device is drawn from
  ``fold_in(data_key, step)``, so a resumed run draws the same batches;
- steps per call: ``steps_per_call`` steps run in one compiled call (a
  ``lax.scan``); metrics are read on the host only at log and checkpoint
  steps; a non-finite loss stops the run naming the last good checkpoint;
- grid: members (configs that differ in grid fields) share one jitted
  function per static config: numeric grid fields (``seed``, loss weights)
  are traced arguments, the others (``loss``) are static, so members of a
  ``--loss=tc,ad`` grid run different steps (a tc member never computes
  L_AD). With ``grid_mode=vmap`` the members of one static config are
  stacked and the step is ``jax.vmap``-ed; with ``sequential`` each member
  is a call of the single-run function. Each member writes its own run
  folder (``workflow.grid``);
- checkpoints every ``checkpoint_every`` steps, on SIGINT/SIGTERM and at the
  end (orbax, ``workflow.runs``); a run folder with a checkpoint resumes
  from its newest good step;
- logging: means over each log interval to ``metrics.jsonl`` and TensorBoard
  (process 0; ``workflow.writers``).

Every jitted function is made inside :func:`train_and_evaluate`, so nothing
compiled (or the data it was given) outlives the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pathlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from train import distributed
from vae_attn import attention
from workflow import configs, grid, runs, writers

_log = logging.getLogger(__name__)

PyTree = Any
Batch = dict[str, jax.Array]
# ``fn(arrays, key, num) -> batch``: draws a batch of the data on the device.
SampleFn = Callable[[PyTree, jax.Array, int], Batch]
# ``fn(start_step, process_index, process_count) -> iterator of batches``.
BatchesFn = Callable[[int, int, int], Iterator[dict[str, np.ndarray]]]

# Matmul/convolution precision of the jitted step (``vae_attn.attention.
# matmul_precision``): "highest" is full float32 on every backend (the
# default: the maps and L_AD agree with the CPU to ~1e-6); "default" lets GPUs
# use TF32 and TPUs bfloat16 passes (faster; the maps moved by up to 8 % on
# an H200).
PRECISIONS = attention.PRECISIONS
GRID_MODES = ("auto", "vmap", "sequential")
_AUTO_STEPS_PER_CALL = 100


class TrainState(train_state.TrainState):
  """``flax`` TrainState plus the model's non-trainable collections.

  Attributes:
    batch_stats: BatchNorm statistics (``{}`` for models without BatchNorm).
  """

  batch_stats: PyTree = dataclasses.field(default_factory=dict)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):  # noqa: N818 (a signal, not a bug)
  """SIGINT or SIGTERM arrived; the state was saved before raising.

  Attributes:
    signum: the signal number.
    step: the saved step.
  """

  def __init__(self, signum: int, step: int, ckpt_dir: str):
    self.signum = signum
    self.step = step
    super().__init__(
      f"Interrupted by {signal.Signals(signum).name} at step {step}; the "
      f"checkpoint was saved in {ckpt_dir}. Run the same command again to "
      "resume."
    )


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Fields of the loop itself, shared by every trainer's ``Config``.

  A config is checked when it is built (``__post_init__``), from the command
  line or from Python: a value outside a field's choices or bounds is a
  ``ValueError`` naming the field.

  Attributes:
    seed: root of the parameter, step and data randomness.
    num_steps: train until ``state.step == num_steps``.
    log_every: read metrics on the host (and check the loss) this often; the
      logged ``train/*`` values are means over the steps since the last log
      (a row right after a resume covers only the steps since the resume and
      says so in ``train/steps_in_mean``).
    eval_every: run the evaluation this often (0: only at the end).
    checkpoint_every: save a checkpoint this often (and at the end).
    max_to_keep: checkpoints kept in ``workdir/ckpt`` (lowering it on resume
      deletes the oldest ones at the next save; the loop says which first).
    steps_per_call: training steps per compiled call (one ``lax.scan``);
      0 picks: 100 on an accelerator with data on the device, else 1 (on
      XLA:CPU a step inside a while loop ran 15x slower than alone). Calls
      end at every log, evaluation and checkpoint step. A run resumed with
      another value differs from the straight run by float rounding only
      (XLA fuses a scanned step differently: the weights moved by ~2e-4 after
      a resume with another value); the same value resumes bit-identically.
    precision: matmul and convolution precision of the step (``PRECISIONS``).
    grid_mode: how the members of a grid are run: ``vmap`` (one batched call
      per static config: accelerators), ``sequential`` (one after another,
      each a call of the single-run function: XLA:CPU, where batched
      convolutions lose the CPU rewrites), ``auto`` (``sequential`` on CPU,
      else ``vmap``).
  """

  # Fields a run may resume with other values (they change how it runs or
  # is evaluated, not what it learns); trainers add theirs.
  FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset(
    {
      "num_steps",
      "log_every",
      "eval_every",
      "checkpoint_every",
      "max_to_keep",
      "steps_per_call",
      "grid_mode",
    }
  )

  seed: int = configs.grid_field(
    0,
    "root of all randomness",
    alias="--seeds",
    interval=configs.SEEDS,
  )
  num_steps: int = configs.field(1000, "training steps", interval="[1, inf)")
  log_every: int = configs.field(
    100, "log the mean metrics this often", interval="[1, inf)"
  )
  eval_every: int = configs.field(
    0, "evaluate this often (0: at the end only)", interval="[0, inf)"
  )
  checkpoint_every: int = configs.field(
    1000, "save a checkpoint this often", interval="[1, inf)"
  )
  max_to_keep: int = configs.field(3, "checkpoints kept", interval="[1, inf)")
  steps_per_call: int = configs.field(
    0,
    "steps per compiled call (0: 100 on GPU/TPU with data on device, else 1)",
    interval="[0, inf)",
  )
  precision: str = configs.field(
    "highest",
    "matmul/conv precision of the step: highest = float32 everywhere",
    PRECISIONS,
  )
  grid_mode: str = configs.field(
    "auto",
    "grid members: vmap, sequential or auto (CPU: sequential)",
    GRID_MODES,
  )

  def __post_init__(self):
    configs.check_values(self)


# --------------------------------------------------------------------------
# Keys, traced fields, steps per call.


def init_keys(seed) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A run's ``(init_key, step_key, data_key)`` from ``seed`` (may be traced).

  ``init_key`` (for ``create_train_state``) is an ``"rbg"`` key: XLA:CPU
  compiles the initialisation of a model in a fraction of the time it takes
  with threefry; the draws are deterministic for a backend.
  """
  init_key = jax.random.key(seed, impl="rbg")
  root = jax.random.key(seed)
  return init_key, jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)


def weight_fields(config_cls: type) -> tuple[str, ...]:
  """The float grid fields of ``config_cls``: traced in the step, so grid
  members that differ only there share one compiled function."""
  return tuple(
    f.name
    for f in dataclasses.fields(config_cls)
    if f.metadata.get("grid") and isinstance(f.default, float)
  )


def weights(config: Any) -> dict[str, np.float32]:
  """``{name: value}`` of the float grid fields (the step's ``weights``)."""
  return {
    n: np.float32(getattr(config, n)) for n in weight_fields(type(config))
  }


def static_config(config: Any, head: Any) -> Any:
  """``config`` with its traced fields (seed, weights) set to ``head``'s:
  members with equal static configs share one compiled function."""
  traced = ("seed", *weight_fields(type(config)))
  return dataclasses.replace(config, **{n: getattr(head, n) for n in traced})


def resolve_steps_per_call(config: Any, on_device: bool) -> int:
  """``config.steps_per_call``, or: 1 on XLA:CPU or with a host pipeline,
  else 100 (a CPU step is long enough that one dispatch per step costs
  nothing measurable; a step in a while loop ran 15x slower there)."""
  if config.steps_per_call:
    return config.steps_per_call
  if not on_device or jax.default_backend() == "cpu":
    return 1
  return _AUTO_STEPS_PER_CALL


def resolve_grid_mode(config: Any) -> str:
  """``vmap`` on accelerators, ``sequential`` on XLA:CPU (see LoopConfig)."""
  if config.grid_mode != "auto":
    return config.grid_mode
  return "sequential" if jax.default_backend() == "cpu" else "vmap"


def _next_stop(step: int, config: Any, steps_per_call: int) -> int:
  """The end of the call that starts at ``step``: the nearest log, eval,
  checkpoint or final step, at most ``steps_per_call`` ahead."""
  every = [config.log_every, config.checkpoint_every, steps_per_call]
  if config.eval_every:
    every.append(config.eval_every)
  stops = [(step // e + 1) * e for e in every]
  return min([*stops, config.num_steps])


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
  """Installs the flag's handler (main thread only); restores the previous
  handlers, whatever they were (``SIG_IGN`` under nohup), on exit."""
  flag = _InterruptFlag()
  if threading.current_thread() is not threading.main_thread():
    yield flag
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
# Run folders: the config check, the resume.


def _check_config(run_dir: pathlib.Path, config: Any, spec) -> None:
  """Refuses to resume a run of another trainer or config (one line).

  ``config.json`` is the one stored copy of the config (checked here only).
  """
  if spec is not None and (run_dir / runs.SPEC_NAME).is_file():
    trainer = runs.read_json(run_dir / runs.SPEC_NAME).get("trainer")
    if trainer and trainer != spec.trainer:
      raise runs.ConfigMismatchError(
        f"{run_dir} holds a train.{trainer} run; train.{spec.trainer} cannot "
        f"resume it. Pass a new --workdir (or use python -m train.{trainer})."
      )
  saved = runs.read_config(run_dir)
  now = configs.to_dict(config)
  free = getattr(config, "FREE_ON_RESUME", frozenset())
  diff = sorted(
    k for k in (set(now) | set(saved)) - free if now.get(k) != saved.get(k)
  )
  if diff:
    shown = ", ".join(
      f"--{k.replace('_', '-')}: saved {saved.get(k)!r}, now {now.get(k)!r}"
      for k in diff[:3]
    )
    more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
    raise runs.ConfigMismatchError(
      f"{run_dir} holds a run with another config ({shown}{more}). Pick a "
      "new --workdir, or pass the saved values to resume it."
    )


# What a run folder holds of one run (``--overwrite`` removes all of it): the
# evaluators' results (``eval/``) and the report were computed from the old
# checkpoints and would otherwise be read as the new run's.
_RUN_DIRS = (
  runs.CKPT_DIR,
  runs.DAMAGED_DIR,
  writers.TENSORBOARD_DIR,
  "eval",
  "report",
)
_RUN_FILES = (
  runs.CONFIG_NAME,
  runs.SPEC_NAME,
  runs.SOFTWARE_NAME,
  writers.JSONL_NAME,
)


def _prepare(run_dir: pathlib.Path, config: Any, spec, overwrite: bool):
  """Deletes an old run (``overwrite``, saying what), else checks its
  config."""
  if overwrite:
    removed = [n for n in _RUN_DIRS + _RUN_FILES if (run_dir / n).exists()]
    for name in _RUN_DIRS:
      shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in _RUN_FILES:
      (run_dir / name).unlink(missing_ok=True)
    if removed:
      _log.warning("--overwrite: removed %s from %s.", removed, run_dir)
  ckpt = run_dir / runs.CKPT_DIR
  has_ckpt = ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())
  if has_ckpt and (run_dir / runs.CONFIG_NAME).exists():
    _check_config(run_dir, config, spec)


def _remove_other_members(workdir: pathlib.Path, dirs) -> None:
  """``--overwrite``: removes the run folders of an earlier grid in
  ``workdir`` that the new run does not write (their results would be read
  beside the new ones), saying which."""
  if not workdir.is_dir():
    return
  others = [
    p
    for p in sorted(workdir.iterdir())
    if p not in dirs and (p / runs.CKPT_DIR).is_dir()
  ]
  for p in others:
    shutil.rmtree(p)
  if others:
    _log.warning(
      "--overwrite: removed the earlier members %s from %s.",
      [p.name for p in others],
      workdir,
    )


def _warn_deletions(mngr, run_dir: pathlib.Path, max_to_keep: int) -> None:
  """Says which checkpoints a lower ``--max-to-keep`` deletes at next save."""
  steps = sorted(mngr.all_steps())
  doomed = steps[: max(0, len(steps) + 1 - max_to_keep)]
  if len(steps) > max_to_keep:
    _log.warning(
      "%s holds %d checkpoints and --max-to-keep=%d: the next save deletes "
      "steps %s.",
      run_dir / runs.CKPT_DIR,
      len(steps),
      max_to_keep,
      doomed,
    )


def _restore(mngrs, dirs, abstracts, sharding):
  """Every member's state at the newest step all of them have good.

  Returns:
    ``(step, [state per member])``, or ``(0, None)`` with no checkpoint.
  """
  latest = [m.latest_step() for m in mngrs]
  if all(s is None for s in latest):
    return 0, None
  if any(s is None for s in latest):
    missing = [str(d) for d, s in zip(dirs, latest, strict=True) if s is None]
    raise runs.CheckpointError(
      f"Some members of the grid have no checkpoint ({missing}) while others "
      "have: the grid was changed. Pass the grid it was trained with, or a "
      "new --workdir."
    )

  def load(mngr, d, abstract, step=None):
    return runs.restore(
      d,
      items=("state",),
      targets={"state": abstract},
      sharding=sharding,
      mngr=mngr,
      step=step,
    )

  found = [load(*a) for a in zip(mngrs, dirs, abstracts, strict=True)]
  step = min(s for s, _ in found)
  states = [
    items["state"] if s == step else load(m, d, a, step)[1]["state"]
    for (s, items), m, d, a in zip(found, mngrs, dirs, abstracts, strict=True)
  ]
  return step, states


# --------------------------------------------------------------------------
# The loop.


def _wait_quietly(mngr) -> None:
  """Waits for pending saves while a run unwinds (the error that ends it
  is the one to report)."""
  with contextlib.suppress(Exception):
    mngr.wait_until_finished()


def _all_finite(tree: Any) -> jax.Array:
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _chunk(
  state,
  seed,
  weights,
  data,
  batches,
  *,
  config,
  train_step,
  sample_fn,
  batch_size,
  data_sharding,
  length,
):
  """``length`` steps of one member: ``(state, sums of the metrics)``."""
  _, step_key, data_key = init_keys(seed)

  def body(state, batch):
    if sample_fn is not None:
      key = jax.random.fold_in(data_key, state.step)
      batch = sample_fn(data, key, batch_size)
      batch = jax.lax.with_sharding_constraint(batch, data_sharding)
    return train_step(state, batch, step_key, weights, config)

  with attention.matmul_precision(config.precision):
    if length == 1:  # No while loop: XLA:CPU runs loop bodies slowly.
      first = None if batches is None else jax.tree.map(lambda b: b[0], batches)
      state, metrics = body(state, first)
      metrics = jax.tree.map(lambda m: m[None], metrics)
    else:
      state, metrics = jax.lax.scan(body, state, batches, length=length)
  sums = {k: jnp.sum(v.astype(jnp.float32)) for k, v in metrics.items()}
  finite = jnp.all(jnp.isfinite(metrics["loss"])) & _all_finite(state.params)
  sums["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  return state, sums


def _host_batches(batches_fn: BatchesFn, start_step: int, mesh):
  """``take(step, length)``: ``[length, B, ...]`` global arrays of the host
  pipeline's batches."""
  it = batches_fn(start_step, jax.process_index(), jax.process_count())
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


def train_and_evaluate(
  config: Any,
  workdir: str | pathlib.Path,
  *,
  create_train_state: Callable[[jax.Array, Any], TrainState],
  train_step: Callable[..., tuple[TrainState, dict]],
  batch_size: int,
  device_data: tuple[PyTree, SampleFn] | None = None,
  host_batches: BatchesFn | None = None,
  evaluate: Callable[[TrainState, Any], Mapping[str, Any]] | None = None,
  final_items: Callable[[TrainState, Any], Mapping[str, PyTree]] | None = None,
  run_spec: Callable[[Any], runs.RunSpec] | None = None,
  overwrite: bool = False,
  mesh: jax.sharding.Mesh | None = None,
) -> Any:
  """Trains to ``num_steps``, resuming from ``workdir``.

  Args:
    config: a :class:`LoopConfig` subclass, or a sequence of them that differ
      only in grid fields (a grid; member ``k`` writes
      ``workflow.grid.member_dirs(workdir, configs)[k]``).
    workdir: the run folder (``workflow.runs``); a checkpoint is resumed.
    create_train_state: ``fn(key, config) -> TrainState`` (pure; jitted here).
    train_step: ``fn(state, batch, key, weights, config) -> (state,
      metrics)``, pure; ``key`` is the run's step key (fold ``state.step`` in
      it), ``weights`` the traced float grid fields (:func:`weights`),
      ``config`` static (:func:`static_config`); ``metrics`` holds scalars,
      ``"loss"`` among them.
    batch_size: the global batch (examples per step over all processes).
    device_data: ``(arrays, sample_fn)``: the data placed on the device once
      and sampled inside the step, ``sample_fn(arrays, key, batch_size) ->
      batch`` (needed for grids).
    host_batches: else ``fn(start_step, process_index, process_count) ->
      iterator`` of this process's share of every batch from ``start_step``.
    evaluate: ``fn(state, config) -> {name: number}``, every ``eval_every``
      steps and at the end (process 0), logged as ``eval/<name>``.
    final_items: ``fn(state, config) -> {item: pytree}`` saved with the final
      checkpoint (latent statistics).
    run_spec: ``fn(config) -> RunSpec`` written beside the config.
    overwrite: delete an old run in ``workdir`` first.
    mesh: the device mesh (default: all devices on the ``"data"`` axis).

  Returns:
    The final state (replicated over ``mesh``); a list of them for a grid.

  Raises:
    ConfigMismatchError: ``workdir`` holds a run of another config/trainer.
    NonFiniteLossError: the loss became NaN/inf; the message names the step
      and the last good checkpoint, which is left intact.
    TrainingInterrupted: SIGINT/SIGTERM; the state was saved first.
    WorkdirLockedError: another trainer is writing ``workdir``.
    CheckpointWriteError: the disk is full (the last checkpoint is intact).
  """
  cfgs = list(config) if isinstance(config, Sequence) else [config]
  dirs = grid.member_dirs(pathlib.Path(workdir).absolute(), cfgs)
  mesh = distributed.make_mesh() if mesh is None else mesh
  distributed.check_batch_size(batch_size, mesh)
  if (device_data is None) == (host_batches is None):
    raise TypeError("Pass one of device_data and host_batches.")
  if len(cfgs) > 1 and device_data is None:
    raise ValueError(
      "A grid of runs draws its data on the device; this data set is read by "
      "the host pipeline. Train the members one by one (one seed per run)."
    )
  specs = [run_spec(c) if run_spec else None for c in cfgs]
  is_main = distributed.is_main_process()
  with contextlib.ExitStack() as stack:
    if is_main and overwrite:
      _remove_other_members(pathlib.Path(workdir).absolute(), dirs)
    if is_main:
      for d, c, s in zip(dirs, cfgs, specs, strict=True):
        stack.enter_context(runs.lock(d))
        _prepare(d, c, s, overwrite)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("vae_attn: run directories ready")
    mngrs = []
    for d, c in zip(dirs, cfgs, strict=True):
      mngr = runs.checkpoint_manager(d, max_to_keep=c.max_to_keep)
      stack.callback(mngr.close)
      stack.callback(_wait_quietly, mngr)
      mngrs.append(mngr)
    return _train(
      cfgs,
      dirs,
      specs,
      mngrs,
      stack,
      mesh=mesh,
      is_main=is_main,
      create_train_state=create_train_state,
      train_step=train_step,
      batch_size=batch_size,
      device_data=device_data,
      host_batches=host_batches,
      evaluate=evaluate,
      final_items=final_items,
    )


def _train(cfgs, dirs, specs, mngrs, stack, *, mesh, is_main, **fns):
  head = cfgs[0]
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P(distributed.DATA_AXIS))
  device_data, host_batches = fns["device_data"], fns["host_batches"]
  sample_fn = device_data[1] if device_data is not None else None

  # The members' static configs, and the units that run as one call: every
  # member alone (one run, or a sequential grid), or the members of one
  # static config stacked (a vmap grid).
  statics = [static_config(c, head) for c in cfgs]
  units: list[list[int]] = [[k] for k in range(len(cfgs))]
  if len(cfgs) > 1 and resolve_grid_mode(head) == "vmap":
    groups: dict[Any, list[int]] = {}
    for k, s in enumerate(statics):
      groups.setdefault(s, []).append(k)
    units = list(groups.values())

  def init(seed, config):
    state = fns["create_train_state"](init_keys(seed)[0], config)
    # A strongly typed step, as restored ones are: resuming never retraces.
    return state.replace(step=jnp.asarray(state.step, jnp.int32))

  init_jit = jax.jit(init, static_argnums=1, out_shardings=replicated)
  chunk = functools.partial(
    _chunk,
    train_step=fns["train_step"],
    sample_fn=sample_fn,
    batch_size=fns["batch_size"],
    data_sharding=data_sharding,
  )
  chunk_jit = jax.jit(
    chunk,
    static_argnames=("config", "length"),
    donate_argnums=0,
    out_shardings=(replicated, replicated),
  )
  vmapped_jit = jax.jit(
    lambda *args, **kw: jax.vmap(
      functools.partial(chunk, **kw), in_axes=(0, 0, 0, None, None)
    )(*args),
    static_argnames=("config", "length"),
    donate_argnums=0,
    out_shardings=(replicated, replicated),
  )
  stack_jit = jax.jit(
    lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees),
    out_shardings=replicated,
  )
  take_jit = jax.jit(
    lambda tree, k: jax.tree.map(lambda x: x[k], tree),
    static_argnums=1,
    out_shardings=replicated,
  )

  seeds = [
    distributed.global_array(np.uint32(c.seed), replicated) for c in cfgs
  ]
  member_weights = [
    {k: distributed.global_array(v, replicated) for k, v in weights(c).items()}
    for c in cfgs
  ]

  def abstract(config):
    shapes = jax.eval_shape(
      functools.partial(init, config=config), np.uint32(0)
    )
    return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
      shapes,
    )

  start_step, states = _restore(
    mngrs, dirs, [abstract(s) for s in statics], replicated
  )
  if states is None:
    _log.info("Compiling and running the initialisation.")
    states = [init_jit(seed, s) for seed, s in zip(seeds, statics, strict=True)]
  else:
    _log.info("Resuming from step %d.", start_step)
  for mngr, d, c in zip(mngrs, dirs, cfgs, strict=True):
    if is_main:
      _warn_deletions(mngr, d, c.max_to_keep)
  # Rows logged after the restored step (0 without a checkpoint) came from a
  # run that stopped: they are cut before logging again.
  member_writers = [
    stack.enter_context(
      writers.MetricWriter(
        d,
        enabled=is_main,
        resume_step=start_step,
        name=d.name if len(dirs) > 1 else "",
      )
    )
    for d in dirs
  ]
  if is_main:
    for d, c, spec in zip(dirs, cfgs, specs, strict=True):
      runs.write_run_files(d, configs.to_dict(c), spec)
  if start_step >= head.num_steps:
    _log.info(
      "Already trained to step %d (num_steps=%d); nothing to do.",
      start_step,
      head.num_steps,
    )
    return states[0] if len(states) == 1 else states

  def pack(unit, values):
    if len(unit) == 1:
      return values[unit[0]]
    return stack_jit([values[k] for k in unit])

  unit_states = [pack(u, states) for u in units]
  unit_seeds = [pack(u, seeds) for u in units]
  unit_weights = [pack(u, member_weights) for u in units]

  def member_states(unit_states):
    out = [None] * len(cfgs)
    for unit, state in zip(units, unit_states, strict=True):
      for i, k in enumerate(unit):
        out[k] = state if len(unit) == 1 else take_jit(state, i)
    return out

  def save(step, unit_states, final):
    mstates = member_states(unit_states)
    for k, (mngr, c) in enumerate(zip(mngrs, cfgs, strict=True)):
      if step in mngr.all_steps():
        continue  # Saved before a crash by a member that was ahead.
      items = None
      if final and fns["final_items"] is not None:
        with jax.default_device(jax.local_devices()[0]):
          # Host copies: arrays on one local device are not global arrays,
          # which a multi-process save would refuse.
          items = jax.device_get(fns["final_items"](mstates[k], c))
      runs.save(mngr, step, state=mstates[k], extras=items)
    for w in member_writers:
      w.flush()

  def run_evaluation(step, unit_states):
    if fns["evaluate"] is None or not is_main:
      return
    mstates = member_states(unit_states)
    for k, (c, w) in enumerate(zip(cfgs, member_writers, strict=True)):
      where = "" if len(dirs) == 1 else f" of {dirs[k].name}"
      _log.info("Evaluating%s at step %d.", where, step)
      with jax.default_device(jax.local_devices()[0]):
        scalars = fns["evaluate"](mstates[k], c)
      w.write_scalars(step, {f"eval/{n}": v for n, v in scalars.items()})

  def check_finite(step, sums):
    bad = [str(dirs[k]) for k, s in enumerate(sums) if s["nonfinite"] > 0]
    if not bad:
      return
    last = mngrs[0].latest_step()
    where = (
      f"the last good checkpoint is step {last} (kept)"
      if last is not None
      else "no checkpoint was saved yet"
    )
    member = "" if len(dirs) == 1 else f" of {bad}"
    # Training is deterministic: the same command would meet the same loss.
    raise NonFiniteLossError(
      f"Non-finite loss{member} at step {step} (or in the steps since the "
      f"last log): training stopped; {where}. The same command would repeat "
      "this: lower the learning rate or check the data for NaNs, and train "
      "in a new --workdir."
    )

  on_device = device_data is not None
  steps_per_call = resolve_steps_per_call(head, on_device)
  data = distributed.replicate(device_data[0], mesh) if on_device else {}
  take = None if on_device else _host_batches(host_batches, start_step, mesh)
  progress = tqdm.tqdm(
    total=head.num_steps,
    initial=start_step,
    unit="step",
    dynamic_ncols=True,
    disable=not (is_main and sys.stderr.isatty()),
  )
  step, pending, totals, count = start_step, [], None, 0
  last_time, last_step = time.perf_counter(), start_step
  compiled_lengths = set()
  with progress, _catch_signals() as interrupt:
    while step < head.num_steps:
      end = _next_stop(step, head, steps_per_call)
      length = end - step
      if length not in compiled_lengths:
        _log.info("Compiling the train step (%d steps per call).", length)
        compiled_lengths.add(length)
      batches = None if on_device else take(step, length)
      sums = []
      for u, unit in enumerate(units):
        fn = chunk_jit if len(unit) == 1 else vmapped_jit
        unit_states[u], unit_sums = fn(
          unit_states[u],
          unit_seeds[u],
          unit_weights[u],
          data,
          batches,
          config=statics[unit[0]],
          length=length,
        )
        sums.append(unit_sums)
      pending.append(sums)
      count, step = count + length, end
      progress.update(length)
      is_last = step == head.num_steps
      if jax.process_count() > 1:
        # The flag's all-gather below must not start beside this call's
        # collectives: XLA:CPU may start an executable whose inputs are ready
        # while another runs, and two processes that order two gloo
        # collectives differently wait for each other for ever (both were
        # seen in gloo::allreduce at step 1, about 1 run in 3).
        jax.block_until_ready(unit_states)
      stop = distributed.any_process(interrupt.signum is not None)
      do_log = step % head.log_every == 0 or is_last
      do_save = step % head.checkpoint_every == 0 or is_last or stop
      if do_log or do_save:
        totals = _add_sums(totals, units, jax.device_get(pending))
        pending = []
        check_finite(step, totals)
        if do_log:
          now = time.perf_counter()
          rate = (step - last_step) / max(now - last_time, 1e-9)
          last_time, last_step = now, step
          # A regular row covers the steps since the previous log boundary;
          # after a resume it covers fewer, and says how many.
          covered = step - ((step - 1) // head.log_every) * head.log_every
          for total, w in zip(totals, member_writers, strict=True):
            scalars = {
              f"train/{n}": v / count
              for n, v in total.items()
              if n != "nonfinite"
            }
            scalars["train/steps_per_sec"] = rate
            scalars["train/examples_per_sec"] = rate * fns["batch_size"]
            if count < covered:
              scalars["train/steps_in_mean"] = count
            w.write_scalars(step, scalars)
          progress.set_postfix(loss=f"{totals[0]['loss'] / count:.4g}")
          totals, count = None, 0
      if head.eval_every and step % head.eval_every == 0 and not is_last:
        run_evaluation(step, unit_states)
      if do_save:
        save(step, unit_states, final=is_last)
        if is_last:  # After the final save: a failing evaluation loses none.
          run_evaluation(step, unit_states)
        if stop and not is_last:
          for m in mngrs:
            runs.finish_saves(m)
          raise TrainingInterrupted(
            interrupt.signum or signal.SIGTERM,
            step,
            str(dirs[0] / runs.CKPT_DIR),
          )
  for m in mngrs:
    runs.finish_saves(m)
  final = member_states(unit_states)
  return final[0] if len(final) == 1 else final


def _add_sums(totals, units, calls) -> list[dict[str, float]]:
  """Adds the host sums of ``calls`` (per call, per unit: a dict of scalars,
  or of ``[members]`` arrays for a stacked unit) to each member's totals."""
  num = sum(len(u) for u in units)
  totals = totals or [{} for _ in range(num)]
  for call in calls:
    for unit, sums in zip(units, call, strict=True):
      for i, k in enumerate(unit):
        for n, v in sums.items():
          v = float(v if len(unit) == 1 else v[i])
          totals[k][n] = totals[k].get(n, 0.0) + v
  return totals
