"""The run directories of a training job: one per member of a grid.

Each member writes an ordinary run directory (``workflow.runs``): its
config, spec, checkpoints, ``metrics.jsonl`` and TensorBoard files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import pathlib
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from train import common
from workflow import configs as configs_lib
from workflow import runs, writers

_log = logging.getLogger(__name__)


def grid_fields(config_cls: type) -> tuple[str, ...]:
  """The fields of ``config_cls`` a grid may vary (``train.flags.grid_field``),
  in field order with ``seed`` last (seeds vary fastest in a grid)."""
  names = [
    f.name for f in dataclasses.fields(config_cls) if f.metadata.get("grid")
  ]
  return tuple(sorted(names, key=lambda n: n == "seed"))


def expand_grid(base: Any, lists: Mapping[str, Sequence[Any]]) -> list[Any]:
  """Every combination of ``lists`` applied to ``base`` (last field fastest).

  Example: ``expand_grid(config, {"loss": ["tc", "ad"], "seed": [0, 1]})``
  gives tc/0, tc/1, ad/0, ad/1.
  """
  names = list(lists)
  return [
    dataclasses.replace(base, **dict(zip(names, combo, strict=True)))
    for combo in itertools.product(*(lists[n] for n in names))
  ]


def member_name(config: Any, varying: Sequence[str]) -> str:
  """A grid member's folder name from the fields that vary in the grid.

  ``loss`` shows its value alone, other fields as name and value:
  ``ad_gamma40_seed0``. The seed is always part of the name.
  """
  parts = []
  for name in list(dict.fromkeys([*varying, "seed"])):
    value = getattr(config, name)
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    parts.append(str(value) if name == "loss" else f"{name}{value}")
  return "_".join(parts)


def _grid_fields(configs: Sequence[Any]) -> list[str]:
  """The fields whose values differ between members, in grid field order.

  Raises:
    ValueError: members differ in a field that is not a grid field.
  """
  first = configs_lib.to_dict(configs[0])
  varying = {
    k
    for c in configs[1:]
    for k, v in configs_lib.to_dict(c).items()
    if v != first[k]
  }
  allowed = grid_fields(type(configs[0]))
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
  names = [member_name(c, varying) for c in configs]
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


def prepare(run_dir: pathlib.Path, config: Any, overwrite: bool) -> None:
  """Deletes an old run (``overwrite``) and checks ``config.json``."""
  if overwrite:
    for name in (runs.CKPT_DIR, writers.TENSORBOARD_DIR):
      shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in (runs.CONFIG_NAME, runs.SPEC_NAME, writers.JSONL_NAME):
      (run_dir / name).unlink(missing_ok=True)
  ckpt = run_dir / runs.CKPT_DIR
  has_ckpt = ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())
  config_path = run_dir / runs.CONFIG_NAME
  if has_ckpt and config_path.exists():
    saved = json.loads(config_path.read_text())
    _check_compatible(
      configs_lib.to_dict(config),
      saved,
      str(run_dir),
      _ignored_fields(config),
    )


class Members:
  """Per-member run directories, managers, writers and configs."""

  def __init__(self, configs, dirs, is_main):
    self.configs = list(configs)
    self.dirs = list(dirs)
    self.is_main = is_main
    self.mngrs = [
      runs.checkpoint_manager(d, max_to_keep=c.max_to_keep)
      for d, c in zip(self.dirs, self.configs, strict=True)
    ]
    self.writers: list[writers.MetricWriter] = []

  def open_writers(self, resume_step: int | None) -> None:
    self.writers = [
      writers.MetricWriter(
        d,
        enabled=self.is_main,
        resume_step=resume_step,
        name=d.name if len(self.dirs) > 1 else "",
      )
      for d in self.dirs
    ]

  def save(self, program, step: int, state, final: bool) -> None:
    """Saves every member's state (and, when final, its extras)."""
    trainer = program.trainer
    for k, (mngr, c) in enumerate(zip(self.mngrs, self.configs, strict=True)):
      if step in mngr.all_steps():
        continue  # Saved before a crash by a member that was ahead.
      member = program.member(state, k)
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
        config=configs_lib.to_dict(c),
        spec=spec,
        extras=extras,
      )
    for w in self.writers:
      w.flush()

  def wait(self) -> None:
    for m in self.mngrs:
      runs.wait(m)

  def evaluate(self, program, step: int, state) -> None:
    """Runs the eval hook of every member (process 0) and logs it."""
    trainer = program.trainer
    if trainer.eval_fn is None or not self.is_main:
      return
    for k, (c, w) in enumerate(zip(self.configs, self.writers, strict=True)):
      where = "" if len(self.dirs) == 1 else f" of {self.dirs[k].name}"
      _log.info("Evaluating%s at step %d.", where, step)
      with jax.default_device(jax.local_devices()[0]):
        scalars = trainer.eval_fn(program.member(state, k), c)
      w.write_scalars(step, {f"eval/{n}": v for n, v in scalars.items()})

  def check_finite(self, step: int, sums) -> None:
    """Raises NonFiniteLossError naming the members and the last good step."""
    flags_ = np.atleast_1d(sums["nonfinite"])
    bad = [str(d) for d, n in zip(self.dirs, flags_, strict=True) if n > 0]
    if not bad:
      return
    last = self.mngrs[0].latest_step()
    where = (
      f"the last good checkpoint is step {last} (kept intact; rerunning "
      "resumes from it)"
      if last is not None
      else "no checkpoint was saved yet"
    )
    member = "" if len(self.dirs) == 1 else f" of {bad}"
    raise common.NonFiniteLossError(
      f"Non-finite loss{member} at step {step} (or in the steps since the "
      f"last log): training stopped; {where}. "
      "Lower the learning rate or check the data for NaNs."
    )

  def log(self, trainer, step: int, sums, count: int, rate: float) -> float:
    """Writes each member's means over the interval; returns member 0's
    loss."""
    for k, (c, w) in enumerate(zip(self.configs, self.writers, strict=True)):
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

  def close(self) -> None:
    for m in self.mngrs:
      with contextlib.suppress(Exception):
        m.wait_until_finished()
      m.close()
    for w in self.writers:
      w.close()


def restore_members(members, program, abstract):
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
      configs_lib.to_dict(c),
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
