"""What the evaluation entry points share: flags, errors, progress, output.

Each ``python -m eval.<name>`` parses a frozen config dataclass with
:func:`parse` and runs through :func:`run_main`, which turns a user error
into one line ``error: ...`` and exit status 2 (``--debug``: the
traceback). Progress goes to stderr.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import tqdm

from vae_attn import attention
from workflow import configs, errors, runs

# OS errors that mean "this folder cannot be written".
_WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


@dataclasses.dataclass(frozen=True)
class SavedRun:
  """The training run an evaluation reads: the first fields of its config."""

  workdir: str = configs.field(configs.REQUIRED, "training run (its --workdir)")
  step: int | None = configs.field(
    None, "checkpoint step (default: the newest good one)"
  )


def positive_field() -> str:
  """``--positive``, the rectifier of the maps (explain, localization)."""
  return configs.field(
    "relu",
    "rectifier of the maps: relu (Grad-CAM) or abs (official code)",
    attention.POSITIVES,
  )


def check_trainer(spec, workdir: str, trainer: str, why: str) -> None:
  """Raises ValueError ``<workdir> is a train.<t> run (<data> data)<why>``
  for a run (``workflow.runs.RunSpec``) of another trainer than
  ``trainer``."""
  if spec is not None and spec.trainer != trainer:
    raise ValueError(
      f"{workdir} is a train.{spec.trainer} run ({spec.data} data){why}"
    )


def parse(
  argv: Sequence[str] | None, config_cls: type, *, prog: str, description: str
) -> tuple[Any, bool]:
  """``(config, debug)`` from ``argv`` (:func:`workflow.configs.parse`);
  a bad flag exits with status 2 after one error line."""
  config, debug = configs.parse(
    argv, config_cls, configs.Debug, prog=prog, description=description
  )
  return config, debug.debug


def _write_hint(error: BaseException, config: Any) -> str:
  """Names ``--out`` when a write inside a workdir was refused."""
  workdirs = getattr(config, "workdir", None) or ()
  filename = getattr(error, "filename", None)
  if not (isinstance(error, OSError) and error.errno in _WRITE_ERRNOS):
    return ""
  if not filename or "--out" in str(error):
    return ""
  path = os.path.abspath(os.fspath(filename))
  for workdir in [workdirs] if isinstance(workdirs, str) else workdirs:
    if path.startswith(os.path.abspath(workdir) + os.sep):
      return (
        f" (the run folder {workdir} cannot be written: pass "
        "--out=<a writable folder> for the results)"
      )
  return ""


def run_main(
  main_fn: Callable[[Any], int], config: Any, *, debug: bool = False
) -> int:
  """Runs ``main_fn(config)``; a user error (``workflow.errors``) becomes
  one line on stderr and exit status 2, or its traceback with ``debug`` or
  ``VAE_ATTN_DEBUG=1``."""
  try:
    with errors.debug_mode(debug):
      return main_fn(config)
  except errors.USER_ERRORS as e:
    if errors.debug_requested(debug):
      raise
    hint = _write_hint(e, config)
    print(errors.error_line(e) + hint, file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    if errors.debug_requested(debug):
      raise
    print("Interrupted; run the same command again.", file=sys.stderr)
    return 130


def print_report(out: str) -> None:
  """Prints ``<out>/report.md``."""
  with open(os.path.join(out, "report.md")) as f:
    print(f.read())


def stage(message: str) -> None:
  """Prints one progress line to stderr: ``[HH:MM:SS] message``."""
  print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress(
  iterable: Iterable, *, total: int, desc: str, every: float = 10.0
) -> Iterable:
  """``iterable`` with a tqdm bar on a terminal, else a :func:`stage` line
  ``desc: i/total`` at most every ``every`` seconds and after the last."""
  if sys.stderr.isatty():
    bar = dict(unit="batch", leave=False, dynamic_ncols=True)
    return tqdm.tqdm(iterable, total=total, desc=desc, **bar)
  return _progress_lines(iterable, total, desc, every)


def _progress_lines(iterable, total, desc, every):
  last = time.perf_counter()
  for i, item in enumerate(iterable):
    yield item
    now = time.perf_counter()
    if now - last >= every or i + 1 == total:
      stage(f"{desc}: {i + 1}/{total}")
      last = now


def _cannot_write(target: str, cause: OSError, fix: str, folder: str = ""):
  """``cannot write <target> (<reason>); pass <fix>``, errno of ``cause``."""
  if isinstance(cause, FileExistsError) and os.path.isfile(folder):
    reason = f"{folder} is a file, not a folder"  # makedirs: "File exists".
  else:
    reason = cause.strerror or str(cause)
  error = OSError(f"cannot write {target} ({reason}); pass {fix}")
  error.errno = cause.errno
  return error


def _writable_folder(folder: str, target: str, fix: str) -> None:
  """Creates ``folder`` and writes a probe file into it."""
  try:
    os.makedirs(folder, exist_ok=True)
    probe = os.path.join(folder, f".write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise _cannot_write(target, e, fix, folder) from e


def make_out_dir(out: str, *, flag: str = "--out") -> str:
  """Creates the output folder ``out``, checked writable (else an OSError
  that names ``flag``); returns it."""
  _writable_folder(out, f"the results to {out}", f"{flag}=<a writable folder>")
  return out


def make_out_file(path: str, *, flag: str) -> str:
  """Checks, before any work, that the output file ``path`` can be written
  (its folder is made; an existing file is opened for appending).

  Raises:
    IsADirectoryError: ``path`` is a folder.
    OSError: it cannot be written; the message names ``flag``.
  """
  fix = f"{flag}=<a writable path>"
  if os.path.isdir(path):
    raise IsADirectoryError(
      f"{flag}={path} is a folder; pass {flag}={path.rstrip(os.sep)}"
      f"{os.sep}<file name>"
    )
  _writable_folder(os.path.dirname(os.path.abspath(path)), path, fix)
  if os.path.exists(path):
    try:
      open(path, "a").close()  # Changes nothing.
    except OSError as e:
      raise _cannot_write(path, e, fix) from e
  return path


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]):
  """The lines of a markdown table."""
  lines = [head, *rows]
  lines = ["| " + " | ".join(cells) + " |" for cells in lines]
  return [lines[0], "|" + "---|" * len(head), *lines[1:]]


def software_lines(software: dict[str, Any]) -> list[str]:
  """Markdown lines naming ``workflow.runs.software()``."""
  names = ", ".join(
    f"{k} {v}"
    for k, v in software.items()
    if k not in ("backend", "device_kind", "device_count", "git_modified")
    and v is not None
  )
  device = (
    f"{software.get('backend')} ({software.get('device_count')} x "
    f"{software.get('device_kind')})"
  )
  modified = " (with local changes)" if software.get("git_modified") else ""
  return ["", "## Software", "", f"{names}; device {device}{modified}.", ""]


def save_results(
  out: str,
  results: dict[str, Any],
  report_lines: Callable[[dict], list[str]],
  start: float,
) -> dict[str, Any]:
  """Writes ``results.json`` and ``report.md`` (``report_lines(results)``
  and the software) to ``out``, with ``elapsed_time`` since ``start`` and
  ``workflow.runs.software()``; returns the results with ``out``."""
  results["elapsed_time"] = time.perf_counter() - start
  results["software"] = runs.software()
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(report_lines(results)))
    f.write("\n".join(software_lines(results["software"])))
  return {**results, "out": out}
