"""The trainers' command line: a preset, the config's fields, grids, launch.

``--preset=NAME`` picks a base config; every config field is a flag
(:mod:`workflow.configs`, simple_parsing) whose value replaces the preset's.
Fields made with ``configs.grid_field`` also take comma lists
(``--seeds=0,1,2 --loss=tc,ad --gamma=10,40``): the trainer then trains
every combination as one grid (``train.loop``). :class:`Launch` holds the
flags that are not part of a run's config: ``--workdir``, ``--overwrite``,
``--debug`` and the launch of several processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from train import members
from workflow import configs as configs_lib


@dataclasses.dataclass(frozen=True)
class Launch:
  """Where the run goes and how the processes start (not part of a config).

  Attributes:
    workdir: the run directory (default: one named after the config).
    overwrite: delete the workdir's checkpoints and logs first.
    debug: show the traceback of a user error.
    coordinator_address: ``host:port`` of process 0 (several processes).
    num_processes: processes in the job.
    process_id: this process's index.
  """

  workdir: str | None = configs_lib.field(
    None,
    "checkpoints, logs and config go here; a run resumes from it (default: "
    "a folder under runs/ named after the config)",
  )
  overwrite: bool = configs_lib.field(
    False, "delete the workdir's checkpoints and logs and start afresh"
  )
  debug: bool = configs_lib.field(
    False, "show the full traceback of an error (also: VAE_ATTN_DEBUG=1)"
  )
  coordinator_address: str | None = configs_lib.field(
    None,
    "several processes, where no cluster (SLURM, Cloud TPU, MPI) is found: "
    "host:port of process 0 (or JAX_COORDINATOR_ADDRESS; default: one "
    "process)",
  )
  num_processes: int | None = configs_lib.field(
    None, "processes in the job (or JAX_NUM_PROCESSES; default: 1)"
  )
  process_id: int | None = configs_lib.field(
    None,
    "this process's index, 0 .. num_processes-1 (or JAX_PROCESS_ID; "
    "default: 0)",
  )


class _Parser(configs_lib.ArgumentParser):
  """Names the grid flags when a comma list reaches another flag."""

  grid_flags: tuple[str, ...] = ()

  def error(self, message: str):
    bad = re.match(r"argument (--[\w-]+).*(?:value: |got )'[^']*,", message)
    if bad and bad.group(1) not in self.grid_flags:
      lists = ", ".join(self.grid_flags) or "none"
      message += f"; comma lists (a grid) are taken by: {lists}"
    super().error(message)


def _preset_name(
  argv: Sequence[str],
  presets: Mapping[str, Any],
  default_preset: str,
  preset_field: str | None,
) -> str:
  """``--preset``, else a ``preset_field`` value naming a preset."""
  pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
  pre.add_argument("--preset")
  if preset_field:
    pre.add_argument(
      f"--{preset_field.replace('_', '-')}", f"--{preset_field}", dest="field"
    )
  known, _ = pre.parse_known_args(argv)
  if known.preset in presets:
    return known.preset
  if preset_field and known.field in presets:
    return known.field
  return default_preset


def parse_flags(
  argv: Sequence[str] | None,
  config_cls: type,
  presets: Mapping[str, Any],
  *,
  prog: str,
  description: str = "",
  default_preset: str,
  preset_field: str | None = None,
  grid: bool = False,
  launch: bool = False,
) -> tuple[Any, ...]:
  """Parses ``argv`` into ``(config, workdir or None, overwrite)``.

  The config is ``presets[--preset]`` (or, with ``preset_field``, the preset
  named by that field's flag, e.g. ``--dataset=mnist``; else
  ``default_preset``) with every given field flag applied on top.

  Args:
    argv: the arguments without the program name (``None``: ``sys.argv``).
    config_cls: the frozen config dataclass.
    presets: preset name -> config.
    prog: program name for ``--help`` and errors.
    description: text for ``--help``.
    default_preset: the preset used when none is named.
    preset_field: a field whose value picks the preset when ``--preset`` is
      absent and the value is a preset name.
    grid: return the list of configs of every combination of the comma lists
      given to grid fields (one config without lists) instead of one
      config; without it a comma list is a usage error.
    launch: return ``(configs_or_config, Launch)`` instead.

  Returns:
    The config (a list with ``grid``), the ``--workdir`` value and the
    ``--overwrite`` switch; or ``(config, Launch)`` with ``launch``.

  Raises:
    SystemExit: status 2 after one error line (bad flag), 0 after ``--help``.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  preset = _preset_name(argv, presets, default_preset, preset_field)
  parser = _Parser(prog=prog, description=description)
  grid_names = members.grid_fields(config_cls)
  parser.grid_flags = tuple(f"--{n.replace('_', '-')}" for n in grid_names)
  named_by = ""
  if preset_field:
    named_by = f"; without it, --{preset_field.replace('_', '-')} when that "
    named_by += "names one"
  parser.add_argument(
    "--preset",
    choices=sorted(presets),
    default=preset,
    metavar="NAME",
    help=f"base config, one of: {', '.join(sorted(presets))}{named_by}",
  )
  parser.add_group(presets[preset])
  parser.add_group(Launch)
  config, launch_flags, _ = parser.parse_groups(argv)
  lists = {
    n: getattr(config, n)
    for n in grid_names
    if isinstance(getattr(config, n), tuple)
  }
  if not grid and any(len(v) > 1 for v in lists.values()):
    parser.error(f"{prog} trains one run; comma lists are not accepted here.")
  # parse_groups checked every value, those of the comma lists included.
  configs = members.expand_grid(config, lists)
  result = configs if grid else configs[0]
  if launch:
    return result, launch_flags
  return result, launch_flags.workdir, launch_flags.overwrite
