"""What every entry point (``train.*``, ``eval.*``) treats as a user error.

A user error (a bad path or value, bad data, no usable checkpoint, a workdir
in use, a full disk) reaches the terminal as one line, ``error: <what is
wrong and how to fix it>``, exit status 2; anything else is a bug and keeps
its traceback, as do user errors with ``--debug`` or ``VAE_ATTN_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator

DEBUG_ENV = "VAE_ATTN_DEBUG"


class UserError(Exception):
  """A failure the user can fix that is neither a ValueError nor an OSError."""


# Errors a user can fix (vae_attn.data.DataError is a ValueError).
USER_ERRORS = (ValueError, OSError, UserError)


def debug_requested(flag: bool = False) -> bool:
  """``flag`` (``--debug``) or ``VAE_ATTN_DEBUG`` set to anything but
  ``""``/``"0"``."""
  return bool(flag) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


@contextlib.contextmanager
def debug_mode(flag: bool) -> Iterator[None]:
  """Sets ``VAE_ATTN_DEBUG=1`` while an entry point runs with ``--debug``, so
  that code far from the command line sees it (``runs.quiet_orbax``)."""
  if not flag or os.environ.get(DEBUG_ENV):
    yield
    return
  os.environ[DEBUG_ENV] = "1"
  try:
    yield
  finally:
    os.environ.pop(DEBUG_ENV, None)


def error_line(error: BaseException) -> str:
  """``error: <message>`` on one line, without an ``[Errno N]`` prefix; a
  full disk met by any write (a log, a report) says so and what to do."""
  if (
    isinstance(error, OSError)
    and error.errno in (errno.ENOSPC, errno.EDQUOT)
    and error.strerror == os.strerror(error.errno)  # Not one of ours.
  ):
    where = f" (writing {error.filename})" if error.filename else ""
    return (
      f"error: The disk is full{where}. Free some space and run the same "
      "command again (a trainer resumes from its last complete checkpoint)."
    )
  text = " ".join(str(error).split()) or type(error).__name__
  text = re.sub(r"^\[Errno \d+\] ", "", text)
  return f"error: {text}"
