"""What the evaluation entry points share: run, report errors, print."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from vae_attn.data import base


def run_report(
  evaluate: Callable[[argparse.Namespace], dict], args: argparse.Namespace
) -> int:
  """Runs ``evaluate(args)`` and prints the ``report.md`` it wrote.

  A missing run, bad option or data problem prints ``error: ...`` (the
  message says what to fix) and returns exit status 2 instead of a
  traceback.

  Returns:
    The process exit status.
  """
  try:
    results = evaluate(args)
  except (FileNotFoundError, ValueError, base.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  with open(os.path.join(results["out"], "report.md")) as f:
    print(f.read())
  return 0
