r"""FactorVAE and AD-FactorVAE on dSprites (paper section 3.4, docs/paper.md).

  python -m train.factorvae --loss=ad              # the paper's AD-FactorVAE
  python -m train.factorvae --loss=tc              # plain FactorVAE
  python -m train.factorvae --loss=beta --beta=4   # beta-VAE baseline

One jitted step updates the VAE (recon + KL + gamma * TC + lambda * L_AD,
the maps from vae_attn.attention.value_and_attention, differentiated
to second order) and the TC discriminator, with one optax.multi_transform
of two Adams. As in Kim & Mnih (2018) the discriminator sees z of the
batch x against permuted z' of a second, independent batch x2:
each step draws 2 * batch_size images, split in halves.
With --loss=beta the discriminator is still trained, so that the TC
estimate is logged for every objective. With the default random pair, only
the two maps of the drawn pair are computed (random_pair_ad). Data:
the procedural dSprites (no download) by default, --data=npz
--data-dir=dsprites.npz or --data=tfds. The FactorVAE score is
computed at the end (and every --eval-every steps).

The data set lives on the device: the procedural dSprites is rendered inside
the step from uniformly drawn factor classes; the npz and tfds images are
held as bits (377 MB for all 737,280). Comma lists train a grid as one
program, each member in its own run directory under --workdir:

  python -m train.factorvae --loss=tc,ad --seeds=0,1,2   # Table 3 with seeds

The loss choice is a setting of one objective,
recon + beta * KL + gamma * TC + lambda * L_AD (tc: no L_AD; beta: gamma = 0,
no L_AD). Members of one loss share one compiled step (seeds and weights are
traced); each loss has its own, so a tc member never computes L_AD.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import command, loop
from train import data as device_data_lib
from vae_attn import losses, models, ops
from vae_attn.attention import resolve_layers, value_and_attention
from vae_attn.data import dsprites
from workflow import configs, grid, runs

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Config(loop.LoopConfig):
  """FactorVAE / AD-FactorVAE hyperparameters (defaults: the paper's)."""

  # The score's settings only change evaluation: a run resumes with others.
  FREE_ON_RESUME: ClassVar[frozenset[str]] = loop.LoopConfig.FREE_ON_RESUME | {
    "score",
    "score_convention",
    "score_num_train",
    "score_num_eval",
    "score_num_variance",
  }
  num_steps: int = configs.field(
    300_000, "training steps (paper: 3e5)", interval="[1, inf)"
  )
  # Comma lists of these train a grid (--seeds=0,1,2 --loss=tc,ad).
  loss: str = configs.grid_field(
    "ad",
    "ad: AD-FactorVAE, tc: FactorVAE, beta: beta-VAE",
    ("ad", "tc", "beta"),
  )
  gamma: float = configs.grid_field(
    40.0, "weight of the TC term", interval="[0, inf)"
  )
  lambda_ad: float = configs.grid_field(
    1.0, "weight of L_AD (--loss=ad)", interval="[0, inf)"
  )
  beta: float = configs.grid_field(
    1.0, "weight of the KL term (--loss=beta)", interval="[0, inf)"
  )
  layer: str = configs.field("encoder/conv1", "attention layer of L_AD")
  pair_mode: str = configs.field(
    "random", "L_AD latent pairs", losses.PAIR_MODES
  )
  latent_dim: int = configs.field(
    32, "D, latent elements (L_AD needs pairs)", interval="[2, inf)"
  )
  batch_size: int = configs.field(
    64, "global batch (the discriminator gets another)", interval="[1, inf)"
  )
  vae_lr: float = configs.field(
    1e-4, "Adam learning rate of the VAE", interval="(0, inf)"
  )
  vae_b1: float = configs.field(0.9, "Adam beta1 of the VAE", interval="[0, 1)")
  vae_b2: float = configs.field(
    0.999, "Adam beta2 of the VAE", interval="[0, 1)"
  )
  disc_lr: float = configs.field(
    1e-4, "Adam learning rate of the discriminator", interval="(0, inf)"
  )
  disc_b1: float = configs.field(
    0.5, "Adam beta1 of the discriminator", interval="[0, 1)"
  )
  disc_b2: float = configs.field(
    0.9, "Adam beta2 of the discriminator", interval="[0, 1)"
  )
  data: str = configs.field(
    "procedural", "dSprites source", ("procedural", "npz", "tfds")
  )
  data_dir: str = configs.field(
    "", "npz file (--data=npz) or tfds data_dir", alias="--data-path"
  )
  score: bool = configs.field(
    True, "compute the FactorVAE score (end, eval_every)"
  )
  score_convention: str = configs.field(
    "paper",
    "FactorVAE score convention (eval.metrics.FACTOR_VAE_CONVENTIONS)",
    ("paper", "disentanglement_lib"),
  )
  score_num_train: int = configs.field(
    0, "score: training votes (0: the convention's)", interval="[0, inf)"
  )
  score_num_eval: int = configs.field(
    0, "score: evaluation votes (0: the convention's)", interval="[0, inf)"
  )
  score_num_variance: int = configs.field(
    0, "score: variance images (0: the convention's)", interval="[0, inf)"
  )

  def __post_init__(self):
    super().__post_init__()
    if self.data == "npz" and not self.data_dir:
      raise ValueError("--data=npz needs --data-dir=<the dSprites .npz file>.")
    # A weight the objective does not read (train_step: ad reads gamma and
    # lambda_ad, tc gamma, beta beta) is recorded at its default, so runs
    # that train alike have equal configs (a grid trains them once, and
    # eval.aggregate compares them).
    # (A grid's base holds comma lists; expand builds its members.)
    read = {"ad": ("gamma", "lambda_ad"), "tc": ("gamma",), "beta": ("beta",)}
    if not isinstance(self.loss, str):
      return
    weights = set(loop.weight_fields(Config)) - set(read[self.loss])
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in weights and value != f.default:
        _log.warning(
          "--%s=%s has no effect with --loss=%s: recorded as %s.",
          f.name.replace("_", "-"),
          value,
          self.loss,
          f.default,
        )
        object.__setattr__(self, f.name, f.default)


PRESETS = {
  "dsprites": Config(log_every=500, checkpoint_every=10_000),
  # The README's CPU run: minutes on 2 cores, small-sample FactorVAE score.
  "quick": Config(
    num_steps=500,
    log_every=50,
    checkpoint_every=250,
    score_num_train=200,
    score_num_eval=200,
    score_num_variance=2000,
  ),
  "smoke": Config(
    num_steps=4,
    batch_size=8,
    log_every=2,
    checkpoint_every=2,
    score_num_train=10,
    score_num_eval=10,
    score_num_variance=100,
  ),
}


def load_data(config: Config):
  """The dSprites source named by ``config.data``.

  Raises:
    ValueError, OSError: the file or folder is missing or not dSprites.
  """
  if config.data == "npz":
    return dsprites.load_npz(config.data_dir)
  if config.data == "tfds":
    return dsprites.load_tfds("train", data_dir=config.data_dir or None)
  return dsprites.procedural()


def device_data(config: Config, source=None) -> tuple[dict, loop.SampleFn]:
  """The training data on the device: ``(arrays, sample_fn)`` drawing
  ``{"x", "x2"}`` batches (two independent draws).

  The procedural source renders drawn factor classes inside the step; the
  npz and tfds sources are read once and held as bits.
  """
  if config.data == "procedural":
    arrays, draw = device_data_lib.dsprites_rendered()
  else:
    source = load_data(config) if source is None else source
    images = device_data_lib.read_all(source)
    arrays, draw = device_data_lib.uniform_rows(images, binary=True)
  return arrays, device_data_lib.independent_draws(draw, ("x", "x2"))


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """Adam for ``params['vae']`` and Adam for ``params['disc']``, in one."""
  return optax.multi_transform(
    {
      "vae": optax.adam(config.vae_lr, config.vae_b1, config.vae_b2),
      "disc": optax.adam(config.disc_lr, config.disc_b1, config.disc_b2),
    },
    {"vae": "vae", "disc": "disc"},
  )


def make_model(config: Config) -> models.VAE:
  return models.make_model("factorvae", latent_dim=config.latent_dim)


def create_train_state(key: jax.Array, config: Config) -> loop.TrainState:
  """The VAE and discriminator parameters and their optimiser state."""
  model = make_model(config)
  k_vae, k_eps, k_disc = jax.random.split(key, 3)
  x = np.zeros((1, *models.input_shape(model)), np.float32)
  z = np.zeros((1, config.latent_dim), np.float32)
  params = {
    "vae": model.init(k_vae, x, k_eps)["params"],
    "disc": models.Discriminator().init(k_disc, z)["params"],
  }
  return loop.TrainState.create(
    apply_fn=model.apply, params=params, tx=make_optimizer(config)
  )


def train_step(
  state: loop.TrainState,
  batch: loop.Batch,
  key: jax.Array,
  weights: dict[str, jax.Array],
  config: Config,
) -> tuple[loop.TrainState, dict[str, jax.Array]]:
  """One update of the VAE and the discriminator (Kim & Mnih, Alg. 2).

  The VAE minimises ``recon + beta * KL + gamma * TC + lambda_ad * L_AD``:
  ``--loss=ad`` (beta = 1), ``tc`` (beta = 1, no L_AD), ``beta`` (gamma = 0,
  no L_AD; the discriminator is still trained so that TC is logged).

  Args:
    state: ``params = {"vae": ..., "disc": ...}`` and their Adam states.
    batch: ``{"x": float32 [B, 64, 64, 1], "x2": the same}``: two independent
      batches in {0, 1}; ``x2``'s codes, permuted, are the discriminator's
      negatives.
    key: the run's step key (folded with ``state.step`` here).
    weights: the traced ``beta``, ``gamma`` and ``lambda_ad`` of the config
      (members of a grid differ there).
    config: static settings: ``loss`` (L_AD is computed only for ``ad``),
      the layer, pair mode and latent size.

  Returns:
    The new state and the step's scalars: ``loss`` (the VAE objective),
    ``recon`` and ``kl`` (nats per image), ``tc`` (the discriminator's TC
    estimate), ``ad`` (L_AD, eq. 6; ``--loss=ad`` only), ``disc_loss`` and
    ``disc_accuracy``.
  """
  model = make_model(config)
  disc = models.Discriminator()
  encode_fn = functools.partial(model.apply, method=model.encode)
  k_eps, k_eps2, k_ad, k_perm = jax.random.split(
    jax.random.fold_in(key, state.step), 4
  )
  x, x2 = batch["x"], batch["x2"]
  disc_params = state.params["disc"]
  beta = weights["beta"] if config.loss == "beta" else 1.0
  gamma = 0.0 if config.loss == "beta" else weights["gamma"]

  def vae_loss(vae_params):
    variables = {"params": vae_params}
    terms = {}
    if config.loss == "ad" and config.pair_mode == "random":
      # precision=None: the step's own (config.precision, set by the loop).
      (mu, logvar), ad = losses.random_pair_ad(
        encode_fn, config.layer, variables, x, k_ad, precision=None
      )
      terms["ad"] = ad.mean()
    elif config.loss == "ad":
      (mu, logvar), maps = value_and_attention(
        encode_fn, config.layer, precision=None
      )(variables, x)
      terms["ad"] = losses.attention_disentanglement(
        maps.per_latent, k_ad, mode=config.pair_mode
      ).mean()
    else:
      mu, logvar = encode_fn(variables, x)
    z = models.reparameterize(k_eps, mu, logvar)
    logits = model.apply(variables, z, method=model.decode)
    terms["recon"] = losses.bernoulli_nll(logits, x).mean()
    terms["kl"] = losses.gaussian_kl(mu, logvar).mean()
    d_logits = disc.apply({"params": disc_params}, z)
    terms["tc"] = losses.total_correlation(d_logits).mean()
    loss = terms["recon"] + beta * terms["kl"] + gamma * terms["tc"]
    if "ad" in terms:
      loss = loss + weights["lambda_ad"] * terms["ad"]
    return loss, (terms, z)

  # On XLA:CPU, exact fast forms of the convolutions and their derivatives
  # (vae_attn.ops; a no-op on other backends).
  vae_loss = ops.fast_convolutions(vae_loss)
  (loss, (metrics, z)), vae_grads = jax.value_and_grad(vae_loss, has_aux=True)(
    state.params["vae"]
  )
  mu2, logvar2 = ops.fast_convolutions(encode_fn)(
    {"params": state.params["vae"]}, x2
  )
  z2 = models.reparameterize(k_eps2, mu2, logvar2)
  z_perm = losses.permute_dims(k_perm, jax.lax.stop_gradient(z2))
  z_real = jax.lax.stop_gradient(z)

  def disc_loss(params):
    logits = disc.apply({"params": params}, jnp.concatenate([z_real, z_perm]))
    real, perm = logits[: z.shape[0]], logits[z.shape[0] :]
    acc = 0.5 * ((real.argmax(-1) == 0).mean() + (perm.argmax(-1) == 1).mean())
    return losses.discriminator_loss(real, perm).mean(), acc

  (d_loss, d_acc), disc_grads = jax.value_and_grad(disc_loss, has_aux=True)(
    disc_params
  )
  state = state.apply_gradients(grads={"vae": vae_grads, "disc": disc_grads})
  metrics |= {"loss": loss, "disc_loss": d_loss, "disc_accuracy": d_acc}
  return state, metrics


# --------------------------------------------------------------------------
# Evaluation: the FactorVAE score (eval.metrics.factor_vae).


def factor_vae_score(
  state: loop.TrainState, config: Config, *, source, encode_fn
) -> dict[str, float]:
  """The FactorVAE metric of the posterior means (Kim & Mnih 2018).

  With the ``paper`` convention, latents whose mean KL to the prior is below
  0.05 nats are pruned. The metric is ``eval.metrics.factor_vae``'s, as in
  ``python -m eval.disentanglement``.

  Args:
    state: the train state.
    config: its seed seeds the metric's random state; the ``score_*`` fields
      set the convention and sample sizes (0: the convention's).
    source: the dSprites source (its ground-truth interface if it has one,
      else the procedural one's).
    encode_fn: jitted ``(variables, x) -> (mu, logvar)``.

  Returns:
    ``{"factor_vae_eval_accuracy", "factor_vae_train_accuracy",
    "factor_vae_num_active_dims"}``.
  """
  # Deferred: scikit-learn takes ~1 s to import.
  from eval.metrics import factor_vae

  variables = {"params": jax.device_get(state.params["vae"])}
  ground_truth = (
    source if hasattr(source, "sample_factors") else dsprites.procedural()
  )

  def representation_fn(x: np.ndarray) -> np.ndarray:
    return np.asarray(encode_fn(variables, x)[0])

  def kl_fn(x: np.ndarray) -> np.ndarray:
    mu, logvar = (np.asarray(a) for a in encode_fn(variables, x))
    return np.asarray(losses.gaussian_kl_per_dim(mu, logvar))

  counts = {
    "num_train": config.score_num_train,
    "num_eval": config.score_num_eval,
    "num_variance_estimate": config.score_num_variance,
  }
  scores = factor_vae.compute_factor_vae(
    ground_truth,
    representation_fn,
    np.random.RandomState(config.seed),
    convention=config.score_convention,
    kl_function=kl_fn if config.score_convention == "paper" else None,
    **{k: v for k, v in counts.items() if v > 0},
  )
  return {f"factor_vae_{k}": float(v) for k, v in scores.items()}


def run_spec(config: Config) -> runs.RunSpec:
  """What evaluation needs to rebuild this run's model and data."""
  return runs.RunSpec(
    trainer="factorvae",
    model="factorvae",
    model_kwargs={"latent_dim": config.latent_dim},
    input_shape=models.input_shape(make_model(config)),
    data=config.data,
    data_dir=config.data_dir,
    layer=config.layer,
  )


# --------------------------------------------------------------------------
# Train and evaluate; the command line.


def train_and_evaluate(
  config: Config | Sequence[Config],
  workdir: str,
  *,
  overwrite: bool = False,
  mesh=None,
  report: bool = True,
):
  """Trains (or resumes) a FactorVAE run, or a grid, in ``workdir``.

  Args:
    config: one config, or a grid's (``workflow.grid.expand``): members
      share the data and the settings outside the grid fields.
    workdir: the run folder (a grid's members go in subfolders).
    overwrite: delete an old run there first.
    mesh: the device mesh (default: every device).
    report: write each run's ``report/`` (figures, ``report.md``) at the end.

  Returns:
    The final state (a list of them for a grid).
  """
  configs_ = [config] if isinstance(config, Config) else list(config)
  head = configs_[0]
  model = make_model(head)
  encode_fn = functools.partial(model.apply, method=model.encode)
  x = jax.ShapeDtypeStruct((1, *models.input_shape(model)), jnp.float32)
  key = jax.random.key(0)
  # --layer checked before anything is loaded or written (a trace, no data).
  resolve_layers(
    encode_fn, jax.eval_shape(model.init, key, x, key), x, head.layer
  )
  source = load_data(head)
  evaluate = None
  if head.score:
    evaluate = functools.partial(
      factor_vae_score,
      source=source,
      encode_fn=jax.jit(encode_fn),
    )
  states = loop.train_and_evaluate(
    config,
    workdir,
    create_train_state=create_train_state,
    train_step=train_step,
    batch_size=head.batch_size,
    device_data=device_data(head, source),
    evaluate=evaluate,
    run_spec=run_spec,
    overwrite=overwrite,
    mesh=mesh,
  )
  if report:
    images = dsprites.procedural().sample_observations(
      4, np.random.RandomState(0)
    )
    command.write_reports(
      workdir,
      configs_,
      states,
      np.asarray(images, np.float32),
      lambda c, s: {
        "model": make_model(c),
        "variables": {"params": s.params["vae"]},
        "layer": c.layer,
      },
    )
  return states


SCORE_NAMES = {
  "eval/factor_vae_eval_accuracy": "FactorVAE score (evaluation accuracy)",
  "eval/factor_vae_num_active_dims": "active latents",
  "train/loss": "final training loss",
}


def default_workdir(configs_: Sequence[Config]) -> str:
  """``runs/factorvae_<loss>`` (``runs/factorvae_tc-ad`` for a grid)."""
  names = list(dict.fromkeys(c.loss for c in configs_))
  return f"runs/factorvae_{'-'.join(names)}"


def next_commands(configs_: Sequence[Config], workdir: str) -> list[str]:
  """What to run on the finished run or grid: the disentanglement scores
  (every member at once for a grid) and, for a grid of two objectives, the
  comparison."""
  score = (
    f"python -m eval.disentanglement --workdir={workdir} --quick  # seconds; "
    "without --quick every metric at its published sizes, minutes"
  )
  arms = list(dict.fromkeys(c.loss for c in configs_))
  if len(configs_) == 1 or len(arms) != 2:
    return [score]
  first = "ad" if "ad" in arms else arms[0]
  second = next(a for a in arms if a != first)
  # One comparison per setting of the other grid fields (the seeds vary
  # inside a group): ad_lambda_ad0.5_* --vs tc_lambda_ad1_*.
  varying = grid.varying_fields(configs_)

  def group(loss):
    names = (grid.member_name(c, varying) for c in configs_ if c.loss == loss)
    return dict.fromkeys(n.rsplit("_seed", 1)[0] + "_*" for n in names)

  return [score] + [
    f"python -m eval.aggregate {workdir}/{a} --vs {workdir}/{b}"
    for a in group(first)
    for b in group(second)
  ]


def main(argv: Sequence[str] | None = None) -> int:
  return command.main(
    argv,
    Config,
    PRESETS,
    train_and_evaluate,
    prog="python -m train.factorvae",
    description=__doc__,
    default_preset="dsprites",
    default_workdir=default_workdir,
    score_names=SCORE_NAMES,
    next_commands=next_commands,
  )


if __name__ == "__main__":
  sys.exit(main())
