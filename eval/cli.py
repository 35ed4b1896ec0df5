"""What the evaluation entry points share: flags, errors, progress, output.

Every ``python -m eval.<name>`` describes its options as a frozen config
dataclass (``workflow.configs``), parsed by :func:`parse` (``--help`` gives
every flag's help and default; a bad flag is one line and exit status 2;
``--debug`` is always there), and runs through :func:`run_main` or
:func:`run_report`, which turn a user error (``workflow.errors``)
into one line ``error: ...`` naming the fix, with exit status 2. Progress
goes to stderr: :func:`stage` lines for every step that can take more than
a few seconds, and :func:`progress` bars over batches on a terminal.
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
  """The training run an evaluation reads: the first fields of its config.

  Attributes:
    workdir: the run directory (``workflow.runs``).
    step: the checkpoint step (``None``: the newest good one).
  """

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


def parse(
  argv: Sequence[str] | None, config_cls: type, *, prog: str, description: str
) -> tuple[Any, bool]:
  """Parses ``argv`` into ``(config, debug)``: an entry point's config
  dataclass and ``--debug`` (:func:`workflow.configs.parse`).

  Raises:
    SystemExit: status 2 after one error line (a bad flag or a value the
      config's ``__post_init__`` refuses), 0 after ``--help``.
  """
  config, debug = configs.parse(
    argv, config_cls, configs.Debug, prog=prog, description=description
  )
  return config, debug.debug


def _write_hint(error: BaseException, config: Any) -> str:
  """Names ``--out`` when a write inside the workdir was refused."""
  if not isinstance(error, OSError) or error.errno not in _WRITE_ERRNOS:
    return ""
  workdir = getattr(config, "workdir", None)
  filename = error.filename
  if not workdir or not filename:
    return ""
  inside = os.path.abspath(os.fspath(filename)).startswith(
    os.path.abspath(workdir) + os.sep
  )
  if not inside or "--out" in str(error):
    return ""
  return (
    f" (the run folder {workdir} cannot be written: pass "
    "--out=<a writable folder> for the results)"
  )


def run_main(
  main_fn: Callable[[Any], int], config: Any, *, debug: bool = False
) -> int:
  """Runs ``main_fn(config)``; a user error (``workflow.errors``) becomes
  one line ``error: ...`` on stderr and exit status 2, or its traceback
  with ``debug`` (``--debug``) or ``VAE_ATTN_DEBUG=1``."""
  try:
    with errors.debug_mode(debug):
      return main_fn(config)
  except errors.USER_ERRORS as e:
    if errors.debug_requested(debug):
      raise
    hint = _write_hint(e, config)
    print(errors.error_line(e) + hint, file=sys.stderr)
    return 2


def run_report(
  evaluate: Callable[[Any], dict], config: Any, *, debug: bool = False
) -> int:
  """Runs ``evaluate(config)`` and prints the ``report.md`` it wrote;
  errors as :func:`run_main`. Returns the exit status."""

  def evaluate_and_print(config: Any) -> int:
    results = evaluate(config)
    with open(os.path.join(results["out"], "report.md")) as f:
      print(f.read())
    return 0

  return run_main(evaluate_and_print, config, debug=debug)


def stage(message: str) -> None:
  """Prints one progress line to stderr: ``[HH:MM:SS] message``."""
  print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress(
  iterable: Iterable, *, total: int, desc: str, every: float = 10.0
) -> Iterable:
  """``iterable`` with progress on stderr.

  On a terminal a tqdm bar; otherwise (a log file, a notebook's captured
  stream) a :func:`stage` line ``desc: i/total`` at most every ``every``
  seconds and after the last item.
  """
  if sys.stderr.isatty():
    return tqdm.tqdm(
      iterable,
      total=total,
      desc=desc,
      unit="batch",
      leave=False,
      dynamic_ncols=True,
    )
  return _progress_lines(iterable, total, desc, every)


def _progress_lines(iterable, total, desc, every):
  last = time.perf_counter()
  for i, item in enumerate(iterable):
    yield item
    now = time.perf_counter()
    if now - last >= every or i + 1 == total:
      stage(f"{desc}: {i + 1}/{total}")
      last = now


def _cannot_write(
  target: str, cause: OSError, fix: str, reason: str | None = None
) -> OSError:
  """``cannot write <target> (<reason>); pass <fix>``, with ``cause``'s
  errno (the message has no ``[Errno n]`` prefix); ``reason`` defaults to
  the cause's."""
  reason = reason or cause.strerror or str(cause)
  error = OSError(f"cannot write {target} ({reason}); pass {fix}")
  error.errno = cause.errno
  return error


def _writable_folder(folder: str, *, target: str, fix: str) -> None:
  """Creates ``folder`` and checks that a file can be written into it.

  Raises:
    OSError: from :func:`_cannot_write`.
  """
  try:
    os.makedirs(folder, exist_ok=True)
    probe = os.path.join(folder, f".write-test-{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    # makedirs says only "File exists" when the folder's name is a file.
    in_the_way = isinstance(e, FileExistsError) and os.path.isfile(folder)
    reason = f"{folder} is a file, not a folder" if in_the_way else None
    raise _cannot_write(target, e, fix, reason) from e


def make_out_dir(out: str, *, flag: str = "--out") -> str:
  """Creates the output folder ``out`` and checks that it can be written.

  Raises:
    OSError: the folder cannot be created or written; the message names
      ``flag`` as the fix.
  """
  _writable_folder(
    out, target=f"the results to {out}", fix=f"{flag}=<a writable folder>"
  )
  return out


def make_out_file(path: str, *, flag: str) -> str:
  """Checks, before any work, that the output file ``path`` can be written.

  Creates its parent folder (as :func:`make_out_dir` does for a folder)
  and, when the file exists, opens it for appending (which changes
  nothing) to check it can be replaced; the file itself is written later.

  Raises:
    IsADirectoryError: ``path`` is a folder.
    OSError: the file or its folder cannot be created or written; the
      message names ``flag`` as the fix.
  """
  fix = f"{flag}=<a writable path>"
  if os.path.isdir(path):
    raise IsADirectoryError(
      f"{flag}={path} is a folder; pass {flag}={path.rstrip(os.sep)}"
      f"{os.sep}<file name>"
    )
  _writable_folder(os.path.dirname(os.path.abspath(path)), target=path, fix=fix)
  if os.path.exists(path):
    try:
      with open(path, "a"):
        pass
    except OSError as e:
      raise _cannot_write(path, e, fix) from e
  return path


def software_lines(software: dict[str, Any]) -> list[str]:
  """Markdown lines naming the software a result was produced with
  (``workflow.runs.software()``)."""
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
  write_report: Callable[[str, dict], Any],
  start: float,
) -> dict[str, Any]:
  """Writes ``results.json`` and ``report.md`` to ``out``; returns results.

  ``elapsed_time`` (seconds since the ``time.perf_counter()`` value
  ``start``) and ``software`` (``workflow.runs.software()``: Python and
  package versions, backend, device, git commit) go into both; ``out`` is
  added to the returned dict (for :func:`run_report`), not to the file.
  """
  results["elapsed_time"] = time.perf_counter() - start
  results["software"] = runs.software()
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  path = os.path.join(out, "report.md")
  write_report(path, results)
  with open(path, "a") as f:
    f.write("\n".join(software_lines(results["software"])))
  return {**results, "out": out}
