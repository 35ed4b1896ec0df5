"""The one logging setup of the entry points (``train.*``, ``eval.*``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping


class _StderrHandler(logging.StreamHandler):
  """Writes to the ``sys.stderr`` of the moment (a test may replace it)."""

  def emit(self, record: logging.LogRecord) -> None:
    self.stream = sys.stderr  # Not setStream: it flushes the old stream.
    super().emit(record)


def setup(
  line_format: str,
  *,
  date_format: str | None = None,
  levels: Mapping[str, int],
) -> None:
  """Sends every log record to stderr as one ``line_format`` line (replacing
  absl's root handler) and sets the level of each logger in ``levels``
  (``""``: the root)."""
  handler = _StderrHandler()
  handler.setFormatter(logging.Formatter(line_format, date_format))
  logging.basicConfig(handlers=[handler], force=True)
  for name, level in levels.items():
    logging.getLogger(name).setLevel(level)
