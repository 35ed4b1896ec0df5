"""The trainers' command line: flags, launch, the error handler, the report.

``--preset=NAME`` picks a base config; every config field is a flag
(:mod:`workflow.configs`, simple_parsing) whose value replaces the preset's;
only exact flag names (and documented aliases such as ``--seeds``) are
accepted. Fields made with ``configs.grid_field`` also take comma lists
(``--seeds=0,1,2 --loss=tc,ad --gamma=10,40``): the trainer then trains
every combination as one grid. :class:`Launch` holds the flags that are not
part of a run's config: ``--workdir``, ``--overwrite``, ``--debug`` and the
launch of several processes.

:func:`main` is the one handler of an entry point: a user error (bad flag
value, contradictory choices, missing data, a workdir in use, a full disk...)
is printed as one line naming the problem and the fix, with exit status 2;
``--debug`` or ``VAE_ATTN_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from train import distributed, loop
from workflow import configs as configs_lib
from workflow import errors, grid, logs, runs, writers
from workflow.errors import USER_ERRORS, debug_requested, error_line

_log = logging.getLogger("train")


@dataclasses.dataclass(frozen=True)
class Launch:
  """Where the run goes and how the processes start (not part of a config).

  Attributes:
    workdir: the run directory (default: one named after the config).
    overwrite: delete the workdir's run first (checkpoints, logs, the
      evaluations' results and the report).
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
    False,
    "delete the workdir's run (checkpoints, logs, evaluations, report) and "
    "start afresh",
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
) -> tuple[list[Any], Launch]:
  """Parses ``argv`` into ``(configs, launch)``.

  The config is ``presets[--preset]`` (or, with ``preset_field``, the preset
  named by that field's flag, e.g. ``--dataset=mnist``; else
  ``default_preset``) with every given field flag applied on top; comma
  lists of grid fields give one config per combination
  (``workflow.grid.expand``), else the list holds one config.

  Args:
    argv: the arguments without the program name (``None``: ``sys.argv``).
    config_cls: the frozen config dataclass.
    presets: preset name -> config.
    prog: program name for ``--help`` and errors.
    description: text for ``--help``.
    default_preset: the preset used when none is named.
    preset_field: a field whose value picks the preset when ``--preset`` is
      absent and the value is a preset name.

  Raises:
    SystemExit: status 2 after one error line (a bad flag or value, or
      contradictory choices), 0 after ``--help``.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  preset = _preset_name(argv, presets, default_preset, preset_field)
  parser = _Parser(prog=prog, description=description)
  grid_names = grid.grid_fields(config_cls)
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
  config, launch, _ = parser.parse_groups(argv)
  lists = {
    n: getattr(config, n)
    for n in grid_names
    if isinstance(getattr(config, n), tuple)
  }
  # parse_groups checked every value, those of the comma lists included.
  return grid.expand(config, lists), launch


def write_reports(
  workdir: str | pathlib.Path,
  configs: Sequence[Any],
  states: Any,
  images,
  report_args: Callable[[Any, Any], dict],
) -> list[pathlib.Path]:
  """Writes every run's ``report/`` (process 0; ``train.report.write``).

  Args:
    workdir: the run folder (of the grid, for several configs).
    configs: the run's config, or the grid's.
    states: the final state (a list of them for a grid).
    images: ``float32 [N, H, W, C]`` inputs whose attention maps are drawn.
    report_args: ``fn(config, state) -> {"model", "variables", "layer"}``.

  Returns:
    The paths of the ``report.md`` files.
  """
  if not distributed.is_main_process():
    return []
  from train import report  # Deferred: matplotlib and the figures.

  states = states if isinstance(states, list) else [states]
  dirs = grid.member_dirs(pathlib.Path(workdir).absolute(), configs)
  return [
    report.write(d, images, step=int(s.step), **report_args(c, s))
    for d, c, s in zip(dirs, configs, states, strict=True)
  ]


def summary(
  workdirs: Sequence[pathlib.Path],
  score_names: Mapping[str, str],
  next_commands: Sequence[str],
) -> str:
  """The end-of-run summary: where things are, the scores, what to run next.

  Args:
    workdirs: the run folders (one per grid member).
    score_names: logged names (``eval/factor_vae_eval_accuracy``) to the
      names a reader knows ("FactorVAE score").
    next_commands: the commands to run next, one ``Next:`` line each.
  """
  lines = ["", "Done."]
  for d in workdirs:
    lines.append(f"  run:         {d}")
    report = d / "report" / "report.md"
    if report.is_file():
      lines.append(f"  report:      {report} (figures beside it)")
    lines.append(f"  checkpoints: {d / runs.CKPT_DIR}")
    lines.append(
      f"  logs:        {d / writers.JSONL_NAME}, "
      f"{d / writers.TENSORBOARD_DIR} (pip install tensorboard; tensorboard "
      f"--logdir {d})"
    )
    try:
      rows = writers.read_scalars(d)
    except FileNotFoundError:
      rows = []
    last = {}
    for row in rows:
      last.update(row)
    for key, name in score_names.items():
      if key in last:
        lines.append(f"  {name}: {last[key]:.4g}")
  lines.extend(f"Next: {c}" for c in next_commands)
  return "\n".join(lines)


def main(
  argv: Sequence[str] | None,
  config_cls: type,
  presets: Mapping[str, Any],
  train_fn: Callable[..., Any],
  *,
  prog: str,
  description: str,
  default_preset: str,
  default_workdir: Callable[[Sequence[Any]], str],
  next_commands: Callable[[Sequence[Any], str], Sequence[str]],
  preset_field: str | None = None,
  score_names: Mapping[str, str] | None = None,
) -> int:
  """Parses flags, starts the runtime and trains; returns the exit status.

  ``next_commands(configs, workdir)`` gives the summary's ``Next:`` lines.

  Statuses: 0 done, 1 non-finite loss, 2 a user error (one line on stderr),
  ``128 + signal`` interrupted (the checkpoint was saved).
  """
  configs, launch = parse_flags(
    argv,
    config_cls,
    presets,
    prog=prog,
    description=description,
    default_preset=default_preset,
    preset_field=preset_field,
  )
  debug = debug_requested(launch.debug)
  # INFO lines with a time stamp; third-party loggers at WARNING.
  logs.setup(
    "%(asctime)s %(levelname)s %(message)s",
    levels={
      "": logging.INFO,
      "absl": logging.WARNING,
      "orbax": logging.WARNING,
      "jax._src": logging.WARNING,
    },
  )
  workdir = pathlib.Path(launch.workdir or default_workdir(configs))
  try:
    with errors.debug_mode(debug):
      distributed.initialize_distributed(
        launch.coordinator_address, launch.num_processes, launch.process_id
      )
      _log.info("workdir: %s", workdir.absolute())
      config = configs if len(configs) > 1 else configs[0]
      train_fn(config, str(workdir), overwrite=launch.overwrite)
  except loop.TrainingInterrupted as e:
    _log.warning("%s", e)
    return 128 + e.signum
  except (loop.NonFiniteLossError, *USER_ERRORS) as e:
    if debug:
      raise
    print(error_line(e), file=sys.stderr)
    return 1 if isinstance(e, loop.NonFiniteLossError) else 2
  if distributed.is_main_process():
    dirs = grid.member_dirs(workdir.absolute(), configs)
    print(summary(dirs, score_names or {}, next_commands(configs, workdir)))
  return 0
