"""python -m train.factorvae: AD-FactorVAE / FactorVAE / beta-VAE trainer."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import numpy as np
import pytest

from train import command, factorvae
from vae_attn.data import dsprites
from workflow import runs, writers


def _last_train_record(workdir) -> dict:
  records = writers.read_scalars(workdir)
  return [r for r in records if "train/loss" in r][-1]


def test_defaults_are_the_papers_and_need_no_download():
  (config,), launch = command.parse_flags(
    ["--loss=ad"],
    factorvae.Config,
    factorvae.PRESETS,
    prog="t",
    default_preset="dsprites",
  )
  assert (config.loss, config.gamma, config.lambda_ad) == ("ad", 40.0, 1.0)
  assert (config.batch_size, config.latent_dim, config.num_steps) == (
    64,
    32,
    300_000,
  )
  assert (config.vae_lr, config.vae_b1, config.vae_b2) == (1e-4, 0.9, 0.999)
  assert (config.disc_lr, config.disc_b1, config.disc_b2) == (1e-4, 0.5, 0.9)
  assert (config.layer, config.pair_mode) == ("encoder/conv1", "random")
  assert (launch.workdir, launch.overwrite) == (None, False)
  assert isinstance(factorvae.load_data(config), dsprites.ProceduralDSprites)
  # Checked when the config is built, from Python too.
  with pytest.raises(ValueError, match="--data-dir"):
    dataclasses.replace(config, data="npz")


def test_ad_factorvae_trains_checkpoints_and_resumes(tmp_path):
  config = factorvae.PRESETS["smoke"]
  half = dataclasses.replace(config, num_steps=2)
  train = functools.partial(factorvae.train_and_evaluate, report=False)
  state = train(half, tmp_path / "a")
  assert int(state.step) == 2
  assert set(state.params) == {"vae", "disc"}
  resumed = train(config, tmp_path / "a")
  straight = train(config, tmp_path / "b")
  assert int(resumed.step) == 4
  chex.assert_trees_all_close(resumed.params, straight.params, atol=1e-6)
  chex.assert_tree_all_finite(resumed.params)

  # The logged loss is the paper's objective: recon + KL + gamma TC + lambda AD.
  r = _last_train_record(tmp_path / "a")
  assert r["step"] == 4 and 0.0 <= r["train/ad"] <= 1.0
  np.testing.assert_allclose(
    r["train/loss"],
    r["train/recon"]
    + r["train/kl"]
    + config.gamma * r["train/tc"]
    + config.lambda_ad * r["train/ad"],
    rtol=1e-5,
  )
  records = writers.read_scalars(tmp_path / "a")
  scores = [r for r in records if "eval/factor_vae_eval_accuracy" in r]
  assert [r["step"] for r in scores] == [2, 4]
  assert 0.0 <= scores[-1]["eval/factor_vae_eval_accuracy"] <= 1.0

  # Both parameter sets moved between the checkpoints of steps 2 and 4.
  _, at2 = runs.restore(tmp_path / "a", step=2)
  for part in ("vae", "disc"):
    moved = jax.tree.map(
      lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
      resumed.params[part],
      at2["state"]["params"][part],
    )
    assert max(jax.tree.leaves(moved)) > 0

  # Another objective in the same workdir is refused.
  with pytest.raises(runs.ConfigMismatchError, match="loss"):
    train(dataclasses.replace(config, loss="tc"), tmp_path / "a")


@pytest.mark.parametrize("loss", ["tc"])
def test_cli_trains_the_baselines(loss, tmp_path):
  argv = [
    "--preset=smoke",
    f"--loss={loss}",
    "--beta=4",
    "--num-steps=2",
    "--no-score",
    f"--workdir={tmp_path}",
  ]
  assert factorvae.main(argv) == 0
  r = _last_train_record(tmp_path)
  if loss == "beta":
    expected = r["train/recon"] + 4.0 * r["train/kl"]
  else:
    expected = r["train/recon"] + r["train/kl"] + 40.0 * r["train/tc"]
  np.testing.assert_allclose(r["train/loss"], expected, rtol=1e-5)
  assert "train/ad" not in r  # Runs without L_AD do not log it.
  step, restored = runs.restore(tmp_path)
  assert step == 2 and runs.read_config(tmp_path)["loss"] == loss
  assert runs.read_spec(tmp_path).input_shape == (64, 64, 1)
  # The run ends with a report to look at.
  report = tmp_path / "report"
  for name in ("loss_curves.png", "attention.png", "traversals.png"):
    assert (report / name).stat().st_size > 10_000, name
  text = (report / "report.md").read_text()
  assert "![attention](attention.png)" in text
  assert "small samples" in text and "published sample sizes" in text
  # Rerunning the finished command changes nothing and succeeds.
  assert factorvae.main(argv) == 0


@pytest.mark.parametrize(
  ("flag", "words"),
  [
    ("--batch-size=0", ["--batch-size", ">= 1", "0"]),
    ("--latent-dim=1", ["--latent-dim", ">= 2", "1"]),
    ("--gamma=nan", ["--gamma", "finite", "nan"]),
    ("--vae-lr=-1", ["--vae-lr", "> 0", "-1"]),
    ("--vae-b1=2", ["--vae-b1", "in [0, 1)", "2"]),
    ("--seeds=0,-1", ["--seed", "in [0, 4294967295]", "-1"]),
    ("--data=npz", ["--data=npz", "--data-dir"]),
    ("--los=ad", ["--los", "--loss"]),
    ("--step=3", ["--step", "--steps-per-call", "--num-steps"]),
    ("--dataset=textures", ["--dataset", "--data"]),
  ],
)
def test_bad_flags_are_refused_before_training(flag, words, tmp_path, capsys):
  # Out-of-range values reached the step (a ZeroDivisionError or a NaN
  # loss); prefixes were taken as the flag they began (--step=3 set
  # --steps-per-call=3).
  argv = ["--preset=smoke", flag, f"--workdir={tmp_path / 'run'}"]
  with pytest.raises(SystemExit) as e:
    factorvae.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert all(w in err for w in words), err
  assert not (tmp_path / "run").exists()
