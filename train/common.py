"""What every trainer shares: flags, the loop, checkpoints, sharding, logging.

A trainer is a frozen ``Config`` dataclass (with ``PRESETS``) and a
:class:`Trainer` (how to build the state, the pure step, the data and the
evaluation hooks). :func:`train_and_evaluate` runs any of them:

- the state is built by ``create_train_state`` under ``jax.jit`` with
  replicated output shardings over a ``jax.sharding.Mesh`` of all devices
  (axis ``"data"``); batches are split over that axis
  (``jax.make_array_from_process_local_data``), so the same code runs on one
  CPU, 8 forced host devices, or a TPU pod slice;
- ``train_step(state, batch, key)`` is jitted once with explicit shardings
  and ``donate_argnums=0``; the per-step key is ``fold_in(key, state.step)``
  inside the step, so nothing per step is computed on the host;
- the host reads metrics only every ``log_every`` steps; a non-finite loss
  stops the run there, naming the step and the last good checkpoint;
- orbax ``CheckpointManager`` checkpoints in ``workdir/ckpt`` every
  ``checkpoint_every`` steps (keeping ``max_to_keep``), on SIGINT/SIGTERM and
  at the end; a workdir with a checkpoint resumes from it, after checking that
  its config matches;
- scalars go to ``workdir/metrics.jsonl`` and TensorBoard files
  (:mod:`vae_attn.metric_writers`), progress to a tqdm bar on a TTY.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil
import signal
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vae_attn import metric_writers

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
PyTree = Any

CONFIG_NAME = "config.json"
CKPT_DIR = "ckpt"
DATA_AXIS = "data"

# Fields that only steer the run; they may change between a run and its
# resumption. Every other field must match the checkpoint's config. A config
# class may name more in a ``RUN_FIELDS`` class variable.
RUN_CONTROL_FIELDS = frozenset(
  {
    "num_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "max_to_keep",
  }
)

_log = logging.getLogger(__name__)


class TrainState(train_state.TrainState):
  """``flax`` TrainState plus the model's non-trainable collections.

  Attributes:
    batch_stats: BatchNorm statistics (``{}`` for models without BatchNorm).
  """

  batch_stats: PyTree = dataclasses.field(default_factory=dict)


class ConfigMismatchError(ValueError):
  """The workdir holds a checkpoint of a different config or architecture."""


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


def field(default: Any, help_text: str, choices: Sequence[Any] | None = None):
  """A config field with ``--help`` text and optional allowed values.

  Example: ``loss: str = common.field("ad", "objective", ("ad", "tc"))``.
  """
  metadata = {"help": help_text}
  if choices is not None:
    metadata["choices"] = tuple(choices)
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Fields of the loop itself, shared by every trainer's ``Config``.

  Attributes:
    seed: root of the parameter, step and data-order randomness.
    num_steps: train until ``state.step == num_steps``.
    log_every: read metrics on the host (and check the loss) this often.
    eval_every: run the evaluation hook this often (0: only at the end).
    checkpoint_every: save a checkpoint this often (and at the end).
    max_to_keep: checkpoints kept in ``workdir/ckpt``.
  """

  seed: int = 0
  num_steps: int = 1000
  log_every: int = 100
  eval_every: int = 0
  checkpoint_every: int = 1000
  max_to_keep: int = 3


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a trainer supplies to :func:`train_and_evaluate`.

  Attributes:
    create_train_state: ``fn(key) -> TrainState``; pure, jitted by the loop.
    train_step: ``fn(state, batch, key) -> (state, metrics)``; pure, jitted
      once by the loop with ``donate_argnums=0``; ``key`` is the run's step
      key, to be combined with ``state.step`` by ``jax.random.fold_in``.
      ``metrics`` is a dict of scalars that includes ``"loss"``.
    batches: ``fn(start_step, process_index, process_count) -> iterator`` of
      this process's share of every global batch from ``start_step`` on, as
      dicts of numeric numpy arrays with a leading batch axis.
    global_batch_size: examples per step over all processes (the leading size
      of the arrays ``batches`` yields, times the process count).
    eval_fn: optional ``fn(state) -> {name: number}``, run every
      ``eval_every`` steps and at the end, logged as ``eval/<name>``.
    extras_fn: optional ``fn(state) -> {name: pytree}`` of arrays saved as
      extra items of the final checkpoint (e.g. latent statistics).
  """

  create_train_state: Callable[[jax.Array], TrainState]
  train_step: Callable[
    [TrainState, Batch, jax.Array], tuple[TrainState, Metrics]
  ]
  batches: Callable[[int, int, int], Iterator[dict[str, np.ndarray]]]
  global_batch_size: int
  eval_fn: Callable[[TrainState], Mapping[str, Any]] | None = None
  extras_fn: Callable[[TrainState], Mapping[str, PyTree]] | None = None


# --------------------------------------------------------------------------
# Flags generated from a config dataclass.


def _field_types(config_cls: type) -> dict[str, Any]:
  hints = typing.get_type_hints(config_cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def _scalar_type(tp: Any) -> type:
  """``int | None`` -> ``int``; plain scalars pass; others are an error."""
  args = typing.get_args(tp)
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    args = tuple(a for a in args if a is not type(None))
    if len(args) == 1:
      return _scalar_type(args[0])
  if tp in (bool, int, float, str):
    return tp
  raise TypeError(f"Config fields must be bool, int, float or str; got {tp}.")


def _parse_value(name: str, tp: type, text: str) -> Any:
  if tp is bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
      return True
    if lowered in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"--{name}: expected true or false, got {text!r}.")
  if tp is int:
    try:
      return int(text)
    except ValueError:
      pass
    try:
      value = float(text)  # Accept 3e5 for counts.
    except ValueError:
      raise ValueError(
        f"--{name}: expected an integer, got {text!r}."
      ) from None
    if not value.is_integer():
      raise ValueError(f"--{name}: expected an integer, got {text!r}.")
    return int(value)
  if tp is float:
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"--{name}: expected a number, got {text!r}.") from None
  return text


def check_config(config: Any) -> None:
  """Checks ``choices`` metadata and positive loop counts of a config.

  Raises:
    ValueError: naming the field, the bad value and the allowed values.
  """
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
      raise ValueError(
        f"{f.name}={value!r} is not one of {tuple(choices)}; pass "
        f"--{f.name.replace('_', '-')}=<one of them>."
      )
  for name in ("num_steps", "log_every", "checkpoint_every", "max_to_keep"):
    if getattr(config, name) < 1:
      raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}.")
  if config.eval_every < 0:
    raise ValueError(f"eval_every must be >= 0, got {config.eval_every}.")


def make_parser(
  config_cls: type,
  presets: Mapping[str, Any],
  *,
  prog: str,
  description: str,
  default_preset: str,
  preset_field: str | None = None,
) -> argparse.ArgumentParser:
  """An ``argparse`` parser with ``--preset`` and one flag per config field.

  Flags accept dashes or underscores (``--num-steps`` or ``--num_steps``);
  booleans also accept ``--no-<name>``. Defaults are left unset so that only
  flags given on the command line override the preset.
  """
  preset_help = f"base config, one of {sorted(presets)} (default "
  if preset_field:
    preset_help += (
      f"the value of --{preset_field.replace('_', '-')} when it names a "
      f"preset, else {default_preset!r})."
    )
  else:
    preset_help += f"{default_preset!r})."
  parser = argparse.ArgumentParser(
    prog=prog,
    description=description,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--preset", choices=sorted(presets), default=None, help=preset_help
  )
  parser.add_argument(
    "--workdir",
    default=None,
    help="checkpoints, logs and config go here; a run resumes from it.",
  )
  parser.add_argument(
    "--overwrite",
    action="store_true",
    help="delete the workdir's checkpoints and logs and start afresh.",
  )
  defaults = presets[default_preset]
  for name, tp in _field_types(config_cls).items():
    tp = _scalar_type(tp)
    f = next(f for f in dataclasses.fields(config_cls) if f.name == name)
    dashed = name.replace("_", "-")
    flags = [f"--{dashed}"] + ([f"--{name}"] if "_" in name else [])
    help_text = f.metadata.get("help", "")
    help_text += f" [{tp.__name__}, default {getattr(defaults, name)!r}]"
    kwargs = dict(dest=name, default=None, help=help_text.strip())
    if "choices" in f.metadata:
      kwargs["choices"] = tuple(f.metadata["choices"])
    if tp is bool:
      parser.add_argument(
        *flags,
        nargs="?",
        const="true",
        type=lambda s, n=name: _parse_value(n, bool, s),
        **kwargs,
      )
      parser.add_argument(
        f"--no-{dashed}",
        *([f"--no_{name}"] if "_" in name else []),
        dest=name,
        action="store_const",
        const=False,
        help=argparse.SUPPRESS,
      )
    else:

      def convert(s, n=name, t=tp):
        try:
          return _parse_value(n, t, s)
        except ValueError as e:
          raise argparse.ArgumentTypeError(str(e)) from None

      convert.__name__ = tp.__name__
      parser.add_argument(*flags, type=convert, **kwargs)
  return parser


def parse_flags(
  argv: Sequence[str] | None,
  config_cls: type,
  presets: Mapping[str, Any],
  *,
  prog: str,
  description: str = "",
  default_preset: str,
  preset_field: str | None = None,
) -> tuple[Any, str | None, bool]:
  """Parses ``argv`` into ``(config, workdir or None, overwrite)``.

  The config is ``presets[--preset]`` (or, with ``preset_field``, the preset
  named by that field's flag, e.g. ``--dataset=mnist``; else
  ``default_preset``) with every given field flag applied on top.

  Args:
    argv: the arguments without the program name (``None``: ``sys.argv``).
    config_cls: the frozen config dataclass.
    presets: preset name -> config.
    prog: program name for ``--help``.
    description: text for ``--help``.
    default_preset: the preset used when none is named.
    preset_field: a field whose value picks the preset when ``--preset`` is
      absent and the value is a preset name.

  Returns:
    The config, the ``--workdir`` value and the ``--overwrite`` switch.
  """
  parser = make_parser(
    config_cls,
    presets,
    prog=prog,
    description=description,
    default_preset=default_preset,
    preset_field=preset_field,
  )
  args = parser.parse_args(argv)
  overrides = {
    f.name: getattr(args, f.name)
    for f in dataclasses.fields(config_cls)
    if getattr(args, f.name) is not None
  }
  preset = args.preset
  if preset is None and preset_field and overrides.get(preset_field) in presets:
    preset = overrides[preset_field]
  config = dataclasses.replace(presets[preset or default_preset], **overrides)
  try:
    check_config(config)
  except ValueError as e:
    parser.error(str(e))
  return config, args.workdir, args.overwrite


def config_to_dict(config: Any) -> dict[str, Any]:
  """The config as a JSON-ready dict."""
  return dataclasses.asdict(config)


def config_from_dict(config_cls: type, values: Mapping[str, Any]) -> Any:
  """Rebuilds a config from :func:`config_to_dict` output.

  Raises:
    ValueError: ``values`` names fields ``config_cls`` does not have.
  """
  names = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(
      f"Unknown {config_cls.__qualname__} fields {unknown}; the config was "
      "written by another trainer or version."
    )
  return config_cls(**values)


# --------------------------------------------------------------------------
# Devices and sharding.


def initialize_distributed() -> bool:
  """Calls ``jax.distributed.initialize()`` when launched multi-host.

  Multi-host means ``JAX_COORDINATOR_ADDRESS`` is set, a Cloud TPU slice has
  several workers (``TPU_WORKER_HOSTNAMES``), or SLURM started several tasks.
  Call it from entry points before any other jax call.

  Returns:
    Whether it initialised the distributed runtime.
  """
  env = os.environ
  multi = bool(env.get("JAX_COORDINATOR_ADDRESS"))
  multi |= "," in env.get("TPU_WORKER_HOSTNAMES", "")
  multi |= int(env.get("SLURM_NTASKS", "1") or 1) > 1
  if multi:
    jax.distributed.initialize()
  return multi


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh of all devices (or ``devices``) with the axis ``"data"``."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh) -> None:
  """The global batch must split evenly over devices and processes.

  Raises:
    ValueError: naming the sizes and what to change.
  """
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(
      f"The global batch of {global_batch_size} examples does not split over "
      f"{num_devices} devices; pass --batch-size as a multiple of "
      f"{num_devices}."
    )
  if global_batch_size % jax.process_count():
    raise ValueError(
      f"The global batch of {global_batch_size} examples does not split over "
      f"{jax.process_count()} processes."
    )


def shard_batch(
  batch: Mapping[str, np.ndarray], sharding: NamedSharding
) -> Batch:
  """Assembles this process's batch rows into global arrays over ``mesh``."""
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in batch.items()
  }


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Places a pytree of arrays fully replicated on ``mesh``."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


@jax.jit
def _all_finite(tree: PyTree) -> jax.Array:
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# --------------------------------------------------------------------------
# Checkpoints.


def checkpoint_manager(
  workdir: str | os.PathLike, *, max_to_keep: int = 3, read_only: bool = False
) -> ocp.CheckpointManager:
  """The orbax manager of ``workdir/ckpt`` (items ``state``, ``config``...)."""
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
    create=not read_only,
    read_only=read_only,
  )
  path = pathlib.Path(workdir).absolute() / CKPT_DIR
  return ocp.CheckpointManager(path, options=options)


def load_checkpoint(
  workdir: str | os.PathLike,
  *,
  step: int | None = None,
  items: Sequence[str] = ("state", "config"),
) -> tuple[int, dict[str, Any]]:
  """Restores items of a checkpoint without a target structure.

  For evaluation code: ``state`` comes back as nested dicts of arrays
  (``state["params"]``, ``state["batch_stats"]``), ``config`` as a dict, and
  extra items (e.g. ``latent_stats`` of the one-class trainer) as saved.

  Args:
    workdir: a training workdir.
    step: the step to restore (default: the latest).
    items: the items to restore.

  Returns:
    ``(step, {item: value})``.

  Raises:
    FileNotFoundError: the workdir has no checkpoint (or not that step).
  """
  path = pathlib.Path(workdir).absolute() / CKPT_DIR
  if not path.is_dir():
    raise FileNotFoundError(
      f"No checkpoints in {path}; train first or pass the right workdir."
    )
  with checkpoint_manager(workdir, read_only=True) as mngr:
    steps = mngr.all_steps()
    if step is None:
      step = mngr.latest_step()
    if step is None or step not in steps:
      raise FileNotFoundError(
        f"No checkpoint of step {step} in {path}; available: {sorted(steps)}."
      )
    args = {
      name: ocp.args.JsonRestore()
      if name == "config"
      else ocp.args.StandardRestore()
      for name in items
    }
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  return step, {name: restored[name] for name in items}


def _check_compatible(
  config_dict: Mapping[str, Any],
  saved: Mapping[str, Any],
  where: str,
  run_fields: frozenset[str] = frozenset(),
) -> None:
  keys = (set(config_dict) | set(saved)) - RUN_CONTROL_FIELDS - run_fields
  diff = sorted(k for k in keys if config_dict.get(k) != saved.get(k))
  if diff:
    detail = ", ".join(
      f"{k}: saved {saved.get(k)!r}, now {config_dict.get(k)!r}" for k in diff
    )
    raise ConfigMismatchError(
      f"{where} holds a run with a different config ({detail}). Pick a new "
      "--workdir, pass the saved values, or pass --overwrite to delete the "
      "old run."
    )


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
      "%s received: saving a checkpoint after this step.",
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
# The loop.


def init_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """The run's ``(init_key, step_key)`` from ``seed``.

  ``init_key`` (for ``create_train_state``) is an ``"rbg"`` key: XLA:CPU
  compiles the initialisation of a model in a fraction of the time it takes
  with threefry (2 s instead of 7 s for the FactorVAE); the draws are
  deterministic for a backend and identical on every device. ``step_key``
  (folded with ``state.step`` inside the step) is the default threefry key.
  """
  init_key = jax.random.key(seed, impl="rbg")
  step_key = jax.random.fold_in(jax.random.key(seed), 1)
  return init_key, step_key


def _prepare_workdir(
  workdir: pathlib.Path,
  config_dict: dict[str, Any],
  overwrite: bool,
  run_fields: frozenset[str],
) -> None:
  """Deletes an old run (``overwrite``) and checks ``config.json``."""
  ckpt = workdir / CKPT_DIR
  config_path = workdir / CONFIG_NAME
  if jax.process_index() == 0:
    if overwrite:
      for name in (CKPT_DIR, metric_writers.TENSORBOARD_DIR):
        shutil.rmtree(workdir / name, ignore_errors=True)
      for name in (CONFIG_NAME, metric_writers.JSONL_NAME):
        (workdir / name).unlink(missing_ok=True)
    has_ckpt = ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())
    if has_ckpt and config_path.exists():
      saved = json.loads(config_path.read_text())
      _check_compatible(config_dict, saved, str(workdir), run_fields)
    workdir.mkdir(parents=True, exist_ok=True)


def _restore(
  mngr: ocp.CheckpointManager,
  step: int,
  abstract_state: TrainState,
  config_dict: Mapping[str, Any],
  run_fields: frozenset[str],
) -> TrainState:
  where = f"{mngr.directory}/{step}"
  try:
    saved_config = mngr.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
    ).config
  except Exception as e:  # noqa: BLE001 (re-raised with advice)
    raise ConfigMismatchError(
      f"Cannot read the config of checkpoint {where}: {e}. Pick a new "
      "--workdir or pass --overwrite."
    ) from e
  _check_compatible(config_dict, saved_config, where, run_fields)
  try:
    restored = mngr.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)),
    )
  except Exception as e:  # noqa: BLE001 (re-raised with advice)
    raise ConfigMismatchError(
      f"Checkpoint {where} does not fit the model built from the config "
      f"(different architecture or code version): {e}. Pick a new --workdir "
      "or pass --overwrite."
    ) from e
  return restored.state


def train_and_evaluate(
  config: LoopConfig,
  workdir: str | os.PathLike,
  trainer: Trainer,
  *,
  overwrite: bool = False,
  mesh: jax.sharding.Mesh | None = None,
) -> TrainState:
  """Trains ``trainer`` to ``config.num_steps``, resuming from ``workdir``.

  Args:
    config: the trainer's config (a :class:`LoopConfig` subclass).
    workdir: checkpoints (``ckpt/``), ``config.json``, ``metrics.jsonl`` and
      ``tensorboard/``. An existing checkpoint is resumed from.
    trainer: the state, step, data and hooks of one trainer.
    overwrite: delete an old run in ``workdir`` first.
    mesh: the device mesh (default: all devices on the ``"data"`` axis).

  Returns:
    The final state (replicated over ``mesh``).

  Raises:
    ConfigMismatchError: ``workdir`` holds a run of another config.
    NonFiniteLossError: the loss became NaN/inf; the message names the step
      and the last good checkpoint, which is left intact.
    TrainingInterrupted: SIGINT/SIGTERM; the state was saved first.
  """
  check_config(config)
  workdir = pathlib.Path(workdir).absolute()
  mesh = make_mesh() if mesh is None else mesh
  check_batch_size(trainer.global_batch_size, mesh)
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P(DATA_AXIS))
  config_dict = config_to_dict(config)
  run_fields = frozenset(getattr(config, "RUN_FIELDS", ()))
  _prepare_workdir(workdir, config_dict, overwrite, run_fields)

  init_key, step_key = init_keys(config.seed)
  step_key = jax.device_put(step_key, replicated)

  create_fn = jax.jit(trainer.create_train_state, out_shardings=replicated)
  train_step_fn = jax.jit(
    trainer.train_step,
    in_shardings=(replicated, data_sharding, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )

  is_main = jax.process_index() == 0
  mngr = checkpoint_manager(workdir, max_to_keep=config.max_to_keep)
  writer = metric_writers.MetricWriter(workdir, enabled=is_main)
  try:
    latest = mngr.latest_step()
    if latest is None:
      state = create_fn(init_key)
      # A strongly typed step, as restored ones are, so resuming never
      # retraces the step function.
      state = state.replace(
        step=jax.device_put(jnp.asarray(state.step, jnp.int32), replicated)
      )
    else:
      abstract = jax.eval_shape(create_fn, init_key)
      abstract = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        abstract,
      )
      state = _restore(mngr, latest, abstract, config_dict, run_fields)
      _log.info("Resuming from %s at step %d.", mngr.directory, latest)
    start_step = int(state.step)
    if is_main:
      (workdir / CONFIG_NAME).write_text(
        json.dumps(config_dict, indent=2) + "\n"
      )

    def save(step: int, state: TrainState, final: bool) -> None:
      items = {
        "state": ocp.args.StandardSave(state),
        "config": ocp.args.JsonSave(config_dict),
      }
      if final and trainer.extras_fn is not None:
        extras = trainer.extras_fn(state)
        items.update({k: ocp.args.StandardSave(v) for k, v in extras.items()})
      mngr.save(step, args=ocp.args.Composite(**items), force=True)

    def evaluate(step: int, state: TrainState) -> None:
      if trainer.eval_fn is None:
        return
      scalars = trainer.eval_fn(state)
      writer.write_scalars(step, {f"eval/{k}": v for k, v in scalars.items()})

    def check_finite(step: int, loss: float, state: TrainState) -> None:
      if math.isfinite(loss) and bool(_all_finite(state.params)):
        return
      last = mngr.latest_step()
      where = (
        f"the last good checkpoint is step {last} in {mngr.directory} (kept "
        "intact; rerunning resumes from it)"
        if last is not None
        else "no checkpoint was saved yet"
      )
      raise NonFiniteLossError(
        f"Non-finite loss ({loss}) at step {step}: training stopped; {where}. "
        "Lower the learning rate or check the data for NaNs."
      )

    if start_step >= config.num_steps:
      _log.info(
        "%s is already trained to step %d (num_steps=%d); nothing to do.",
        workdir,
        start_step,
        config.num_steps,
      )
      return state

    batch_iter = trainer.batches(
      start_step, jax.process_index(), jax.process_count()
    )
    progress = tqdm.tqdm(
      total=config.num_steps,
      initial=start_step,
      unit="step",
      dynamic_ncols=True,
      disable=not (is_main and sys.stderr.isatty()),
    )
    last_log_time, last_log_step = time.perf_counter(), start_step
    with progress, _catch_signals() as interrupt:
      for step in range(start_step, config.num_steps):
        try:
          local = next(batch_iter)
        except StopIteration:
          raise RuntimeError(
            f"The data ran out at step {step}; the trainer's batches must "
            "repeat forever."
          ) from None
        batch = shard_batch(local, data_sharding)
        state, metrics = train_step_fn(state, batch, step_key)
        done = step + 1
        progress.update(1)
        is_last = done == config.num_steps
        do_save = (
          done % config.checkpoint_every == 0
          or is_last
          or interrupt.signum is not None
        )
        if done % config.log_every == 0 or is_last or do_save:
          host = jax.device_get(metrics)
          loss = float(host["loss"])
          check_finite(done, loss, state)
          if done % config.log_every == 0 or is_last:
            now = time.perf_counter()
            rate = (done - last_log_step) / max(now - last_log_time, 1e-9)
            last_log_time, last_log_step = now, done
            scalars = {f"train/{k}": v for k, v in host.items()}
            scalars["train/steps_per_sec"] = rate
            scalars["train/examples_per_sec"] = rate * trainer.global_batch_size
            writer.write_scalars(done, scalars)
            progress.set_postfix(loss=f"{loss:.4g}")
        if config.eval_every and done % config.eval_every == 0 and not is_last:
          evaluate(done, state)
        if do_save:
          save(done, state, final=is_last)  # Before the final evaluation.
          if is_last:
            evaluate(done, state)
          if interrupt.signum is not None and not is_last:
            mngr.wait_until_finished()
            writer.flush()
            raise TrainingInterrupted(
              interrupt.signum, done, str(mngr.directory)
            )
    mngr.wait_until_finished()
    return state
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()


def run_main(
  train_fn: Callable[..., TrainState],
  config: Any,
  workdir: str,
  overwrite: bool,
) -> int:
  """Runs ``train_fn(config, workdir, overwrite=...)`` for a ``main``.

  Sets up INFO logging, and turns an interruption into exit status
  ``128 + signal`` after the checkpoint was saved.

  Returns:
    The process exit status.
  """
  logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(message)s",
    force=True,
  )
  for noisy in ("absl", "orbax", "jax._src"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  _log.info("workdir: %s", os.path.abspath(workdir))
  try:
    train_fn(config, workdir, overwrite=overwrite)
  except TrainingInterrupted as e:
    _log.warning("%s", e)
    return 128 + e.signum
  except (ConfigMismatchError, NonFiniteLossError) as e:
    _log.error("%s", e)
    return 1
  return 0
