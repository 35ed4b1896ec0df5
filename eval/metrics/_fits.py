"""Independent estimator fits of a metric, over threads (private).

``map_fits`` is re-exported by :mod:`eval.metrics.sampling`; the metric
modules fit one estimator per factor through it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import joblib
import sklearn.exceptions
import threadpoolctl

from eval.metrics import _checks


def map_fits(
  fn: Callable[..., Any],
  items: Iterable[tuple[Any, ...]],
  n_jobs: int,
  *,
  what: str,
) -> list[Any]:
  """``[fn(*item) for item in items]``, over ``n_jobs`` threads.

  For the independent estimator fits of a metric (one per factor). sklearn
  fits trees and linear SVMs in compiled code that releases the GIL, so
  threads use the cores without the start-up, import and copying cost of
  worker processes. BLAS and OpenMP pools are limited to one thread during
  the fits, so the jobs, not the estimators, use the cores: their threads
  spin while they wait, and on a loaded 2-core machine a logistic
  regression of the BetaVAE metric took 33.7 s with sklearn's default 2
  threads and 0.4 s with 1, a 40-class HistGradientBoostingClassifier 139 s
  of CPU time and 7 s. Results come back in the order of ``items`` and do
  not depend on ``n_jobs``.

  sklearn's ``ConvergenceWarning`` s of all calls (one per estimator that
  stopped at its iteration limit) are summed up in one
  ``ConvergenceWarning`` that names ``what``; other warnings pass through.

  Args:
    fn: the fit, e.g. one factor's classifier.
    items: the argument tuples.
    n_jobs: threads; 1 runs the calls one after the other.
    what: names the fits in the warning, e.g. ``"SAP: LinearSVC fits"``.

  Returns:
    The values of ``fn``, in the order of ``items``.

  Raises:
    ValueError: for ``n_jobs`` below 1.
  """
  _checks.check_positive(n_jobs=n_jobs)
  items = list(items)
  convergence = sklearn.exceptions.ConvergenceWarning
  # Both context managers change process-wide state, for every thread;
  # they are entered and left here, on the calling thread.
  with (
    threadpoolctl.threadpool_limits(limits=1),
    warnings.catch_warnings(record=True) as caught,
  ):
    warnings.simplefilter("always", convergence)
    if n_jobs == 1 or len(items) < 2:
      values = [fn(*item) for item in items]
    else:
      parallel = joblib.Parallel(
        n_jobs=min(n_jobs, len(items)), prefer="threads"
      )
      values = parallel(joblib.delayed(fn)(*item) for item in items)
  notes = []
  for w in caught:
    if issubclass(w.category, convergence):
      notes.append(str(w.message).splitlines()[0])
    else:
      warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
  if notes:
    warnings.warn(
      f"{what}: {len(notes)} estimator fit(s) stopped at their iteration "
      "limit (sklearn's ConvergenceWarning); the scores use them as they "
      f"are. First: {notes[0]}",
      convergence,
      stacklevel=2,
    )
  return values
