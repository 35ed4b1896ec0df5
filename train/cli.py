"""The trainers' shared ``main``: flags, launch, logging, errors, summary.

Entry points (not library code) decide process-wide things: logging, the
distributed runtime. A user error (bad flag value, missing data, a workdir
in use, a full disk...) is printed as one line naming the problem and the
fix, with exit status 2; ``--debug`` or ``VAE_ATTN_DEBUG=1`` shows the
traceback instead.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from train import common, distributed, flags
from workflow import runs, writers
from workflow.errors import USER_ERRORS, debug_requested, error_line

_log = logging.getLogger("train")


def setup_logging() -> None:
  """INFO lines with a time stamp; third-party loggers at WARNING."""
  logging.basicConfig(
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(message)s",
    force=True,
  )
  for noisy in ("absl", "orbax", "jax._src"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def summary(
  workdirs: Sequence[pathlib.Path],
  score_names: Mapping[str, str],
  next_command: str,
  reports: Sequence[pathlib.Path] = (),
) -> str:
  """The end-of-run summary: where things are, the scores, what to run next.

  Args:
    workdirs: the run directories (one per grid member).
    score_names: logged names (``eval/factor_vae_eval_accuracy``) to the
      names a reader knows ("FactorVAE score").
    next_command: a command with ``{workdir}`` for the next step.
    reports: each run's closing report, if any.
  """
  lines = ["", "Done."]
  for k, d in enumerate(workdirs):
    lines.append(f"  run:         {d}")
    if k < len(reports):
      lines.append(f"  report:      {reports[k]} (figures beside it)")
    lines.append(f"  checkpoints: {d / runs.CKPT_DIR}")
    lines.append(
      f"  logs:        {d / writers.JSONL_NAME}, "
      f"{d / writers.TENSORBOARD_DIR} (tensorboard --logdir {d})"
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
  lines.append(f"Next: {next_command.format(workdir=workdirs[0])}")
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
  preset_field: str | None = None,
  score_names: Mapping[str, str] | None = None,
  next_command: str | Callable[[Sequence[Any]], str] = "",
  report_fn: Callable[[pathlib.Path], pathlib.Path] | None = None,
) -> int:
  """Parses flags, starts the runtime and trains; returns the exit status.

  ``report_fn(run_dir) -> report path`` writes each run's closing report
  (process 0); ``next_command`` (a text with ``{workdir}``, or a function of
  the configs giving one) is the summary's last line.

  Statuses: 0 done, 1 non-finite loss, 2 a user error (one line on stderr),
  ``128 + signal`` interrupted (the checkpoint was saved).
  """
  configs, launch = flags.parse_flags(
    argv,
    config_cls,
    presets,
    prog=prog,
    description=description,
    default_preset=default_preset,
    preset_field=preset_field,
    grid=True,
    launch=True,
  )
  debug = debug_requested(launch.debug)
  setup_logging()
  try:
    distributed.initialize_distributed(
      launch.coordinator_address, launch.num_processes, launch.process_id
    )
    from train import loop  # After the runtime starts: it imports jax code.

    workdir = pathlib.Path(launch.workdir or default_workdir(configs))
    _log.info("workdir: %s", workdir.absolute())
    config = configs if len(configs) > 1 else configs[0]
    train_fn(config, str(workdir), overwrite=launch.overwrite)
  except common.TrainingInterrupted as e:
    _log.warning("%s", e)
    return 128 + e.signum
  except common.NonFiniteLossError as e:
    if debug:
      raise
    print(error_line(e), file=sys.stderr)
    return 1
  except USER_ERRORS as e:
    if debug:
      raise
    print(error_line(e), file=sys.stderr)
    return 2
  if distributed.is_main_process():
    dirs = loop.member_dirs(workdir.absolute(), configs)
    reports = [report_fn(d) for d in dirs] if report_fn is not None else []
    if callable(next_command):
      next_command = next_command(configs)
    print(summary(dirs, score_names or {}, next_command, reports))
  return 0
