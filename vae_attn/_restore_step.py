"""Restoring one checkpoint step, with its damage checks (private).

:func:`vae_attn.runs.restore` walks the steps from the newest down and asks
:func:`try_restore` about each: a step is usable when every item folder is
present, orbax can read it and its floating arrays are finite; a step whose
arrays have other shapes than the model's is a different run, not damage,
and raises. ``abstract_from_metadata`` is re-exported by
:mod:`vae_attn.runs`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from vae_attn import _run_files

# Files every array item of an orbax (OCDBT) checkpoint has.
_ARRAY_FILES = ("_METADATA", "manifest.ocdbt")


def _missing_items(step_dir: pathlib.Path, items: Sequence[str]) -> list[str]:
  return [name for name in items if not (step_dir / name).is_dir()]


def _non_finite(tree: Any) -> list[str]:
  """Paths of floating leaves that hold NaN or inf."""
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    array = np.asarray(jax.device_get(leaf)) if hasattr(leaf, "shape") else None
    if array is None or array.dtype.kind not in "fc":
      continue
    if not np.isfinite(array).all():
      bad.append(jax.tree_util.keystr(path))
  return bad


def abstract_from_metadata(
  mngr: ocp.CheckpointManager, step: int, item: str, sharding
) -> Any:
  """The saved tree of ``item`` as shape structs placed by ``sharding``.

  This is the restore target that needs no model code and fits the current
  devices, whatever devices the run was saved from.
  """
  handler = ocp.StandardCheckpointHandler()
  try:
    meta = handler.metadata(pathlib.Path(mngr.directory) / str(step) / item)
  finally:
    handler.close()
  meta = getattr(meta, "item_metadata", meta)
  tree = getattr(meta, "tree", meta)
  is_array = lambda m: hasattr(m, "shape") and hasattr(m, "dtype")
  return jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
    tree,
    is_leaf=is_array,
  )


def _restore_args(
  mngr: ocp.CheckpointManager,
  step: int,
  items: Sequence[str],
  targets: Mapping[str, Any],
  sharding,
) -> ocp.args.Composite:
  args = {}
  for name in items:
    if name in _run_files.JSON_ITEMS:
      args[name] = ocp.args.JsonRestore()
      continue
    target = targets.get(name)
    if target is None:
      target = abstract_from_metadata(mngr, step, name, sharding)
    args[name] = ocp.args.StandardRestore(target)
  return ocp.args.Composite(**args)


def try_restore(mngr, step, items, optional_items, targets, sharding):
  """``(None, restored)`` or ``(reason, None)`` for one step."""
  step_dir = pathlib.Path(mngr.directory) / str(step)
  missing = _missing_items(step_dir, items)
  if missing:
    return f"partial, no item folder {missing} (an interrupted save?)", None
  for name in items:
    if name in _run_files.JSON_ITEMS:
      continue
    lost = [f for f in _ARRAY_FILES if not (step_dir / name / f).is_file()]
    if lost:  # Checked here: orbax's failed async reads leave noisy threads.
      return f"unreadable, {name}/{lost[0]} is missing", None
  present = set(_missing_items(step_dir, optional_items))
  wanted = list(items) + [n for n in optional_items if n not in present]
  for name, target in targets.items():
    if name in wanted:
      _check_structure(mngr, step, name, target)
  try:
    args = _restore_args(mngr, step, wanted, targets, sharding)
    restored = mngr.restore(step, args=args)
  except Exception as e:  # noqa: BLE001 (any unreadable step is skipped)
    text = " ".join(str(e).split())
    return f"unreadable ({type(e).__name__}: {text[:300]})", None
  out = {name: restored[name] for name in wanted}
  bad = _non_finite(
    {k: v for k, v in out.items() if k not in _run_files.JSON_ITEMS}
  )
  if bad:
    shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
    return f"non-finite values in {shown} (damaged bytes?)", None
  return None, out


def _shapes(tree: Any) -> list[tuple]:
  """The sorted leaf shapes (orbax names containers differently from jax)."""
  leaves = jax.tree.leaves(
    tree, is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype")
  )
  return sorted(tuple(leaf.shape) for leaf in leaves)


def _check_structure(mngr, step: int, item: str, target: Any) -> None:
  """Raises ConfigMismatchError when the saved tree has other arrays.

  A step whose metadata cannot be read is left to the restore (and skipped
  as unreadable there): damage is not a different architecture.
  """
  try:
    saved = _shapes(abstract_from_metadata(mngr, step, item, None))
  except Exception:  # noqa: BLE001 (unreadable: judged by the restore)
    return
  wanted = _shapes(target)
  if saved == wanted:
    return
  only_saved = [s for s in saved if s not in wanted][:3]
  only_now = [s for s in wanted if s not in saved][:3]
  raise _run_files.ConfigMismatchError(
    f"Checkpoint {mngr.directory}/{step} does not fit the model built from "
    f"the config (a different architecture or code version: {len(saved)} "
    f"saved arrays, {len(wanted)} now; saved shapes {only_saved} are not in "
    f"the model, its shapes {only_now} are not saved). Pick a new --workdir, "
    "or pass the config the run was trained with."
  )
