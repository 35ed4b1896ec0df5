"""The compiled pieces of a training job: one member's chunk of steps, the
grid over members, initialisation, and the run's keys.

A :class:`Program` is hashable (a frozen dataclass of the trainer and the
shardings), and its jitted functions are cached per equal program, so a
second run of the same trainer on the same mesh (a resume) never retraces.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from train import common, distributed
from vae_attn import attention

_AUTO_STEPS_PER_CALL = 100


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


def resolve_steps_per_call(config: Any, on_device: bool) -> int:
  """``config.steps_per_call``, or: 1 on XLA:CPU or with a host pipeline,
  else 100.

  On XLA:CPU a step inside a while loop (``lax.scan``, ``fori_loop``) ran 15x
  slower than the same step called alone (4.6 s against 0.31 s for
  AD-FactorVAE at batch 64, 2-core CPU); a CPU step is long enough that one
  dispatch per step costs nothing measurable.
  """
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


@dataclasses.dataclass(frozen=True)
class Program:
  """The compiled calls of one training job (fixed for its members).

  With ``grid_mode="vmap"`` the members' states are stacked on axis 0 and
  one compiled call runs them all; with ``"sequential"`` they stay a list
  and each member is a call of the single-run program (compiled once).
  """

  trainer: common.Trainer
  num_members: int
  grid_mode: str
  precision: str
  replicated: NamedSharding
  data_sharding: NamedSharding

  @property
  def stacked(self) -> bool:
    """Whether a grid's states are stacked (one vmapped call)."""
    return self.num_members > 1 and self.grid_mode == "vmap"

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
      if length == 1:  # No while loop: XLA:CPU runs loop bodies slowly.
        first = (
          None if batches is None else jax.tree.map(lambda b: b[0], batches)
        )
        state, metrics = body(state, first)
        metrics = jax.tree.map(lambda m: m[None], metrics)
      else:
        state, metrics = jax.lax.scan(body, state, batches, length=length)
    sums = {k: jnp.sum(v.astype(jnp.float32)) for k, v in metrics.items()}
    finite = jnp.all(jnp.isfinite(metrics["loss"])) & _all_finite(state.params)
    sums["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    return state, sums

  def chunk(self, states, seeds, hparams, data, batches, *, length):
    """``length`` steps of one member, or of a stacked (vmapped) grid."""
    fn = functools.partial(self.member_chunk, length=length)
    if not self.stacked:
      return fn(states, seeds, hparams, data, batches)
    return jax.vmap(fn, in_axes=(0, 0, 0, None, None))(
      states, seeds, hparams, data, batches
    )

  def run_chunk(self, states, seeds, hparams, data, batches, *, length):
    """Dispatches one call of every member; ``sums`` stacked for a grid."""
    if self.num_members == 1 or self.stacked:
      return self.compiled_chunk(
        states, seeds, hparams, data, batches, length=length
      )
    out = [
      self.compiled_chunk(s, k, h, data, batches, length=length)
      for s, k, h in zip(states, seeds, hparams, strict=True)
    ]
    return [o[0] for o in out], self.stack([o[1] for o in out])

  def member(self, state, k: int):
    """Member ``k``'s state (the state itself for a single run)."""
    if self.num_members == 1:
      return state
    return self.take(state, k) if self.stacked else state[k]

  def init_member(self, seed):
    """A member's initial state from its seed (traced)."""
    init_key, _, _ = init_keys(seed)
    state = self.trainer.create_train_state(init_key)
    # A strongly typed step, as restored ones are, so resuming never retraces.
    return state.replace(step=jnp.asarray(state.step, jnp.int32))

  @property
  def compiled_chunk(self):
    return jitted(self, "chunk")

  @property
  def stack(self):
    return jitted(self, "stack")

  @property
  def take(self):
    return jitted(self, "take")

  @property
  def add(self):
    return jitted(self, "add")


@functools.lru_cache(maxsize=64)
def jitted(program: Program, name: str):
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
  program = Program(
    trainer=trainer,
    num_members=1,
    grid_mode="sequential",
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
