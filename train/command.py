"""The trainers' command line: flags, launch, the error handler, the report.

``--preset=NAME`` picks a base config whose fields the flags replace; grid
fields also take comma lists (``--seeds=0,1,2 --loss=tc,ad``), which train
every combination. :class:`Launch` holds the flags outside a run's config.
:func:`main` is the one handler of an entry point: a user error is one line
with exit status 2 (``--debug`` or ``VAE_ATTN_DEBUG=1``: the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
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

_log = logging.getLogger("train")


@dataclasses.dataclass(frozen=True)
class Launch(configs_lib.Debug):
  """Where the run goes and how the processes start (not part of a config)."""

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
  report: bool = configs_lib.field(True, "write report/ (figures) at the end")
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
  """Parses ``argv`` (``None``: ``sys.argv``) into ``(configs, launch)``.

  The base is ``presets[--preset]``, else the preset named by the
  ``preset_field`` flag (``--dataset=mnist``), else ``default_preset``; comma
  lists of grid fields give one config per combination.

  Raises:
    SystemExit: status 2 after one error line, 0 after ``--help``.
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
  """Writes every member's ``report/`` (process 0; ``train.report.write``)
  with ``report_args(config, state) -> {"model", "variables", "layer"}``;
  returns the paths of the ``report.md`` files."""
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
  """The end-of-run summary: where things are, the last logged scores
  (``score_names``: logged name -> the name a reader knows), ``Next:`` lines."""
  lines = ["", "Done."]
  for d in workdirs:
    lines.append(f"  run:         {d}")
    report = d / "report" / "report.md"
    if report.is_file():
      lines.append(f"  report:      {report} (figures beside it)")
    lines.append(f"  checkpoints: {d / runs.CKPT_DIR}")
    lines.append(
      f"  logs:        {d / writers.JSONL_NAME}, "
      f"{d / writers.TENSORBOARD_DIR} (pip install -e '.[tensorboard]'; "
      f"tensorboard --logdir {d})"
    )
    last = {}
    with contextlib.suppress(FileNotFoundError):
      for row in writers.read_scalars(d):
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
  """Parses flags, starts the runtime and trains; returns the exit status:
  0 done, 1 non-finite loss, 2 a user error (one line on stderr), ``128 +
  signal`` interrupted (the checkpoint was saved)."""
  configs, launch = parse_flags(
    argv,
    config_cls,
    presets,
    prog=prog,
    description=description,
    default_preset=default_preset,
    preset_field=preset_field,
  )
  debug = errors.debug_requested(launch.debug)
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
      train_fn(
        config, str(workdir), overwrite=launch.overwrite, report=launch.report
      )
  except loop.TrainingInterrupted as e:
    _log.warning("%s", e)
    return 128 + e.signum
  except KeyboardInterrupt as e:  # A second signal, or one before training.
    if debug:
      raise
    print(
      f"{str(e) or 'Interrupted before training started.'} The checkpoints"
      f" in {workdir} are kept. Run the same command again to start or resume.",
      file=sys.stderr,
    )
    return 130
  except (loop.NonFiniteLossError, *errors.USER_ERRORS) as e:
    if debug:
      raise
    print(errors.error_line(e), file=sys.stderr)
    return 1 if isinstance(e, loop.NonFiniteLossError) else 2
  if distributed.is_main_process():
    dirs = grid.member_dirs(workdir.absolute(), configs)
    print(summary(dirs, score_names or {}, next_commands(configs, workdir)))
  return 0
