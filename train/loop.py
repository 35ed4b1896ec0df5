"""The loop every trainer shares, for one run or a grid of runs.

A trainer (``train.factorvae``, ``train.oneclass``) calls
:func:`train_and_evaluate` with its config and plain functions
(``create_train_state``, ``train_step``, optional ``evaluate`` and
``final_items``). The loop builds the state replicated over a mesh of all
devices (axis ``"data"``; ``train.distributed``), runs ``steps_per_call``
steps per compiled call (a ``lax.scan``), reads metrics on the host only at
log and checkpoint steps, stops on a non-finite loss, checkpoints on
schedule, on SIGINT/SIGTERM and at the end (``workflow.runs``), resumes from
the newest good step and logs interval means (``workflow.writers``). Data on
the device is drawn from ``fold_in(data_key, step)``, so a resumed run draws
the same batches.

A grid is a list of configs that differ in grid fields: numeric ones (seed,
loss weights) are traced arguments, the others (``loss``) static, so the
members of one static config share a compiled function; ``grid_mode=vmap``
stacks them under ``jax.vmap``, ``sequential`` calls the single-run function
per member. Each member writes its own run folder (``workflow.grid``).
Every jitted function is made inside :func:`train_and_evaluate`, so nothing
compiled (or the data it was given) outlives the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
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


class TrainState(train_state.TrainState):
  """``flax`` TrainState plus BatchNorm statistics (``{}`` without)."""

  batch_stats: PyTree = dataclasses.field(default_factory=dict)


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):  # noqa: N818 (a signal, not a bug)
  """SIGINT or SIGTERM (``signum``) arrived; ``step`` was saved first."""

  def __init__(self, signum: int, step: int, ckpt_dir: str):
    self.signum, self.step = signum, step
    super().__init__(
      f"Interrupted by {signal.Signals(signum).name} at step {step}; the "
      f"checkpoint was saved in {ckpt_dir}. Run the same command again to "
      "resume."
    )


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Fields of the loop itself, shared by every trainer's ``Config``.

  Checked when built (``__post_init__``, from the command line or Python): a
  value outside a field's choices or bounds is a ``ValueError`` naming it.
  ``log_every``: the logged ``train/*`` values are means since the last log
  (after a resume, ``train/steps_in_mean`` says over how many steps).
  ``steps_per_call``, ``grid_mode`` and their measured defaults: README,
  "Training on accelerators"; resuming with another ``steps_per_call`` is
  exact up to float rounding only.
  """

  # Fields a run may resume with other values (they change how it runs or
  # is evaluated, not what it learns); trainers add theirs.
  FREE_ON_RESUME: ClassVar[frozenset[str]] = frozenset(
    "num_steps log_every eval_every checkpoint_every max_to_keep "
    "steps_per_call grid_mode".split()
  )

  seed: int = configs.grid_field(
    0, "root of all randomness", alias="--seeds", interval=configs.SEEDS
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
    attention.PRECISIONS,
  )
  grid_mode: str = configs.field(
    "auto",
    "grid members: vmap, sequential or auto (CPU: sequential)",
    ("auto", "vmap", "sequential"),
  )

  def __post_init__(self):
    configs.check_values(self)


def init_keys(seed) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A run's ``(init_key, step_key, data_key)`` from ``seed`` (may be traced).

  ``init_key`` is an ``"rbg"`` key: XLA:CPU compiles a model's
  initialisation much faster than with threefry.
  """
  root = jax.random.key(seed)
  init_key = jax.random.key(seed, impl="rbg")
  return init_key, jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)


def weight_fields(config_cls: type) -> tuple[str, ...]:
  """The float grid fields of ``config_cls`` (traced in the step)."""
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


def _next_stop(step: int, config: Any, steps_per_call: int) -> int:
  """The end of the call that starts at ``step``: the nearest log, eval,
  checkpoint or final step, at most ``steps_per_call`` ahead."""
  every = [config.log_every, config.checkpoint_every, steps_per_call]
  every += [config.eval_every] if config.eval_every else []
  return min([(step // e + 1) * e for e in every] + [config.num_steps])


@contextlib.contextmanager
def _catch_signals() -> Iterator[list[int]]:
  """Records SIGINT/SIGTERM in the yielded list (a second one aborts at
  once); restores the previous handlers (``SIG_IGN`` under nohup) on exit."""
  received: list[int] = []

  def handler(signum, frame):
    del frame
    name = signal.Signals(signum).name
    if received:
      raise KeyboardInterrupt(f"Interrupted again ({name}): no save.")
    received.append(signum)
    _log.warning("%s received: saving a checkpoint after this call.", name)

  main = threading.current_thread() is threading.main_thread()
  signals = (signal.SIGINT, signal.SIGTERM) if main else ()
  previous = {s: signal.signal(s, handler) for s in signals}
  try:
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


# What a run folder holds of one run (``--overwrite`` removes all of it): the
# evaluations' results and the report were computed from the old checkpoints.
_RUN_ITEMS = (
  runs.CKPT_DIR,
  runs.DAMAGED_DIR,
  writers.TENSORBOARD_DIR,
  "eval",
  "report",
  runs.CONFIG_NAME,
  runs.SPEC_NAME,
  runs.SOFTWARE_NAME,
  writers.JSONL_NAME,
)


def _prepare(run_dir: pathlib.Path, config: Any, spec, overwrite: bool):
  """Deletes an old run (``overwrite``, saying what), else refuses to resume
  a run of another trainer or config (``config.json``, its one copy)."""
  if overwrite:
    removed = [n for n in _RUN_ITEMS if (run_dir / n).exists()]
    for name in removed:
      path = run_dir / name
      shutil.rmtree(path) if path.is_dir() else path.unlink()
    if removed:
      _log.warning("--overwrite: removed %s from %s.", removed, run_dir)
    return
  has_ckpt = runs.checkpoint_steps(run_dir / runs.CKPT_DIR)
  if not has_ckpt or not (run_dir / runs.CONFIG_NAME).exists():
    return
  saved_spec = {} if spec is None else runs.read_json(run_dir / runs.SPEC_NAME)
  trainer = saved_spec.get("trainer")
  if trainer and trainer != spec.trainer:
    raise runs.ConfigMismatchError(
      f"{run_dir} holds a train.{trainer} run; train.{spec.trainer} cannot "
      f"resume it. Pass a new --workdir (or use python -m train.{trainer})."
    )
  saved, now = runs.read_config(run_dir), configs.to_dict(config)
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


def _check_layout(workdir: pathlib.Path, dirs, single: bool) -> None:
  """A run lives in ``workdir``, a grid's members in its sub-folders: refuses
  to write one beside the other (an evaluator would read the old one), and
  a grid of which only some members have checkpoints, before any folder of
  the new members is made."""
  trained = [bool(runs.checkpoint_steps(runs.ckpt_dir(d))) for d in dirs]
  if any(trained) and not all(trained):
    have = [d.name for d, t in zip(dirs, trained, strict=True) if t]
    missing = [d.name for d, t in zip(dirs, trained, strict=True) if not t]
    raise runs.CheckpointError(
      f"Some members of the grid have no checkpoint ({missing}) while others "
      f"have ({have}): the grid was changed. Pass the grid it was trained "
      "with, or a new --workdir for the new grid."
    )
  members = [p.name for p in runs.member_runs(workdir)]
  if single and members:
    raise runs.ConfigMismatchError(
      f"{workdir} holds the member runs of a grid ({', '.join(members[:4])}"
      f"{', ...' if len(members) > 4 else ''}); a single run would be written "
      "beside them. Pass another --workdir."
    )
  if not single and (workdir / runs.CKPT_DIR).is_dir():
    raise runs.ConfigMismatchError(
      f"{workdir} holds a single run; a grid would write its members into "
      "sub-folders beside it. Pass another --workdir."
    )


def _remove_other_members(workdir: pathlib.Path, dirs) -> None:
  """``--overwrite``: removes the run folders of an earlier grid that the new
  run does not write (their results would be read beside the new ones)."""
  others = [p for p in runs.member_runs(workdir) if p not in dirs]
  for p in others:
    shutil.rmtree(p)
  if others:
    names = [p.name for p in others]
    _log.warning(
      "--overwrite: removed the earlier members %s from %s.", names, workdir
    )


def _restore(mngrs, dirs, abstracts, sharding):
  """``(step, [state per member])`` at the newest step every member has
  good, or ``(0, None)`` without checkpoints."""
  if all(m.latest_step() is None for m in mngrs):
    return 0, None  # Some members without: refused by _check_layout.

  def load(mngr, d, abstract, step=None):
    targets = {"state": abstract}
    kw = dict(targets=targets, sharding=sharding, mngr=mngr, step=step)
    return runs.restore(d, **kw)

  found = [load(*a) for a in zip(mngrs, dirs, abstracts, strict=True)]
  step = min(s for s, _ in found)
  states = [
    items["state"] if s == step else load(m, d, a, step)[1]["state"]
    for (s, items), m, d, a in zip(found, mngrs, dirs, abstracts, strict=True)
  ]
  return step, states


def _close(mngr) -> None:
  """Waits for pending saves while a run unwinds (the error that ends it
  is the one to report), then closes ``mngr``."""
  with contextlib.suppress(Exception):
    mngr.wait_until_finished()
  mngr.close()


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
  finite = jnp.all(jnp.isfinite(metrics["loss"]))
  for x in jax.tree.leaves(state.params):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      finite &= jnp.all(jnp.isfinite(x))
  sums["nonfinite"] = 1.0 - finite.astype(jnp.float32)
  return state, sums


def _host_batches(batches_fn: BatchesFn, start_step: int, mesh):
  """``take(step, length)``: ``[length, B, ...]`` global arrays of the host
  pipeline's batches."""
  it = batches_fn(start_step, jax.process_index(), jax.process_count())
  sharding = NamedSharding(mesh, P(None, distributed.DATA_AXIS))

  def take(step, length):
    rows = list(itertools.islice(it, length))
    if len(rows) < length:
      raise RuntimeError(
        f"The data ran out at step {step + len(rows)}; the trainer's batches "
        "must repeat forever."
      )
    stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    return distributed.place(stacked, sharding)

  return take


def _add_sums(totals, units, calls) -> list[dict[str, float]]:
  """Adds the host sums of ``calls`` (per call, per unit: a dict of scalars,
  or of ``[members]`` arrays for a stacked unit) to each member's totals."""
  totals = totals or [{} for _ in range(sum(len(u) for u in units))]
  for call in calls:
    for unit, sums in zip(units, call, strict=True):
      for i, k in enumerate(unit):
        for n, v in sums.items():
          v = float(v if len(unit) == 1 else v[i])
          totals[k][n] = totals[k].get(n, 0.0) + v
  return totals


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
      only in grid fields (member ``k`` writes
      ``workflow.grid.member_dirs(workdir, configs)[k]``).
    workdir: the run folder (``workflow.runs``); a checkpoint is resumed.
    create_train_state: ``fn(key, config) -> TrainState`` (pure).
    train_step: ``fn(state, batch, key, weights, config) -> (state,
      metrics)``, pure; ``key`` is the run's step key (fold ``state.step`` in
      it), ``weights`` the traced float grid fields (:func:`weights`),
      ``config`` static (its seed and weights: the first member's);
      ``metrics`` holds scalars, ``"loss"`` among them.
    batch_size: the global batch (examples per step over all processes).
    device_data: ``(arrays, sample_fn)``: data placed on the device once and
      sampled in the step (needed for grids).
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
  head, single = cfgs[0], len(cfgs) == 1
  workdir = pathlib.Path(workdir).absolute()
  dirs = grid.member_dirs(workdir, cfgs)
  mesh = distributed.make_mesh() if mesh is None else mesh
  distributed.check_batch_size(batch_size, mesh)
  if (device_data is None) == (host_batches is None):
    raise TypeError("Pass one of device_data and host_batches.")
  on_device = device_data is not None
  if not single and not on_device:
    raise ValueError(
      "A grid of runs draws its data on the device; this data set is read by "
      "the host pipeline. Train the members one by one (one seed per run)."
    )
  specs = [run_spec(c) if run_spec else None for c in cfgs]
  is_main = distributed.is_main_process()
  replicated = NamedSharding(mesh, P())

  # The units that run as one call: every member alone (one run, or a
  # sequential grid), or the members of one static config stacked (vmap).
  traced = ("seed", *weight_fields(type(head)))
  statics = [
    dataclasses.replace(c, **{n: getattr(head, n) for n in traced})
    for c in cfgs
  ]
  units = [[k] for k in range(len(cfgs))]
  cpu = jax.default_backend() == "cpu"
  grid_mode = head.grid_mode
  if grid_mode == "auto":
    grid_mode = "sequential" if cpu else "vmap"
  if not single and grid_mode == "vmap":
    groups: dict[Any, list[int]] = {}
    for k, s in enumerate(statics):
      groups.setdefault(s, []).append(k)
    units = list(groups.values())
  steps_per_call = head.steps_per_call or (1 if cpu or not on_device else 100)

  def init(seed, config):
    state = create_train_state(init_keys(seed)[0], config)
    # A strongly typed step, as restored ones are: resuming never retraces.
    return state.replace(step=jnp.asarray(state.step, jnp.int32))

  init_jit = jax.jit(init, static_argnums=1, out_shardings=replicated)
  chunk = functools.partial(
    _chunk,
    train_step=train_step,
    sample_fn=device_data[1] if on_device else None,
    batch_size=batch_size,
    data_sharding=NamedSharding(mesh, P(distributed.DATA_AXIS)),
  )
  jit_kw = dict(
    static_argnames=("config", "length"),
    donate_argnums=0,
    out_shardings=(replicated, replicated),
  )
  chunk_jit = jax.jit(chunk, **jit_kw)
  vmapped_jit = jax.jit(
    lambda *args, **kw: jax.vmap(
      functools.partial(chunk, **kw), in_axes=(0, 0, 0, None, None)
    )(*args),
    **jit_kw,
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

  with contextlib.ExitStack() as stack:
    if is_main and overwrite:
      _remove_other_members(workdir, dirs)
      if not single:  # A single run in the grid's folder.
        _prepare(workdir, head, None, overwrite)
    elif is_main:
      _check_layout(workdir, dirs, single)
    if is_main:
      for d, c, s in zip(dirs, cfgs, specs, strict=True):
        stack.enter_context(runs.lock(d))
        _prepare(d, c, s, overwrite)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("vae_attn: run directories ready")
    mngrs = []
    for d, c in zip(dirs, cfgs, strict=True):
      mngrs.append(runs.checkpoint_manager(d, max_to_keep=c.max_to_keep))
      stack.callback(_close, mngrs[-1])

    seeds = [distributed.place(np.uint32(c.seed), replicated) for c in cfgs]
    member_weights = [distributed.place(weights(c), replicated) for c in cfgs]
    # Shape structs placed on ``replicated``: the restore targets.
    abstracts = [init_jit.eval_shape(np.uint32(0), s) for s in statics]
    start_step, states = _restore(mngrs, dirs, abstracts, replicated)
    if states is None:
      _log.info("Compiling and running the initialisation.")
      states = [
        init_jit(seed, s) for seed, s in zip(seeds, statics, strict=True)
      ]
    else:
      _log.info("Resuming from step %d.", start_step)
    for mngr, d, c in zip(mngrs, dirs, cfgs, strict=True):
      steps = sorted(mngr.all_steps())
      if is_main and len(steps) > c.max_to_keep:
        _log.warning(
          "%s holds %d checkpoints and --max-to-keep=%d: the next save "
          "deletes steps %s.",
          d / runs.CKPT_DIR,
          len(steps),
          c.max_to_keep,
          steps[: len(steps) + 1 - c.max_to_keep],
        )
    # Rows logged after the restored step (0 without a checkpoint) came from
    # a run that stopped: they are cut before logging again.
    member_writers = [
      stack.enter_context(
        writers.MetricWriter(
          d,
          enabled=is_main,
          resume_step=start_step,
          name="" if single else d.name,
        )
      )
      for d in dirs
    ]
    if start_step >= head.num_steps:  # The saved config stays as it was.
      _log.info(
        "Already trained to step %d (num_steps=%d); nothing to do.",
        start_step,
        head.num_steps,
      )
      return states[0] if single else states
    if is_main:
      for d, c, spec in zip(dirs, cfgs, specs, strict=True):
        runs.write_run_files(d, configs.to_dict(c), spec)

    def pack(unit, values):
      if len(unit) == 1:
        return values[unit[0]]
      return stack_jit([values[k] for k in unit])

    unit_states = [pack(u, states) for u in units]
    unit_seeds = [pack(u, seeds) for u in units]
    unit_weights = [pack(u, member_weights) for u in units]

    def member_states():
      out = [None] * len(cfgs)
      for unit, state in zip(units, unit_states, strict=True):
        for i, k in enumerate(unit):
          out[k] = state if len(unit) == 1 else take_jit(state, i)
      return out

    def save(step, final):
      for k, state in enumerate(member_states()):
        if step in mngrs[k].all_steps():
          continue  # Saved before a crash by a member that was ahead.
        items = None
        if final and final_items is not None:
          with jax.default_device(jax.local_devices()[0]):
            # Host copies: arrays on one local device are not global arrays,
            # which a multi-process save would refuse.
            items = jax.device_get(final_items(state, cfgs[k]))
        runs.save(mngrs[k], step, state=state, extras=items)
      for w in member_writers:
        w.flush()

    def run_evaluation(step):
      if evaluate is None or not is_main:
        return
      for k, state in enumerate(member_states()):
        where = "" if single else f" {dirs[k].name}"
        _log.info("Evaluating%s at step %d.", where, step)
        with jax.default_device(jax.local_devices()[0]):
          scalars = evaluate(state, cfgs[k])
        member_writers[k].write_scalars(
          step, {f"eval/{n}": v for n, v in scalars.items()}
        )

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
      member = "" if single else f" of {bad}"
      # Training is deterministic: the same command would meet the same loss.
      raise NonFiniteLossError(
        f"Non-finite loss{member} at step {step} (or in the steps since the "
        f"last log): training stopped; {where}. The same command would "
        "repeat this: lower the learning rate or check the data for NaNs, "
        "and train in a new --workdir."
      )

    data = distributed.place(device_data[0], replicated) if on_device else {}
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
    with progress, _catch_signals() as received:
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
          # The all-gather below must not start beside this call's gloo
          # collectives: two processes ordering them differently deadlock.
          jax.block_until_ready(unit_states)
        stop = distributed.any_process(bool(received))
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
            # A regular row covers the steps since the previous log
            # boundary; after a resume it covers fewer, and says how many.
            covered = step - ((step - 1) // head.log_every) * head.log_every
            for total, w in zip(totals, member_writers, strict=True):
              scalars = {
                f"train/{n}": v / count
                for n, v in total.items()
                if n != "nonfinite"
              }
              scalars["train/steps_per_sec"] = rate
              scalars["train/examples_per_sec"] = rate * batch_size
              if count < covered:
                scalars["train/steps_in_mean"] = count
              w.write_scalars(step, scalars)
            progress.set_postfix(loss=f"{totals[0]['loss'] / count:.4g}")
            totals, count = None, 0
        if head.eval_every and step % head.eval_every == 0 and not is_last:
          run_evaluation(step)
        if do_save:
          save(step, final=is_last)
          if is_last:  # After the final save: a failing evaluation loses none.
            run_evaluation(step)
          if stop and not is_last:
            for m in mngrs:
              runs.finish_saves(m)
            raise TrainingInterrupted(
              received[0] if received else signal.SIGTERM,
              step,
              str(dirs[0] / runs.CKPT_DIR)
              if single
              else f"each member's ckpt/ under {workdir}",
            )
    for m in mngrs:
      runs.finish_saves(m)
    final = member_states()
    return final[0] if single else final
