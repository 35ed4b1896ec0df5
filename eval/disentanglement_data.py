"""The dSprites ground-truth data of python -m eval.disentanglement.

``load_data`` picks the source named by the flags, else by the run's spec:
the procedural renderer (no file), the npz of the original release, or the
prepared tfds build, whose shuffled records ``TfdsGroundTruth`` indexes by
factor combination.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import tqdm

from eval import restore
from eval.metrics import sampling
from vae_attn.data import base, dsprites

DATA = ("procedural", "npz", "tfds")

_LOG = logging.getLogger(__name__)


class TfdsGroundTruth:
  """dSprites' ground-truth interface over a source in any record order.

  The tfds build stores dSprites shuffled; this reads every record's
  ``factors`` once, maps each factor combination to its record and then
  serves ``sample_observations_from_factors`` by random access.

  Args:
    source: records ``{"image", "factors"}`` (``dsprites.load_tfds``).
    num_values: the factor grid (default dSprites').
    progress: a tqdm bar while the factors are read (``None``: on when
      stderr is a terminal).

  Raises:
    DataError: when a factor combination is missing or repeated.
  """

  def __init__(
    self,
    source: Any,
    num_values: Sequence[int] = dsprites.FACTORS_NUM_VALUES,
    progress: bool | None = False,
  ):
    self._source = source
    self._num_values = tuple(int(n) for n in num_values)
    records = tqdm.tqdm(
      range(len(source)),
      desc="reading factors",
      disable=None if progress is None else not progress,
    )
    factors = np.stack([np.asarray(source[i]["factors"]) for i in records])
    index = dsprites.factors_to_index(factors, self._num_values)
    total = int(np.prod(self._num_values))
    counts = np.bincount(index, minlength=total)
    if len(source) != total or np.any(counts != 1):
      raise base.DataError(
        f"{source!r} has {len(source)} records for {total} factor "
        f"combinations ({int(np.sum(counts == 0))} missing, "
        f"{int(np.sum(counts > 1))} repeated); prepare the full dSprites "
        "train split."
      )
    self._position = np.empty(total, np.int64)
    self._position[index] = np.arange(total)

  num_factors = property(lambda self: len(self._num_values))
  factors_num_values = property(lambda self: list(self._num_values))
  factor_names = dsprites.FACTOR_NAMES

  def sample_factors(self, num: int, random_state) -> np.ndarray:
    """Uniform factor classes, int64 ``[num, num_factors]``."""
    return np.stack(
      [sampling.integers(random_state, n, num) for n in self._num_values],
      axis=1,
    ).astype(np.int64)

  def sample_observations_from_factors(
    self, factors: np.ndarray, random_state
  ) -> np.ndarray:
    """The images of ``factors`` ``[N, 5]``: float32 ``[N, 64, 64, 1]``."""
    del random_state  # One image per combination.
    index = dsprites.factors_to_index(factors, self._num_values)
    images = [self._source[int(i)]["image"] for i in self._position[index]]
    return np.stack(images).astype(np.float32)

  def sample_observations(self, num: int, random_state) -> np.ndarray:
    """``num`` uniformly drawn images."""
    factors = self.sample_factors(num, random_state)
    return self.sample_observations_from_factors(factors, random_state)


def load_data(config: Any, run: restore.Run):
  """The dSprites ground-truth data: flags, else the run's spec."""
  spec = run.spec
  kind = config.data or (spec.data if spec else "") or "procedural"
  path = config.data_dir or (spec.data_dir if spec else "") or ""
  if kind not in DATA:
    raise ValueError(
      f"--data={kind} has no ground-truth factor interface; pass "
      "--data=procedural (no file), --data=npz --data-dir=<dsprites npz> or "
      "--data=tfds [--data-dir=<tfds data_dir>]."
    )
  if kind == "npz":
    if not path:
      raise ValueError("--data=npz needs --data-dir=<dsprites .npz file>.")
    return dsprites.load_npz(path), kind
  if kind == "tfds":
    _LOG.info("reading the factors of every tfds dSprites record")
    source = dsprites.load_tfds("train", data_dir=path or None)
    return TfdsGroundTruth(source, progress=None), kind
  return dsprites.procedural(), kind
