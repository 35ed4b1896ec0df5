"""Known-answer tests for eval.metrics.disentanglement on dummy factor data."""

import doctest

import numpy as np
import pytest

from eval import metrics
from eval.metrics import testing

DATA = testing.IdentityData()  # 5 factors with 4..8 values: chance is 0.2.
IDENTITY = testing.identity_representation
CONSTANT = testing.constant_representation
NOISE = testing.NoiseRepresentation(num_codes=5)
MIXED = testing.MixedRepresentation(DATA.factors_num_values)

SMALL_FACTOR_VAE = dict(
  num_per_vote=20, num_train=300, num_eval=200, num_variance_estimate=1000
)
SMALL_BETA_VAE = dict(num_per_point=20, num_train=300, num_eval=200)


def _rs(seed=0):
  return np.random.RandomState(seed)


@pytest.mark.parametrize("convention", ["disentanglement_lib", "paper"])
def test_factor_vae_known_answers(convention):
  def score(rep):
    return metrics.compute_factor_vae(
      DATA, rep, _rs(), convention=convention, **SMALL_FACTOR_VAE
    )

  identity = score(IDENTITY)
  assert identity["eval_accuracy"] == 1.0
  assert identity["train_accuracy"] == 1.0
  assert identity["num_active_dims"] == 5
  # Constant codes: every dimension pruned; 0 as in disentanglement_lib.
  constant = score(CONSTANT)
  assert constant == {
    "train_accuracy": 0.0,
    "eval_accuracy": 0.0,
    "num_active_dims": 0.0,
  }
  # Noise codes: votes are uniform, so evaluation is near chance (0.2).
  assert score(NOISE)["eval_accuracy"] < 0.32
  # A 45-degree rotation of factor pairs entangles them.
  assert score(MIXED)["eval_accuracy"] < 0.8


def test_factor_vae_published_sizes_by_convention():
  dl = metrics.FACTOR_VAE_CONVENTIONS["disentanglement_lib"]
  assert (dl.num_per_vote, dl.num_train, dl.num_eval) == (64, 10_000, 5_000)
  assert (dl.num_variance_estimate, dl.prune, dl.threshold) == (
    10_000,
    "std",
    0.05,
  )
  paper = metrics.FACTOR_VAE_CONVENTIONS["paper"]
  assert (paper.num_per_vote, paper.num_train, paper.prune) == (100, 800, "kl")


def _with_collapsed_dims(observations):
  """Identity codes plus two near-constant dims (std 0.01)."""
  codes = IDENTITY(observations)
  rng = np.random.default_rng(int(codes.sum()) % 1000)
  noise = 0.01 * rng.standard_normal((codes.shape[0], 2))
  return np.concatenate([codes, noise], axis=1)


def _kl(observations):
  """Per-dimension KL: 1 nat for the factor dims, 0.001 for the collapsed."""
  kl = np.full((observations.shape[0], 7), 1.0)
  kl[:, 5:] = 0.001
  return kl


def test_factor_vae_pruning_rules():
  def active(**kwargs):
    scores = metrics.compute_factor_vae(
      DATA, _with_collapsed_dims, _rs(), **SMALL_FACTOR_VAE, **kwargs
    )
    return scores["num_active_dims"]

  # disentanglement_lib: global std 0.01 < 0.05 -> pruned.
  assert active() == 5
  assert active(prune_threshold=0.001) == 7
  # Paper: mean KL 0.001 < 0.05 nats -> pruned; no KL -> nothing pruned.
  assert active(convention="paper", kl_function=_kl) == 5
  assert active(convention="paper") == 7
  # Explicit active dims override both rules, as a mask or as indices.
  assert active(active_dims=np.array([0, 2, 6])) == 3
  assert active(convention="paper", active_dims=np.arange(7) < 4) == 4


def test_independent_of_batch_size_and_deterministic():
  kwargs = dict(convention="disentanglement_lib", **SMALL_FACTOR_VAE)
  big = metrics.compute_factor_vae(DATA, MIXED, _rs(3), **kwargs)
  small = metrics.compute_factor_vae(
    DATA, MIXED, _rs(3), batch_size=7, **kwargs
  )
  assert big == small
  other_seed = metrics.compute_factor_vae(DATA, MIXED, _rs(4), **kwargs)
  assert other_seed != big
  beta_big = metrics.compute_beta_vae(DATA, MIXED, _rs(3), **SMALL_BETA_VAE)
  beta_small = metrics.compute_beta_vae(
    DATA, MIXED, _rs(3), batch_size=7, **SMALL_BETA_VAE
  )
  assert beta_big == beta_small


def _reference_factor_vae(
  data,
  rep,
  random_state,
  num_per_vote,
  num_train,
  num_eval,
  num_variance_estimate,
):
  """disentanglement_lib's per-vote loop, drawing in our random order."""
  factors = data.sample_factors(num_variance_estimate, random_state)
  codes = rep(data.sample_observations_from_factors(factors, random_state))
  global_var = np.var(codes, axis=0, ddof=1)
  active = np.flatnonzero(np.sqrt(global_var) >= 0.05)

  def votes(num_votes):
    factor_index = random_state.randint(data.num_factors, size=num_votes)
    factors = data.sample_factors(num_votes * num_per_vote, random_state)
    factors = factors.reshape(num_votes, num_per_vote, -1)
    matrix = np.zeros((data.num_factors, global_var.size), np.int64)
    for v, k in enumerate(factor_index):
      vote = factors[v].copy()
      vote[:, k] = vote[0, k]
      z = rep(data.sample_observations_from_factors(vote, random_state))
      local_var = np.var(z, axis=0, ddof=1)
      matrix[k, active[np.argmin(local_var[active] / global_var[active])]] += 1
    return matrix

  train = votes(num_train)
  classifier = np.argmax(train, axis=0)
  columns = np.arange(global_var.size)
  evaluation = votes(num_eval)
  return {
    "train_accuracy": train[classifier, columns].sum() / train.sum(),
    "eval_accuracy": evaluation[classifier, columns].sum() / evaluation.sum(),
    "num_active_dims": float(active.size),
  }


def test_factor_vae_matches_a_per_vote_loop():
  def rep(observations):
    """Mixed codes, a noisy copy and a collapsed dim; row by row."""
    mixed = MIXED(observations)
    # Pseudo-noise that is a fixed function of each row, not of the batch.
    noise = np.sin(1e3 * mixed[:, :2] @ np.array([[1.0, 2.0], [3.0, 5.0]]))
    noisy = mixed[:, :2] + noise
    return np.concatenate([mixed, noisy, 0.01 * mixed[:, :1]], axis=1)

  got = metrics.compute_factor_vae(DATA, rep, _rs(7), **SMALL_FACTOR_VAE)
  expected = _reference_factor_vae(DATA, rep, _rs(7), **SMALL_FACTOR_VAE)
  assert got == pytest.approx(expected, abs=1e-12)
  assert got["num_active_dims"] == 7


def test_generator_random_state_is_accepted():
  scores = metrics.compute_factor_vae(
    DATA, IDENTITY, np.random.default_rng(0), **SMALL_FACTOR_VAE
  )
  assert scores["eval_accuracy"] == 1.0
  scores = metrics.compute_beta_vae(
    DATA, IDENTITY, np.random.default_rng(0), **SMALL_BETA_VAE
  )
  assert scores["eval_accuracy"] > 0.95


def test_tabulate_gives_the_same_scores():
  # 4*5*6*7*8 = 6720 combinations, encoded once.
  calls = []

  def mixed32(observations):  # An encoder's float32 codes.
    return MIXED(observations).astype(np.float32)

  def counting(observations):
    calls.append(observations.shape[0])
    return mixed32(observations)

  data, lookup = metrics.tabulate(DATA, counting, _rs(), batch_size=1000)
  assert sum(calls) == 6720 and max(calls) == 1000
  assert lookup(np.zeros((1, 1), np.int64)).dtype == np.float32
  direct = metrics.compute_factor_vae(DATA, mixed32, _rs(5), **SMALL_FACTOR_VAE)
  tabulated = metrics.compute_factor_vae(
    data, lookup, _rs(5), **SMALL_FACTOR_VAE
  )
  assert direct == tabulated
  assert sum(calls) == 6720  # The metric itself only looked codes up.


def test_beta_vae_known_answers():
  def score(rep):
    return metrics.compute_beta_vae(DATA, rep, _rs(), **SMALL_BETA_VAE)[
      "eval_accuracy"
    ]

  assert score(IDENTITY) > 0.95
  assert score(CONSTANT) < 0.3
  assert score(NOISE) < 0.35
  assert score(MIXED) < score(IDENTITY) - 0.2


def test_mig_known_answers():
  def score(rep):
    return metrics.compute_mig(DATA, rep, _rs(), num_train=2000)["discrete_mig"]

  # Factors have <= 20 values, so each code bin is one factor value.
  assert score(IDENTITY) > 0.95
  assert score(CONSTANT) == pytest.approx(0.0, abs=1e-12)
  assert score(NOISE) < 0.05
  assert score(MIXED) < 0.5


@pytest.mark.parametrize("importance", ["gbt", "random_forest"])
def test_dci_known_answers(importance):
  def score(rep):
    return metrics.compute_dci(
      DATA, rep, _rs(), num_train=200, num_test=100, importance=importance
    )

  identity = score(IDENTITY)
  assert identity["disentanglement"] > 0.9
  assert identity["completeness"] > 0.9
  assert identity["informativeness_test"] > 0.9
  mixed = score(MIXED)
  assert mixed["disentanglement"] < identity["disentanglement"] - 0.2
  assert mixed["completeness"] < identity["completeness"] - 0.2
  constant = score(CONSTANT)
  assert constant["disentanglement"] < 0.05
  assert constant["informativeness_test"] < 0.35


def test_sap_known_answers():
  def score(rep, data=DATA, **kwargs):
    return metrics.compute_sap(
      data, rep, _rs(), num_train=1000, num_test=500, **kwargs
    )["sap_score"]

  # Continuous: squared correlations, as disentanglement_lib's own test.
  assert score(IDENTITY, continuous_factors=True) > 0.95
  assert score(CONSTANT, continuous_factors=True) == 0.0
  assert score(NOISE, continuous_factors=True) < 0.05
  # Factors 0-3 are mixed in pairs (gap 0), factor 4 is untouched (gap 1).
  assert score(MIXED, continuous_factors=True) < 0.3
  # Discrete (the default): a 1-D linear SVM separates binary factors from
  # their own code (accuracy 1) and is at chance (1/2) on the others, so
  # the ideal code scores 1 - 1/2.
  binary = testing.IdentityData((2, 2, 2, 2))
  assert score(IDENTITY, binary) == pytest.approx(0.5, abs=0.05)
  assert score(CONSTANT, binary) < 0.05
  # Rotated pairs: both codes of a pair predict each factor equally well.
  assert score(testing.MixedRepresentation((2, 2, 2, 2)), binary) < 0.1


def test_compute_all_quick_keys():
  results = metrics.compute_all(DATA, IDENTITY, _rs(), quick=True)
  expected = {
    f"factor_vae/{c}/{k}"
    for c in ("disentanglement_lib", "paper")
    for k in ("train_accuracy", "eval_accuracy", "num_active_dims")
  } | {
    "beta_vae/train_accuracy",
    "beta_vae/eval_accuracy",
    "mig",
    "dci/disentanglement",
    "dci/completeness",
    "dci/informativeness_train",
    "dci/informativeness_test",
    "sap",
  }
  assert set(results) == expected
  assert all(isinstance(v, float) for v in results.values())
  assert results["factor_vae/disentanglement_lib/eval_accuracy"] == 1.0
  assert results["factor_vae/paper/eval_accuracy"] == 1.0
  assert results["mig"] > 0.9


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="Unknown convention"):
    metrics.compute_factor_vae(DATA, IDENTITY, _rs(), convention="kim")
  with pytest.raises(ValueError, match="kl_function is only used"):
    metrics.compute_factor_vae(DATA, IDENTITY, _rs(), kl_function=_kl)
  with pytest.raises(ValueError, match="random_state must be"):
    metrics.compute_mig(DATA, IDENTITY, 0)
  with pytest.raises(ValueError, match="lacks"):
    metrics.compute_sap(object(), IDENTITY, _rs())
  with pytest.raises(ValueError, match=r"\[num_observations, num_codes\]"):
    metrics.compute_mig(DATA, lambda x: x, _rs(), num_train=10)
  with pytest.raises(ValueError, match="active_dims indices"):
    metrics.compute_factor_vae(
      DATA, IDENTITY, _rs(), active_dims=np.array([9]), **SMALL_FACTOR_VAE
    )
  with pytest.raises(ValueError, match="num_per_vote must be"):
    metrics.compute_factor_vae(DATA, IDENTITY, _rs(), num_per_vote=1)
  with pytest.raises(ValueError, match="at least 2 code dimensions"):
    metrics.compute_mig(DATA, lambda x: x[:, 0, 0, :1], _rs(), num_train=50)
  with pytest.raises(ValueError, match="importance"):
    metrics.compute_dci(DATA, IDENTITY, _rs(), importance="lasso")


def test_docstring_examples_run():
  from eval.metrics import disentanglement

  result = doctest.testmod(disentanglement)
  assert result.attempted >= 1 and result.failed == 0


class _NoisyData(testing.IdentityData):
  """Rendering draws from the random state, like a stochastic renderer."""

  def sample_observations_from_factors(self, factors, random_state):
    clean = super().sample_observations_from_factors(factors, random_state)
    return clean + 0.01 * random_state.random_sample(clean.shape)


def test_rendering_draws_the_random_state_in_chunk_order():
  # Chunks are rendered on a worker thread, one ahead of the codes; the
  # draws must come out as in a serial loop, whatever the chunk size.
  data = _NoisyData()
  kwargs = dict(convention="disentanglement_lib", **SMALL_FACTOR_VAE)
  one_chunk = metrics.compute_factor_vae(data, MIXED, _rs(2), **kwargs)
  many = metrics.compute_factor_vae(data, MIXED, _rs(2), batch_size=7, **kwargs)
  assert one_chunk == many
  beta_one = metrics.compute_beta_vae(data, MIXED, _rs(2), **SMALL_BETA_VAE)
  beta_many = metrics.compute_beta_vae(
    data, MIXED, _rs(2), batch_size=7, **SMALL_BETA_VAE
  )
  assert beta_one == beta_many
