"""The disentanglement metrics as one suite, and the shared code table.

* ``evaluate_suite`` runs every metric (``factor_vae`` in two conventions,
  ``beta_vae``, ``mig``, ``dci``, ``sap``; contract in
  ``eval.metrics.sampling``), yielding each one's scores, sample sizes and
  wall time.
* ``tabulate_all``: for data whose observations are a deterministic function
  of the factors (dSprites), encodes every factor combination once; the
  metrics then look codes up (737,280 images instead of the suite's 3
  million draws).

References:
  Locatello et al., "Challenging Common Assumptions in the Unsupervised
  Learning of Disentangled Representations", ICML 2019
  (google-research/disentanglement_lib).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tqdm

from eval.metrics import beta_vae, dci, factor_vae, mig, sampling, sap

__all__ = [
  "MetricResult",
  "evaluate_suite",
  "suite_sample_sizes",
  "tabulate",
]

_LOG = logging.getLogger(__name__)

# Sample sizes of ``quick=True`` (tests and CPU smoke runs).
_QUICK_FACTOR_VAE = dict(
  num_per_vote=20, num_train=200, num_eval=100, num_variance_estimate=1000
)
_QUICK_SIZES = {
  "factor_vae/disentanglement_lib": _QUICK_FACTOR_VAE,
  "factor_vae/paper": _QUICK_FACTOR_VAE,
  "beta_vae": dict(num_per_point=20, num_train=200, num_eval=100),
  "mig": dict(num_train=1000),
  "dci": dict(num_train=300, num_test=150),
  "sap": dict(num_train=500, num_test=250),
}

_TITLES = {
  "factor_vae/disentanglement_lib": "FactorVAE score, disentanglement_lib "
  "convention",
  "factor_vae/paper": "FactorVAE score, paper convention",
  "beta_vae": "BetaVAE score",
  "mig": "MIG",
  "dci": "DCI",
  "sap": "SAP",
}


def _defaults(fn: Callable[..., Any], *names: str) -> dict[str, int]:
  parameters = inspect.signature(fn).parameters
  return {name: parameters[name].default for name in names}


def suite_sample_sizes(quick: bool = False) -> dict[str, dict[str, int]]:
  """``{metric name: {compute_* argument: size}}`` of the suite: the
  published sizes (``FACTOR_VAE_CONVENTIONS``, the ``compute_*`` defaults),
  or with ``quick`` small ones for smoke runs.

  Examples:
    >>> sizes = suite_sample_sizes()
    >>> list(sizes)  # doctest: +NORMALIZE_WHITESPACE
    ['factor_vae/disentanglement_lib', 'factor_vae/paper', 'beta_vae',
     'mig', 'dci', 'sap']
    >>> sizes["dci"]
    {'num_train': 10000, 'num_test': 5000}
  """
  if quick:
    return {name: dict(sizes) for name, sizes in _QUICK_SIZES.items()}
  sizes = {
    f"factor_vae/{name}": {
      k: v for k, v in dataclasses.asdict(conv).items() if k.startswith("num_")
    }
    for name, conv in factor_vae.FACTOR_VAE_CONVENTIONS.items()
  }
  sizes["beta_vae"] = _defaults(
    beta_vae.compute_beta_vae, "num_per_point", "num_train", "num_eval"
  )
  sizes["mig"] = _defaults(mig.compute_mig, "num_train")
  sizes["dci"] = _defaults(dci.compute_dci, "num_train", "num_test")
  sizes["sap"] = _defaults(sap.compute_sap, "num_train", "num_test")
  return sizes


def _num_images(name: str, sizes: Mapping[str, int]) -> int:
  """Observations a metric encodes at ``sizes`` (for its progress bar)."""
  if name.startswith("factor_vae/"):
    votes = sizes["num_train"] + sizes["num_eval"]
    return sizes["num_variance_estimate"] + votes * sizes["num_per_vote"]
  if name == "beta_vae":
    points = sizes["num_train"] + sizes["num_eval"]
    return 2 * points * sizes["num_per_point"]
  return sizes["num_train"] + sizes.get("num_test", 0)


@dataclasses.dataclass(frozen=True)
class MetricResult:
  """One metric of the suite: its name (``"dci"``), title, flat scores
  (``dci/completeness``...), sample sizes and wall time."""

  name: str
  title: str
  scores: dict[str, float]
  sample_sizes: dict[str, int]
  seconds: float


def _run_metric(
  name: str,
  data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  sizes: Mapping[str, int],
  options: Mapping[str, Any],
) -> dict[str, float]:
  """Calls metric ``name``; returns its scores under the flat keys."""
  args = (data, representation_function, random_state)
  common = {"batch_size": options["batch_size"]}
  if name.startswith("factor_vae/"):
    convention = name.split("/", 1)[1]
    kl = options["kl_function"] if convention == "paper" else None
    scores = factor_vae.compute_factor_vae(
      *args, convention=convention, kl_function=kl, **sizes, **common
    )
    return {f"{name}/{key}": value for key, value in scores.items()}
  if name == "beta_vae":
    scores = beta_vae.compute_beta_vae(*args, **sizes, **common)
    return {f"beta_vae/{key}": value for key, value in scores.items()}
  if name == "mig":
    return {"mig": mig.compute_mig(*args, **sizes, **common)["discrete_mig"]}
  common["n_jobs"] = options["n_jobs"]
  if name == "dci":
    scores = dci.compute_dci(
      *args, importance=options["dci_importance"], **sizes, **common
    )
    return {f"dci/{key}": value for key, value in scores.items()}
  return {"sap": sap.compute_sap(*args, **sizes, **common)["sap_score"]}


def evaluate_suite(
  ground_truth_data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  *,
  kl_function: sampling.RepresentationFn | None = None,
  quick: bool = False,
  dci_importance: str = "gbt",
  n_jobs: int = 1,
  batch_size: int = sampling.DEFAULT_BATCH_SIZE,
  progress: bool | None = False,
  metrics: Sequence[str] | None = None,
) -> Iterator[MetricResult]:
  """Runs every disentanglement metric, yielding each as it finishes.

  In this order (and so these draws from ``random_state``): FactorVAE in the
  disentanglement_lib then the paper convention, BetaVAE, MIG, DCI, SAP;
  ``metrics`` (``suite_sample_sizes`` keys) runs a subset in that order.
  Each metric logs its start (with its sizes) and end at INFO.
  ``kl_function`` (observations -> per-dimension KL ``[N, D]``) drives the
  paper convention's pruning; ``progress`` shows a bar of the images each
  metric encodes (``None``: on a terminal).

  Raises:
    ValueError: an unknown metric name, or as the ``compute_*`` functions.
  """
  data = sampling.check_inputs(
    ground_truth_data, random_state, n_jobs=n_jobs, batch_size=batch_size
  )
  if dci_importance not in dci.IMPORTANCE_MODELS:
    raise ValueError(
      f"dci_importance must be one of {dci.IMPORTANCE_MODELS}, got "
      f"{dci_importance!r}."
    )
  options = {
    "kl_function": kl_function,
    "dci_importance": dci_importance,
    "n_jobs": n_jobs,
    "batch_size": batch_size,
  }
  all_sizes = suite_sample_sizes(quick)
  if metrics is not None:
    unknown = sorted(set(metrics) - set(all_sizes))
    if unknown:
      raise ValueError(
        f"Unknown metrics {unknown}; choose from {list(all_sizes)}."
      )
    all_sizes = {n: sizes for n, sizes in all_sizes.items() if n in metrics}
  for k, (name, sizes) in enumerate(all_sizes.items(), start=1):
    title = _TITLES[name]
    sizes_text = ", ".join(f"{key}={value}" for key, value in sizes.items())
    _LOG.info("metric %d/%d: %s (%s)", k, len(all_sizes), title, sizes_text)
    start = time.perf_counter()
    with tqdm.tqdm(
      total=_num_images(name, sizes),
      desc=f"{name}: images",
      unit="img",
      unit_scale=True,
      disable=None if progress is None else not progress,
      leave=False,
    ) as bar:

      @functools.wraps(representation_function)
      def counted(observations, bar=bar):
        bar.update(len(observations))
        return representation_function(observations)

      scores = _run_metric(name, data, counted, random_state, sizes, options)
    seconds = time.perf_counter() - start
    _LOG.info(
      "metric %d/%d: %s done in %.1f s", k, len(all_sizes), title, seconds
    )
    yield MetricResult(name, title, scores, dict(sizes), seconds)


# The code table.


@dataclasses.dataclass(frozen=True)
class _TabulatedData:
  """Ground-truth data whose observations are flat factor indices ``[N, 1]``."""

  base: Any
  num_factors: int
  factors_num_values: tuple[int, ...]
  observation_shape: tuple[int, ...] = (1,)

  @property
  def factor_names(self) -> Any:
    return getattr(self.base, "factor_names", None)

  def sample_factors(
    self, num: int, random_state: sampling.RandomState
  ) -> np.ndarray:
    return self.base.sample_factors(num, random_state)

  def sample_observations_from_factors(
    self, factors: np.ndarray, random_state: sampling.RandomState
  ) -> np.ndarray:
    del random_state  # Deterministic: the observation is the index.
    index = np.ravel_multi_index(np.asarray(factors).T, self.factors_num_values)
    return index[:, None]


def tabulate(
  ground_truth_data: Any,
  representation_function: sampling.RepresentationFn,
  random_state: sampling.RandomState,
  **kwargs,
) -> tuple[Any, sampling.RepresentationFn]:
  """:func:`tabulate_all` of one function: ``(data, lookup)``."""
  fns = [representation_function]
  data, (lookup,) = tabulate_all(ground_truth_data, fns, random_state, **kwargs)
  return data, lookup


def tabulate_all(
  ground_truth_data: Any,
  representation_functions: Sequence[sampling.RepresentationFn],
  random_state: sampling.RandomState,
  *,
  batch_size: int = sampling.DEFAULT_BATCH_SIZE,
  progress: bool | None = False,
) -> tuple[Any, list[sampling.RepresentationFn]]:
  """Renders every factor combination once and encodes it with each function.

  Valid when each combination has one observation, rendered
  deterministically (dSprites). Each ``(tabulated_data, lookup)`` replaces
  ``(ground_truth_data, representation_function)`` in every metric: its
  observations are the flat factor indices ``[N, 1]`` (row-major over
  ``factors_num_values``), its lookup indexes the code table (in the
  function's dtype). ``progress``: a bar (``None``: on a terminal).

  Returns:
    ``(tabulated_data, [lookup per representation function])``.

  Raises:
    ValueError: malformed inputs, no function, or more than 2**26
      combinations.
  """
  sampling.check_inputs(
    ground_truth_data, random_state, drop=False, batch_size=batch_size
  )
  if not representation_functions:
    raise ValueError("tabulate_all needs at least one representation function.")
  sizes = tuple(int(v) for v in ground_truth_data.factors_num_values)
  total = math.prod(sizes)
  if total > 2**26:
    raise ValueError(
      f"{total} factor combinations are too many to tabulate; call the "
      "metrics on the original data instead."
    )
  # Every combination in row-major order (int32: smaller than the table).
  factors = np.stack(
    np.unravel_index(np.arange(total, dtype=np.int32), sizes), axis=1
  ).astype(np.int32)
  num = len(representation_functions)
  _LOG.info(
    "encoding all %d factor combinations once (%d model(s))", total, num
  )
  start = time.perf_counter()
  with tqdm.tqdm(
    total=total,
    desc="encoding",
    unit="img",
    unit_scale=True,
    disable=None if progress is None else not progress,
  ) as bar:

    def counted(observations: np.ndarray) -> np.ndarray:
      bar.update(len(observations))  # Once per rendered chunk.
      return np.zeros((len(observations), 0), np.float32)

    *tables, _ = sampling.represent(
      ground_truth_data,
      [*representation_functions, counted],
      factors,
      random_state,
      batch_size,
      dtype=None,  # A float32 table stays float32: half the memory.
    )

  seconds = time.perf_counter() - start
  _LOG.info("encoded %d images in %.1f s", total, seconds)
  data = _TabulatedData(ground_truth_data, len(sizes), sizes)
  return data, [functools.partial(_lookup, t) for t in tables]


def _lookup(table: np.ndarray, observations: np.ndarray) -> np.ndarray:
  return table[np.asarray(observations)[:, 0]]
