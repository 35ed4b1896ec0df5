"""Run directories: the one place that writes and reads what training knows.

A run directory holds::

  config.json      the trainer's config (every field, JSON)
  spec.json        the run spec: model name and arguments, input shape, data
                   source and folder, attention layer (:class:`RunSpec`)
  ckpt/<step>/     orbax checkpoints; items ``state``, ``config``, ``spec``
                   and, in the final one, extras such as ``latent_stats``
  metrics.jsonl    one JSON object per logged step (``metric_writers``)
  tensorboard/     TensorBoard event files
  .lock            held (``fcntl.flock``) while a trainer writes the run

Training writes it through :func:`save`; evaluation reads it through
:func:`restore` and :func:`read_spec` and never guesses (no architecture
inferred from parameter shapes). Restoring builds its target from the saved
array metadata and the *current* devices, so a run trained on 8 devices (or by
several processes) is evaluated on one.

Damaged checkpoints are skipped, not misdiagnosed: :func:`restore` walks the
steps from the newest down and takes the first that is complete (every item
folder present), readable and finite, naming each step it skipped and why.
Nothing here ever deletes a checkpoint.

Where the code lives: the run directory's own files (spec, config, lock)
and its errors in ``_run_files.py``, the checks and restore of one step in
``_restore_step.py``; this module saves checkpoints and walks the steps, and
re-exports the rest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from vae_attn import _restore_step, _run_files
from vae_attn._restore_step import (
  abstract_from_metadata as abstract_from_metadata,
)
from vae_attn._run_files import CKPT_DIR as CKPT_DIR
from vae_attn._run_files import CONFIG_NAME as CONFIG_NAME
from vae_attn._run_files import JSON_ITEMS as JSON_ITEMS
from vae_attn._run_files import LOCK_NAME as LOCK_NAME
from vae_attn._run_files import SPEC_NAME as SPEC_NAME
from vae_attn._run_files import CheckpointError as CheckpointError
from vae_attn._run_files import CheckpointWriteError as CheckpointWriteError
from vae_attn._run_files import ConfigMismatchError as ConfigMismatchError
from vae_attn._run_files import RunSpec as RunSpec
from vae_attn._run_files import WorkdirLockedError as WorkdirLockedError
from vae_attn._run_files import check_run_dir as check_run_dir
from vae_attn._run_files import ckpt_dir as ckpt_dir
from vae_attn._run_files import lock as lock
from vae_attn._run_files import read_config as read_config
from vae_attn._run_files import read_spec as read_spec
from vae_attn._run_files import write_json as write_json

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Checkpoints.


def checkpoint_manager(
  workdir: str | os.PathLike, *, max_to_keep: int = 3, read_only: bool = False
) -> ocp.CheckpointManager:
  """The orbax manager of ``workdir/ckpt``.

  Args:
    workdir: the run directory.
    max_to_keep: the newest steps kept (older ones are deleted by orbax after
      a newer one is saved).
    read_only: for evaluation: never creates or deletes anything.
  """
  # Readers open the manager without orbax's read_only option (which logs
  # "Given directory is read only" on every open): a manager that is never
  # asked to save writes and deletes nothing.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
    create=not read_only,
  )
  return ocp.CheckpointManager(ckpt_dir(workdir), options=options)


def save(
  mngr: ocp.CheckpointManager,
  step: int,
  *,
  state: Any,
  config: Mapping[str, Any],
  spec: RunSpec | None = None,
  extras: Mapping[str, Any] | None = None,
  wait: bool = False,
) -> None:
  """Saves ``state`` (and the config, spec and extras) as step ``step``.

  Every process of a multi-process run must call it (orbax writes each
  process's shards; JSON items are written once).

  Args:
    mngr: from :func:`checkpoint_manager`.
    step: the step number.
    state: a pytree of arrays.
    config: the trainer's config dict.
    spec: the run spec (saved as the item ``spec``).
    extras: more pytrees of arrays, saved as items of their own.
    wait: block until the write is complete.

  Raises:
    CheckpointWriteError: the disk is full or the folder read-only; the
      previous steps are intact.
  """
  items = {
    "state": ocp.args.StandardSave(state),
    "config": ocp.args.JsonSave(dict(config)),
  }
  if spec is not None:
    items["spec"] = ocp.args.JsonSave(spec.to_dict())
  for name, value in (extras or {}).items():
    items[name] = ocp.args.StandardSave(value)
  try:
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    if wait:
      mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001 (re-raised, clearer when it is I/O)
    raise _run_files.write_error(
      e, f"saving step {step} to {mngr.directory}"
    ) from e


def wait(mngr: ocp.CheckpointManager) -> None:
  """Waits for pending saves; a failed write becomes one clear error."""
  try:
    mngr.wait_until_finished()
  except Exception as e:  # noqa: BLE001 (re-raised, clearer when it is I/O)
    raise _run_files.write_error(e, f"saving to {mngr.directory}") from e


def step_items(workdir: str | os.PathLike, step: int) -> list[str]:
  """The item names saved in step ``step`` (sorted)."""
  step_dir = ckpt_dir(workdir) / str(step)
  return sorted(
    p.name for p in step_dir.iterdir() if p.is_dir() and p.name[0] not in "._"
  )


def restore(
  workdir: str | os.PathLike,
  *,
  items: Sequence[str] = ("state", "config"),
  optional_items: Sequence[str] = (),
  targets: Mapping[str, Any] | None = None,
  sharding=None,
  step: int | None = None,
  mngr: ocp.CheckpointManager | None = None,
  max_step: int | None = None,
) -> tuple[int, dict[str, Any]]:
  """Restores the newest complete, readable and finite checkpoint.

  Steps are tried from the newest down (or only ``step``); a step with a
  missing item folder, a file orbax cannot read, or a NaN/inf in a floating
  array is skipped with a warning that names the step and the reason.

  Args:
    workdir: a run directory.
    items: items that must be present (``"state"``, ``"config"``...).
    optional_items: items restored when the step has them (extras such as
      ``latent_stats``).
    targets: item -> abstract pytree (shape structs with shardings) to
      restore into; an item without one is restored from its saved metadata
      onto ``sharding``.
    sharding: where metadata-built targets go (default: the first local
      device).
    step: restore exactly this step (no fallback to older ones).
    mngr: an open manager of ``workdir`` (default: a read-only one).
    max_step: ignore steps after this one.

  Returns:
    ``(step, {item: value})``: the JSON items as dicts, the others as pytrees
    of ``jax.Array`` (nested dicts without a target).

  Raises:
    FileNotFoundError: ``workdir`` does not exist or has no checkpoint (or
      not ``step``).
    NotADirectoryError: ``workdir`` is a file.
    CheckpointError: no step is usable; the message lists each step and why.
  """
  check_run_dir(workdir)
  path = ckpt_dir(workdir)
  if not path.is_dir():
    raise FileNotFoundError(
      f"No checkpoints in {path}; train first, or pass the --workdir of a "
      "training run."
    )
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  targets = dict(targets or {})
  own = mngr is None
  if own:
    mngr = checkpoint_manager(workdir, read_only=True)
  try:
    steps = sorted(mngr.all_steps(), reverse=True)
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
          f"No checkpoint of step {step} in {path}; available: {sorted(steps)}."
        )
      steps = [step]
    elif max_step is not None:
      steps = [s for s in steps if s <= max_step]
    if not steps:
      raise FileNotFoundError(f"No checkpoints in {path}; train first.")
    skipped = []
    for s in steps:
      reason, restored = _restore_step.try_restore(
        mngr, s, items, optional_items, targets, sharding
      )
      if reason is None:
        for old, why in skipped:
          _log.warning("Skipped checkpoint step %d in %s: %s.", old, path, why)
        if skipped:
          _log.warning("Restored step %d instead.", s)
        return s, restored
      skipped.append((s, reason))
    detail = "; ".join(f"step {s}: {why}" for s, why in skipped)
    raise CheckpointError(
      f"No usable checkpoint in {path} ({detail}). The files were left as "
      "they are; restore a backup of that folder, or train into a new "
      "--workdir."
    )
  finally:
    if own:
      mngr.close()
