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
--data-path=dsprites.npz or --data=tfds. The FactorVAE score is
computed at the end (and every --eval-every steps).

The data set lives on the device: the procedural dSprites is rendered inside
the step from uniformly drawn factor classes; the npz and tfds images are
held as bits (377 MB for all 737,280). Comma lists train a grid as one
program, each member in its own run directory under --workdir:

  python -m train.factorvae --loss=tc,ad --seeds=0,1,2   # Table 3 with seeds

The loss choice is a setting of one objective,
recon + beta * KL + gamma * TC + lambda * L_AD (tc: lambda = 0; beta:
gamma = lambda = 0), so members of every loss share one step.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from train import cli, common, factor_vae_score, loop
from train import data as device_data
from vae_attn import losses, models
from vae_attn.attention import value_and_attention
from vae_attn.data import dsprites
from workflow import configs, runs


@dataclasses.dataclass(frozen=True)
class Config(common.LoopConfig):
  """FactorVAE / AD-FactorVAE hyperparameters (defaults: the paper's)."""

  # Fields that only change evaluation; a run may resume with other values.
  RUN_FIELDS: ClassVar[frozenset[str]] = frozenset(
    {
      "score",
      "score_convention",
      "score_num_train",
      "score_num_eval",
      "score_num_variance",
    }
  )
  num_steps: int = configs.field(
    300_000, "training steps (paper: 3e5)", minimum=1
  )
  # Comma lists of these train a grid (--seeds=0,1,2 --loss=tc,ad).
  loss: str = configs.grid_field(
    "ad",
    "ad: AD-FactorVAE, tc: FactorVAE, beta: beta-VAE",
    ("ad", "tc", "beta"),
  )
  gamma: float = configs.grid_field(40.0, "weight of the TC term", minimum=0)
  lambda_ad: float = configs.grid_field(
    1.0, "weight of L_AD (--loss=ad)", minimum=0
  )
  beta: float = configs.grid_field(
    1.0, "weight of the KL term (--loss=beta)", minimum=0
  )
  layer: str = configs.field("encoder/conv1", "attention layer of L_AD")
  pair_mode: str = configs.field(
    "random", "L_AD latent pairs", losses.PAIR_MODES
  )
  latent_dim: int = configs.field(
    32, "D, latent elements (L_AD needs pairs)", minimum=2
  )
  batch_size: int = configs.field(
    64, "global batch (the discriminator gets another)", minimum=1
  )
  vae_lr: float = configs.field(1e-4, "Adam learning rate of the VAE", above=0)
  vae_b1: float = configs.field(
    0.9, "Adam beta1 of the VAE", minimum=0, below=1
  )
  vae_b2: float = configs.field(
    0.999, "Adam beta2 of the VAE", minimum=0, below=1
  )
  disc_lr: float = configs.field(
    1e-4, "Adam learning rate of the discriminator", above=0
  )
  disc_b1: float = configs.field(
    0.5, "Adam beta1 of the discriminator", minimum=0, below=1
  )
  disc_b2: float = configs.field(
    0.9, "Adam beta2 of the discriminator", minimum=0, below=1
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
    0, "score: training votes (0: the convention's)", minimum=0
  )
  score_num_eval: int = configs.field(
    0, "score: evaluation votes (0: the convention's)", minimum=0
  )
  score_num_variance: int = configs.field(
    0, "score: variance images (0: the convention's)", minimum=0
  )


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
    ValueError: ``--data=npz`` without ``--data-dir``.
  """
  if config.data == "npz":
    if not config.data_dir:
      raise ValueError("--data=npz needs --data-dir=<dsprites .npz file>.")
    return dsprites.load_npz(config.data_dir)
  if config.data == "tfds":
    return dsprites.load_tfds("train", data_dir=config.data_dir or None)
  return dsprites.procedural()


def make_device_data(config: Config, source=None) -> common.DeviceData:
  """The training data on the device: ``{"x", "x2"}`` batches.

  The procedural source renders drawn factor classes inside the step; the
  npz and tfds sources are read once and held as bits.
  """
  if config.data == "procedural":
    arrays, draw = device_data.dsprites_rendered()
  else:
    source = load_data(config) if source is None else source
    images = device_data.read_all(source)
    arrays, draw = device_data.uniform_rows(images, binary=True)
  return device_data.batch_of(arrays, draw, ("x", "x2"))


def hparams(config: Config) -> dict[str, float]:
  """The loss weights of ``config`` (traced: members of a grid differ).

  ``loss`` is a setting of one objective,
  ``recon + beta * KL + gamma * TC + lambda_ad * L_AD``: ``tc`` has
  ``lambda_ad = 0`` and ``beta = 1``, ``beta`` has ``gamma = lambda_ad = 0``,
  ``ad`` has ``beta = 1``.
  """
  if config.loss == "beta":
    return {"beta": config.beta, "gamma": 0.0, "lambda_ad": 0.0}
  lambda_ad = config.lambda_ad if config.loss == "ad" else 0.0
  return {"beta": 1.0, "gamma": config.gamma, "lambda_ad": lambda_ad}


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """Adam for ``params['vae']`` and Adam for ``params['disc']``, in one."""
  return optax.multi_transform(
    {
      "vae": optax.adam(config.vae_lr, config.vae_b1, config.vae_b2),
      "disc": optax.adam(config.disc_lr, config.disc_b1, config.disc_b2),
    },
    {"vae": "vae", "disc": "disc"},
  )


def create_train_state(
  key: jax.Array,
  config: Config,
  tx: optax.GradientTransformation | None = None,
  model: models.VAE | None = None,
) -> common.TrainState:
  """The VAE and discriminator parameters and their optimiser state.

  Args:
    key: PRNG key of the initialisation.
    config: the run's config.
    tx: the optimiser (default :func:`make_optimizer`).
    model: the VAE (default: built from ``config``). Pass the same ``tx`` and
      ``model`` objects to every call so that the states of several runs have
      one tree structure and share a compiled step.
  """
  if model is None:
    model = models.make_model("factorvae", latent_dim=config.latent_dim)
  k_vae, k_eps, k_disc = jax.random.split(key, 3)
  x = np.zeros((1, 64, 64, 1), np.float32)
  z = np.zeros((1, config.latent_dim), np.float32)
  params = {
    "vae": model.init(k_vae, x, k_eps)["params"],
    "disc": models.Discriminator().init(k_disc, z)["params"],
  }
  return common.TrainState.create(
    apply_fn=model.apply, params=params, tx=tx or make_optimizer(config)
  )


def train_step(
  state: common.TrainState,
  batch: common.Batch,
  key: jax.Array,
  hparams: dict[str, jax.Array],
  *,
  config: Config,
) -> tuple[common.TrainState, common.Metrics]:
  """One update of the VAE and the discriminator (Kim & Mnih, Alg. 2).

  Args:
    state: ``params = {"vae": ..., "disc": ...}`` and their Adam states.
    batch: ``{"x": float32 [B, 64, 64, 1], "x2": the same}``: two independent
      batches in {0, 1}; ``x2``'s codes, permuted, are the discriminator's
      negatives.
    key: the run's step key (folded with ``state.step`` here).
    hparams: :func:`hparams` as scalars: ``beta``, ``gamma``, ``lambda_ad``.
    config: static settings: the layer, pair mode and latent size; L_AD is
      computed when ``config.loss == "ad"`` (for a grid: any member's).

  Returns:
    The new state and the step's scalars: ``loss`` (the VAE objective),
    ``recon`` and ``kl`` (nats per image), ``tc`` (the discriminator's TC
    estimate), ``ad`` (L_AD, eq. 6), ``disc_loss`` and ``disc_accuracy``.
  """
  model = models.make_model("factorvae", latent_dim=config.latent_dim)
  disc = models.Discriminator()
  encode_fn = functools.partial(model.apply, method=model.encode)
  k_eps, k_eps2, k_ad, k_perm = jax.random.split(
    jax.random.fold_in(key, state.step), 4
  )
  x, x2 = batch["x"], batch["x2"]
  disc_params = state.params["disc"]

  def vae_loss(vae_params):
    variables = {"params": vae_params}
    if config.loss == "ad" and config.pair_mode == "random":
      (mu, logvar), ad = losses.random_pair_ad(
        encode_fn, config.layer, variables, x, k_ad, precision=None
      )
      ad = ad.mean()
    elif config.loss == "ad":
      # precision=None: the step's own (config.precision, set by the loop).
      (mu, logvar), maps = value_and_attention(
        encode_fn, config.layer, precision=None
      )(variables, x)
      ad = losses.attention_disentanglement(
        maps.per_latent, k_ad, mode=config.pair_mode
      ).mean()
    else:
      mu, logvar = encode_fn(variables, x)
      ad = jnp.zeros(())
    z = models.reparameterize(k_eps, mu, logvar)
    logits = model.apply(variables, z, method=model.decode)
    recon = losses.bernoulli_nll(logits, x).mean()
    kl = losses.gaussian_kl(mu, logvar).mean()
    tc = losses.total_correlation(disc.apply({"params": disc_params}, z)).mean()
    loss = (
      recon
      + hparams["beta"] * kl
      + hparams["gamma"] * tc
      + hparams["lambda_ad"] * ad
    )
    return loss, (dict(recon=recon, kl=kl, tc=tc, ad=ad), z)

  (loss, (metrics, z)), vae_grads = jax.value_and_grad(vae_loss, has_aux=True)(
    state.params["vae"]
  )
  mu2, logvar2 = encode_fn({"params": state.params["vae"]}, x2)
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
  metrics.update(loss=loss, disc_loss=d_loss, disc_accuracy=d_acc)
  return state, metrics


def run_spec(config: Config) -> runs.RunSpec:
  """What evaluation needs to rebuild this run's model and data."""
  return runs.RunSpec(
    trainer="factorvae",
    model="factorvae",
    model_kwargs={"latent_dim": config.latent_dim},
    input_shape=(64, 64, 1),
    data=config.data,
    data_dir=config.data_dir,
    layer=config.layer,
  )


def _member_metrics(config: Config, scalars: dict) -> dict:
  if config.loss != "ad":
    scalars = {k: v for k, v in scalars.items() if k != "ad"}
  return scalars


def make_trainer(config: Config | Sequence[Config]) -> common.Trainer:
  """The FactorVAE trainer for :func:`train.loop.train_and_evaluate`.

  Args:
    config: one config, or the configs of a grid (they share the static
      settings; L_AD is computed if any member uses it).
  """
  configs = [config] if isinstance(config, Config) else list(config)
  static = configs[0]
  if any(c.loss == "ad" for c in configs):
    static = dataclasses.replace(static, loss="ad")
  source = load_data(static)
  model = models.make_model("factorvae", latent_dim=static.latent_dim)
  eval_fn = None
  if static.score:
    eval_fn = functools.partial(
      factor_vae_score.factor_vae_score,
      source=source,
      encode_fn=jax.jit(functools.partial(model.apply, method=model.encode)),
    )
  return common.Trainer(
    create_train_state=functools.partial(
      create_train_state, config=static, tx=make_optimizer(static), model=model
    ),
    train_step=functools.partial(train_step, config=static),
    global_batch_size=static.batch_size,
    device_data=make_device_data(static, source),
    hparams_fn=hparams,
    eval_fn=eval_fn,
    spec_fn=run_spec,
    metrics_fn=_member_metrics,
  )


def train_and_evaluate(
  config: Config | Sequence[Config],
  workdir: str,
  *,
  overwrite: bool = False,
  mesh=None,
):
  """Trains (or resumes) a FactorVAE run, or a grid, in ``workdir``.

  Returns:
    The final state (a list of them for a grid).
  """
  return loop.train_and_evaluate(
    config, workdir, make_trainer(config), overwrite=overwrite, mesh=mesh
  )


SCORE_NAMES = {
  "eval/factor_vae_eval_accuracy": "FactorVAE score (evaluation accuracy)",
  "eval/factor_vae_num_active_dims": "active latents",
  "train/loss": "final training loss",
}


def default_workdir(configs: Sequence[Config]) -> str:
  """``runs/factorvae_<loss>`` (``runs/factorvae_tc-ad`` for a grid)."""
  names = list(dict.fromkeys(c.loss for c in configs))
  return f"runs/factorvae_{'-'.join(names)}"


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(
    argv,
    Config,
    PRESETS,
    train_and_evaluate,
    prog="python -m train.factorvae",
    description=__doc__,
    default_preset="dsprites",
    default_workdir=default_workdir,
    score_names=SCORE_NAMES,
    next_command=(
      "python -m eval.disentanglement --workdir={workdir} --quick (seconds; "
      "without --quick every metric at its published sizes, minutes)"
    ),
    report_fn=_report,
  )


def _report(run_dir):
  from train import report  # Deferred: matplotlib and eval's figures.

  return report.write(run_dir)


if __name__ == "__main__":
  sys.exit(main())
