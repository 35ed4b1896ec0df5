"""What every trainer shares: the state, the config fields of the loop, the
trainer interface and the errors the loop raises.

The pieces live in small modules: :mod:`train.flags` (command line),
:mod:`train.distributed` (processes, mesh, placement), :mod:`train.loop`
(the loop), :mod:`workflow.runs` (run directories and checkpoints).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import jax
import numpy as np
from flax.training import train_state

from vae_attn import attention
from workflow import configs
from workflow.runs import ConfigMismatchError

__all__ = [
  "Batch",
  "ConfigMismatchError",
  "DeviceData",
  "LoopConfig",
  "Metrics",
  "NonFiniteLossError",
  "PRECISIONS",
  "Trainer",
  "TrainState",
  "TrainingInterrupted",
]

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
PyTree = Any

# Matmul/convolution precision of the jitted step (``vae_attn.attention.
# matmul_precision``): "highest" is full float32 on every backend (the
# default: the maps and L_AD agree with the CPU to ~1e-6); "default" lets GPUs
# use TF32 and TPUs bfloat16 passes (faster; the maps moved by up to 8 % on
# an H200).
PRECISIONS = attention.PRECISIONS
GRID_MODES = ("auto", "vmap", "sequential")


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

  Attributes:
    seed: root of the parameter, step and data randomness.
    num_steps: train until ``state.step == num_steps``.
    log_every: read metrics on the host (and check the loss) this often; the
      logged ``train/*`` values are means over the steps since the last log.
    eval_every: run the evaluation hook this often (0: only at the end).
    checkpoint_every: save a checkpoint this often (and at the end).
    max_to_keep: checkpoints kept in ``workdir/ckpt``.
    steps_per_call: training steps per compiled call (one ``lax.scan``);
      0 picks: 100 on an accelerator with data on the device, else 1 (on
      XLA:CPU a step inside a while loop ran 15x slower than alone). Calls
      end at every log, evaluation and checkpoint step.
    precision: matmul and convolution precision of the step (``PRECISIONS``).
    grid_mode: how the members of a grid are run: ``vmap`` (one batched
      program: accelerators), ``sequential`` (one after another, each a call
      of the single-run program: XLA:CPU, where batched convolutions lose the
      CPU rewrites and loops run slowly), ``auto`` (``sequential`` on CPU,
      else ``vmap``).
  """

  RUN_CONTROL_FIELDS: ClassVar[frozenset[str]] = frozenset(
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
    minimum=0,
    maximum=configs.MAX_SEED,
  )
  num_steps: int = configs.field(1000, "training steps", minimum=1)
  log_every: int = configs.field(
    100, "log the mean metrics this often", minimum=1
  )
  eval_every: int = configs.field(
    0, "evaluate this often (0: at the end only)", minimum=0
  )
  checkpoint_every: int = configs.field(
    1000, "save a checkpoint this often", minimum=1
  )
  max_to_keep: int = configs.field(3, "checkpoints kept", minimum=1)
  steps_per_call: int = configs.field(
    0,
    "steps per compiled call (0: 100 on GPU/TPU with data on device, else 1)",
    minimum=0,
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


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity.
class DeviceData:
  """A data set held on the device(s), sampled inside the compiled step.

  Attributes:
    arrays: a pytree of numpy arrays (the whole data set; ``{}`` for a
      renderer); placed replicated on the mesh once and passed to every
      compiled call as an argument (never captured as a constant).
    sample: ``fn(arrays, key, num) -> batch`` drawing ``num`` examples with
      ``key`` (pure, jittable): batches depend only on the key, so a resumed
      run draws the same batches.
  """

  arrays: PyTree
  sample: Callable[[PyTree, jax.Array, int], Batch]


@dataclasses.dataclass(frozen=True)
class Trainer:
  """What a trainer supplies to :func:`train.loop.train_and_evaluate`.

  Attributes:
    create_train_state: ``fn(key) -> TrainState``; pure, jitted by the loop.
    train_step: ``fn(state, batch, key, hparams) -> (state, metrics)``; pure;
      ``key`` is the run's step key, to be combined with ``state.step`` by
      ``jax.random.fold_in``; ``hparams`` is the member's
      :attr:`hparams_fn` pytree (traced: members of a grid differ there).
      ``metrics`` is a dict of scalars that includes ``"loss"``.
    global_batch_size: examples per step over all processes.
    batches: ``fn(start_step, process_index, process_count) -> iterator`` of
      this process's share of every global batch from ``start_step`` on (the
      host pipeline, for data that does not fit on the device).
    device_data: the data on the device instead (needed for grids).
    hparams_fn: ``fn(config) -> {name: float}``, the traced hyper-parameters.
    eval_fn: optional ``fn(state, config) -> {name: number}``, run every
      ``eval_every`` steps and at the end (on process 0), logged as
      ``eval/<name>``.
    extras_fn: optional ``fn(state, config) -> {name: pytree}`` of arrays
      saved as extra items of the final checkpoint (latent statistics).
    spec_fn: ``fn(config) -> workflow.runs.RunSpec`` saved with the run.
    metrics_fn: optional ``fn(config, scalars) -> scalars`` that drops the
      metrics a member does not use (e.g. ``ad`` of a run without L_AD).
  """

  create_train_state: Callable[[jax.Array], TrainState]
  train_step: Callable[..., tuple[TrainState, Metrics]]
  global_batch_size: int
  batches: Callable[[int, int, int], Iterator[dict[str, np.ndarray]]] | None = (
    None
  )
  device_data: DeviceData | None = None
  hparams_fn: Callable[[Any], Mapping[str, float]] = lambda config: {}
  eval_fn: Callable[[TrainState, Any], Mapping[str, Any]] | None = None
  extras_fn: Callable[[TrainState, Any], Mapping[str, PyTree]] | None = None
  spec_fn: Callable[[Any], Any] | None = None
  metrics_fn: Callable[[Any, dict], dict] | None = None
