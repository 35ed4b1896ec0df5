"""Where the log records of an entry point (``train.*``, ``eval.*``) go.

:func:`setup` is the one logging configuration of the commands: each calls
it once, in its ``main``, with its line format and the loggers it shows.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping


class _StderrHandler(logging.StreamHandler):
  """Writes each record to the ``sys.stderr`` of the moment (a notebook or a
  test may replace it after logging was set up)."""

  def emit(self, record: logging.LogRecord) -> None:
    self.stream = sys.stderr  # Not setStream: it flushes the old stream.
    super().emit(record)


def setup(
  line_format: str,
  *,
  date_format: str | None = None,
  levels: Mapping[str, int],
) -> None:
  """Sends every log record to stderr, one line each in ``line_format``.

  Replaces the root handler that absl installs on import (``INFO:name:``
  prefixes), then sets the level of each logger named in ``levels`` (``""``:
  the root logger; the others keep theirs, WARNING by default).

  Args:
    line_format: a ``logging.Formatter`` format (``%``-style).
    date_format: the ``strftime`` format of ``%(asctime)s`` (default:
      logging's ``2025-01-31 12:00:00,123``).
    levels: logger name -> level.
  """
  handler = _StderrHandler()
  handler.setFormatter(logging.Formatter(line_format, date_format))
  logging.basicConfig(handlers=[handler], force=True)
  for name, level in levels.items():
    logging.getLogger(name).setLevel(level)
