"""A grid of runs: the configs of every combination, and each member's folder.

``python -m train.factorvae --loss=tc,ad --seeds=0,1`` trains four members,
each an ordinary run folder ``<workdir>/<member name>`` named from the fields
that vary (``tc_seed0``, ``ad_gamma40_seed1``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

_log = logging.getLogger(__name__)


def grid_fields(config_cls: type) -> tuple[str, ...]:
  """The fields of ``config_cls`` a grid may vary (``configs.grid_field``),
  in field order with ``seed`` last (seeds vary fastest in a grid)."""
  names = [
    f.name for f in dataclasses.fields(config_cls) if f.metadata.get("grid")
  ]
  return tuple(sorted(names, key=lambda n: n == "seed"))


def expand(base: Any, lists: Mapping[str, Sequence[Any]]) -> list[Any]:
  """Every combination of ``lists`` applied to ``base`` (last field fastest):
  ``{"loss": ["tc", "ad"], "seed": [0, 1]}`` gives tc/0, tc/1, ad/0, ad/1. A
  config equal to an earlier one (a weight its objective does not read is
  recorded at its default) is left out, with a warning."""
  names = list(lists)
  members = []
  for combo in itertools.product(*(lists[n] for n in names)):
    config = dataclasses.replace(base, **dict(zip(names, combo, strict=True)))
    if config in members:
      shown = ", ".join(f"{n}={v}" for n, v in zip(names, combo, strict=True))
      _log.warning(
        "Not training the member %s: its config equals an earlier member's "
        "(a weight its objective does not read is recorded at its default).",
        shown,
      )
      continue
    members.append(config)
  return members


def member_name(config: Any, varying: Sequence[str]) -> str:
  """A member's folder name from the fields that vary in its grid (and the
  seed): ``ad_gamma40_seed0``."""
  parts = []
  for name in dict.fromkeys([*varying, "seed"]):
    value = getattr(config, name)
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    parts.append(str(value) if name == "loss" else f"{name}{value}")
  return "_".join(parts)


def varying_fields(configs: Sequence[Any]) -> list[str]:
  """The fields whose values differ between ``configs``, in grid order
  (``ValueError``: one that is not a grid field)."""
  first = dataclasses.asdict(configs[0])
  varying = {
    k
    for c in configs[1:]
    for k, v in dataclasses.asdict(c).items()
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


def member_dirs(
  workdir: str | pathlib.Path, configs: Sequence[Any]
) -> list[pathlib.Path]:
  """One run folder per config: ``workdir`` itself for a single run."""
  workdir = pathlib.Path(workdir)
  if len(configs) == 1:
    return [workdir]
  varying = varying_fields(configs)
  return [workdir / member_name(c, varying) for c in configs]
