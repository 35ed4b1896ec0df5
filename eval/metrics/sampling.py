"""What the disentanglement metrics share: checks, sampling and fitting.

Every metric (``factor_vae``, ``beta_vae``, ``mig``, ``dci``, ``sap``) has
google-research/disentanglement_lib's contract:

* ``ground_truth_data``: ``num_factors``, ``factors_num_values``,
  ``sample_factors(num, random_state) -> int [num, num_factors]`` and
  ``sample_observations_from_factors(factors, random_state) -> [num, H, W,
  C]``; optionally ``factor_names`` (used in messages).
* ``representation_function(observations) -> [num, D]``, a NumPy function
  called on chunks of at most ``batch_size`` observations.
* ``random_state``: a ``np.random.RandomState`` (or ``Generator``).

Single-valued factors are dropped first, with one ``ConstantFactorWarning``.
The factors of all votes are drawn in one call (disentanglement_lib draws
one mini-batch per vote): the scores equal its in distribution, not bit for
bit.

References:
  disentanglement_lib: evaluation/metrics/utils.py,
  data/ground_truth/ground_truth_data.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import joblib
import numpy as np
import sklearn.exceptions
import threadpoolctl

RandomState = np.random.RandomState | np.random.Generator
RepresentationFn = Callable[[np.ndarray], np.ndarray]

DEFAULT_BATCH_SIZE = 4096

_INTERFACE = (
  "num_factors",
  "factors_num_values",
  "sample_factors",
  "sample_observations_from_factors",
)


class ConstantFactorWarning(UserWarning):
  """A single-valued factor was dropped from a disentanglement metric."""


# Checks.


def check_positive(minimum: int = 1, **counts: int) -> None:
  """Raises ValueError for a count below ``minimum``, naming it."""
  for name, value in counts.items():
    if int(value) < minimum:
      raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")


def check_inputs(
  ground_truth_data: Any, random_state: Any, *, drop: bool = True, **counts
) -> Any:
  """Checks the interface, the random state and the counts (>= 1); returns
  the data without its single-valued factors (with ``drop``).

  Raises:
    ValueError: naming what is missing or wrong.
  """
  missing = [n for n in _INTERFACE if not hasattr(ground_truth_data, n)]
  if missing:
    raise ValueError(
      f"ground_truth_data lacks {missing}; it must provide num_factors, "
      "factors_num_values, sample_factors(num, random_state) and "
      "sample_observations_from_factors(factors, random_state)."
    )
  if not isinstance(random_state, np.random.RandomState | np.random.Generator):
    raise ValueError(
      "random_state must be a np.random.RandomState or np.random.Generator, "
      f"got {type(random_state).__name__}; pass e.g. "
      "np.random.RandomState(0)."
    )
  check_positive(**counts)
  return drop_constant_factors(ground_truth_data) if drop else None


def factor_label(ground_truth_data: Any, index: int) -> str:
  """``"factor 2 ('orientation')"`` (or ``"factor 2"``), indexed as in the
  data the user gave, also through a view without single-valued factors."""
  if isinstance(ground_truth_data, _WithoutFactors):
    return factor_label(ground_truth_data.base, ground_truth_data.keep[index])
  names = getattr(ground_truth_data, "factor_names", None)
  if names is not None and index < len(names):
    return f"factor {index} ({names[index]!r})"
  return f"factor {index}"


def check_sample(
  ground_truth_data: Any,
  codes: np.ndarray,
  factors: np.ndarray,
  metric: str,
  sample: str,
  min_codes: int = 1,
) -> None:
  """Raises ValueError for fewer than ``min_codes`` code dimensions, or
  naming a factor that takes one value in the sample ``factors``."""
  if codes.shape[1] < min_codes:
    raise ValueError(
      f"{metric} needs at least {min_codes} code dimensions, got "
      f"{codes.shape[1]}."
    )
  flat = np.flatnonzero(np.ptp(factors, axis=0) == 0)
  if flat.size:
    labels = ", ".join(factor_label(ground_truth_data, int(i)) for i in flat)
    raise ValueError(
      f"{labels} takes one value in all {factors.shape[0]} {metric} {sample} "
      "(num_train). Increase the sample size, or, if the factor is constant "
      "by design, declare it with factors_num_values 1 so that the metrics "
      "drop it."
    )


# Constant factors.


@dataclasses.dataclass(frozen=True)
class _WithoutFactors:
  """A view of ground-truth data without some (single-valued) factors:
  sampling drops their columns, rendering sets them to 0 (their only
  class)."""

  base: Any
  keep: tuple[int, ...]

  @property
  def num_factors(self) -> int:
    return len(self.keep)

  @property
  def factors_num_values(self) -> list[int]:
    values = list(self.base.factors_num_values)
    return [int(values[i]) for i in self.keep]

  @property
  def factor_names(self) -> tuple[str, ...] | None:
    names = getattr(self.base, "factor_names", None)
    return None if names is None else tuple(names[i] for i in self.keep)

  def sample_factors(self, num: int, random_state: RandomState) -> np.ndarray:
    factors = sample_factors(self.base, num, random_state)
    return factors[:, list(self.keep)]

  def sample_observations_from_factors(
    self, factors: np.ndarray, random_state: RandomState
  ) -> np.ndarray:
    factors = np.asarray(factors)
    full = np.zeros((factors.shape[0], self.base.num_factors), factors.dtype)
    full[:, list(self.keep)] = factors
    return self.base.sample_observations_from_factors(full, random_state)


def drop_constant_factors(ground_truth_data: Any) -> Any:
  """The data, or a view of it without its single-valued factors, with a
  ``ConstantFactorWarning`` naming them (they carry no information: as
  disentanglement_lib's dSprites leaves out its colour).

  Raises:
    ValueError: no factor has two values, or ``factors_num_values`` does
      not have ``num_factors`` entries.
  """
  sizes = [int(v) for v in ground_truth_data.factors_num_values]
  if len(sizes) != ground_truth_data.num_factors:
    raise ValueError(
      f"factors_num_values has {len(sizes)} entries but num_factors is "
      f"{ground_truth_data.num_factors}; give one count per factor."
    )
  constant = [i for i, n in enumerate(sizes) if n < 2]
  if not constant:
    return ground_truth_data
  labels = ", ".join(factor_label(ground_truth_data, i) for i in constant)
  if len(constant) == len(sizes):
    raise ValueError(
      f"Every factor has a single value ({labels}); disentanglement needs "
      "at least one factor with two values or more."
    )
  warnings.warn(
    f"Dropping {labels}: a single value (factors_num_values "
    f"{sizes}) carries no information to disentangle.",
    ConstantFactorWarning,
    stacklevel=4,  # The caller of the metric.
  )
  keep = tuple(i for i, n in enumerate(sizes) if n >= 2)
  return _WithoutFactors(ground_truth_data, keep)


# Sampling.


def integers(random_state: RandomState, high: int, size: int) -> np.ndarray:
  """Uniform ints in ``[0, high)`` from a RandomState or a Generator."""
  if isinstance(random_state, np.random.Generator):
    return random_state.integers(high, size=size)
  return random_state.randint(high, size=size)


def seed_from(random_state: RandomState) -> int:
  """An int seed for sklearn estimators, drawn from ``random_state``."""
  return int(integers(random_state, 2**31 - 1, 1)[0])


def sample_factors(
  ground_truth_data: Any, num: int, random_state: RandomState
) -> np.ndarray:
  """``ground_truth_data.sample_factors``, checked: a writable copy."""
  factors = np.array(ground_truth_data.sample_factors(num, random_state))
  expected = (num, ground_truth_data.num_factors)
  if factors.shape != expected:
    raise ValueError(
      f"sample_factors({num}) returned shape {factors.shape}, expected "
      f"{expected} ([num, num_factors])."
    )
  return factors


def represent(
  ground_truth_data: Any,
  functions: Sequence[RepresentationFn],
  factors: np.ndarray,
  random_state: RandomState,
  batch_size: int,
  dtype: np.dtype | None = np.float64,
) -> list[np.ndarray]:
  """Maps factors to observations to ``[N, D_k]`` outputs of each function.

  Observations are rendered ``batch_size`` at a time on a worker thread,
  one chunk ahead of the functions and in order, so ``random_state`` gives
  the draws of a serial loop. Outputs are cast to ``dtype`` (``None``: the
  function's own).
  """

  def render(start: int) -> np.ndarray:
    return ground_truth_data.sample_observations_from_factors(
      factors[start : start + batch_size], random_state
    )

  chunks: list[list[np.ndarray]] = [[] for _ in functions]
  starts = range(0, factors.shape[0], batch_size)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as renderer:
    pending = renderer.submit(render, 0) if starts else None
    for start in starts:
      observations = pending.result()
      if start + batch_size < factors.shape[0]:
        pending = renderer.submit(render, start + batch_size)
      num = min(batch_size, factors.shape[0] - start)
      for fn, out in zip(functions, chunks, strict=True):
        values = np.asarray(fn(observations))
        if values.ndim != 2 or values.shape[0] != num:
          raise ValueError(
            f"{getattr(fn, '__name__', 'representation_function')} returned "
            f"shape {values.shape} for {num} observations; it must "
            "return [num_observations, num_codes]."
          )
        out.append(values if dtype is None else values.astype(dtype))
  return [np.concatenate(out, axis=0) for out in chunks]


def sample_codes(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  num_points: int,
  random_state: RandomState,
  batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Returns ``(codes [num_points, D], factors [num_points, F])``."""
  factors = sample_factors(ground_truth_data, num_points, random_state)
  fns = [representation_function]
  (codes,) = represent(
    ground_truth_data, fns, factors, random_state, batch_size
  )
  return codes, factors


def sample_train_test_codes(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  random_state: RandomState,
  *,
  metric: str,
  min_codes: int,
  num_train: int,
  num_test: int,
  n_jobs: int | None,
  batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """DCI's and SAP's ``(codes_train, factors_train, codes_test,
  factors_test)``, drawn in disentanglement_lib's order, checked."""
  data = check_inputs(
    ground_truth_data,
    random_state,
    num_train=num_train,
    num_test=num_test,
    n_jobs=n_jobs,
    batch_size=batch_size,
  )
  args = (data, representation_function)
  train = sample_codes(*args, num_train, random_state, batch_size)
  test = sample_codes(*args, num_test, random_state, batch_size)
  check_sample(data, *train, metric, "training points", min_codes)
  return (*train, *test)


def represent_groups(
  ground_truth_data: Any,
  representation_function: RepresentationFn,
  factors: np.ndarray,
  random_state: RandomState,
  batch_size: int,
  reduce: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
  """``reduce(codes [g, M, D])`` over the groups of ``factors [G, M, F]``
  (the votes or points of FactorVAE and BetaVAE), whole groups of about
  ``batch_size`` observations per representation call; concatenated along
  the groups."""
  group_size = factors.shape[1]
  groups_per_call = max(1, batch_size // group_size)
  reduced = []
  for start in range(0, factors.shape[0], groups_per_call):
    group = factors[start : start + groups_per_call]
    (codes,) = represent(
      ground_truth_data,
      [representation_function],
      group.reshape(-1, group.shape[-1]),
      random_state,
      group.shape[0] * group_size,
    )
    reduced.append(reduce(codes.reshape(group.shape[0], group_size, -1)))
  return np.concatenate(reduced, axis=0)


# Fits.


def map_fits(
  fn: Callable[..., Any],
  items: Iterable[tuple[Any, ...]],
  n_jobs: int,
  *,
  what: str,
) -> list[Any]:
  """``[fn(*item) for item in items]`` over ``n_jobs`` threads (the
  per-factor estimator fits of a metric; results do not depend on
  ``n_jobs``).

  sklearn fits release the GIL, so threads use the cores; BLAS and OpenMP
  pools are limited to one thread meanwhile (bench/README.md). sklearn's
  ``ConvergenceWarning`` s are summed up in one that names ``what``.
  """
  check_positive(n_jobs=n_jobs)
  items = list(items)
  convergence = sklearn.exceptions.ConvergenceWarning
  # Both change process-wide state; entered and left on the calling thread.
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
      f"are. For example: {min(notes)}",
      convergence,
      stacklevel=2,
    )
  return values
