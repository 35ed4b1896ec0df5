"""python -m train.oneclass: one-class VAEs and their latent statistics."""

from __future__ import annotations

import dataclasses
import shlex

import chex
import jax
import numpy as np
import pytest

from eval import restore
from train import command, oneclass
from vae_attn import anomaly
from vae_attn.data import DataError
from workflow import runs


def _parse(argv):
  (config,), _ = command.parse_flags(
    argv,
    oneclass.Config,
    oneclass.PRESETS,
    prog="t",
    default_preset="textures",
    preset_field="dataset",
  )
  return config


def test_dataset_flag_picks_the_papers_setup():
  default = _parse([])
  assert (default.dataset, default.model) == ("textures", "resnet18")
  mnist = _parse(["--dataset=mnist", "--normal-digit=3"])
  assert (mnist.model, mnist.learning_rate, mnist.batch_size) == (
    "mnist",
    1e-3,
    128,
  )
  assert mnist.normal_digit == 3 and not mnist.augment
  ped1 = _parse(["--dataset=ped1", "--data-dir=/d"])
  assert (ped1.model, ped1.image_size, ped1.learning_rate) == (
    "ped1",
    100,
    1e-4,
  )
  assert ped1.batch_size == 32
  mvtec = _parse(["--dataset=mvtec", "--category=bottle"])
  assert (mvtec.model, mvtec.image_size, mvtec.batch_size) == (
    "resnet18",
    256,
    8,
  )
  assert mvtec.augment and mvtec.category == "bottle"
  assert _parse(["--preset=mvtec_screw"]).category == "screw"


@pytest.mark.parametrize(
  ("argv", "words"),
  [
    # --category was ignored for digits, yet recorded in config.json.
    (["--preset=smoke", "--category=nope"], ["--category", "digits"]),
    # These ended in a raw flax ScopeParamShapeError after loading the data.
    (["--dataset=textures", "--model=mnist"], ["--model=mnist", "resnet18"]),
    (["--preset=smoke", "--dataset=textures"], ["--model=mnist", "textures"]),
    (["--dataset=mnist", "--model=ped1"], ["--model=ped1", "--model=mnist"]),
    (["--datset=mnist"], ["--datset", "--dataset"]),
  ],
)
def test_contradictory_choices_are_refused_before_building(argv, words, capsys):
  with pytest.raises(SystemExit) as e:
    _parse(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and all(w in err for w in words), err
  # From Python too: a config is checked when it is built.
  with pytest.raises(ValueError, match="--model=mnist"):
    dataclasses.replace(oneclass.PRESETS["textures"], model="mnist")


def test_a_factorvae_workdir_is_refused_in_one_line(tmp_path, capsys):
  # It was a 1,137-character line listing 28 fields.
  (tmp_path / "config.json").write_text('{"loss": "ad"}')
  (tmp_path / "spec.json").write_text('{"trainer": "factorvae"}')
  (tmp_path / "ckpt" / "4").mkdir(parents=True)
  argv = ["--preset=smoke", f"--workdir={tmp_path}"]
  assert oneclass.main(argv) == 2
  err = [
    line
    for line in capsys.readouterr().err.splitlines()
    if line.startswith("error: ")
  ]
  assert len(err) == 1 and len(err[0]) < 250, err
  assert all(w in err[0] for w in ("train.factorvae", "--workdir")), err


def test_a_damaged_spec_in_the_workdir_is_one_line_naming_it(tmp_path, capsys):
  (tmp_path / "config.json").write_text('{"loss": "ad"}')
  (tmp_path / "spec.json").write_text("{bad")
  (tmp_path / "ckpt" / "4").mkdir(parents=True)
  assert oneclass.main(["--preset=smoke", f"--workdir={tmp_path}"]) == 2
  err = [
    line
    for line in capsys.readouterr().err.splitlines()
    if line.startswith("error: ")
  ]
  assert len(err) == 1, err
  assert str(tmp_path / "spec.json") in err[0] and "repair the JSON" in err[0]


def test_missing_data_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="--data-dir"):
    oneclass.load_data(_parse(["--dataset=folder"]), "train")
  with pytest.raises(ValueError, match="--category"):
    oneclass.load_data(
      _parse(["--dataset=mvtec", "--category=", f"--data-dir={tmp_path}"]),
      "train",
    )
  # A root that does not exist is named as such (it asked for --category).
  with pytest.raises(ValueError, match="/d does not exist; pass --data-dir="):
    oneclass.load_data(
      _parse(["--dataset=mvtec", "--category=", "--data-dir=/d"]), "train"
    )
  with pytest.raises(DataError):
    oneclass.load_data(_parse(["--dataset=mnist"]), "train")


def test_mnist_vae_trains_resumes_and_saves_latent_stats(tmp_path, capsys):
  config = oneclass.PRESETS["smoke"]
  half = dataclasses.replace(config, num_steps=2)
  oneclass.train_and_evaluate(half, tmp_path / "a", report=False)
  # From Python, the run ends with its report, as from the command line.
  resumed = oneclass.train_and_evaluate(config, tmp_path / "a")
  assert int(resumed.step) == 4
  report = tmp_path / "a" / "report"
  for name in ("loss_curves.png", "attention.png", "traversals.png"):
    assert (report / name).stat().st_size > 5_000, name
  assert runs.read_spec(tmp_path / "a").input_shape == (28, 28, 1)
  # The command line trains the same run in one go, as the seed-0 member of
  # a seed grid (the report left out).
  argv = ["--preset=smoke", f"--workdir={tmp_path / 'b'}", "--seeds=0,1"]
  assert oneclass.main([*argv, "--no-report"]) == 0
  member = tmp_path / "b" / "seed0"
  assert not (member / "report").exists()
  # Digits have no pixel masks: the next step it names works on them, and
  # on a member run (eval.explain refuses a grid folder).
  next_line = capsys.readouterr().out.strip().splitlines()[-1]
  words = shlex.split(next_line.removeprefix("Next: "), comments=True)
  assert words[:3] == ["python", "-m", "eval.explain"], next_line
  assert words[3:] == [f"--workdir={member}", "--code=difference"]
  straight = restore.load_run(member)
  assert straight.step == 4
  chex.assert_trees_all_close(
    jax.device_get(resumed.params), straight.variables["params"], atol=1e-6
  )

  step, restored = runs.restore(tmp_path / "a", items=("state", "latent_stats"))
  assert step == 4 and runs.read_config(tmp_path / "a")["dataset"] == "digits"
  stats = restored["latent_stats"]
  train = oneclass.load_data(config, "train")
  assert int(stats["count"]) == len(train)
  chex.assert_shape([stats["mean"], stats["var"]], (config.latent_dim,))
  assert np.all(np.asarray(stats["var"]) > 0)
  model = oneclass.make_model(config)
  expected = anomaly.latent_statistics(
    lambda v, x: model.apply(v, x, method=model.encode),
    {"params": resumed.params},
    [train.get_batch(np.arange(len(train)))],
  )
  np.testing.assert_allclose(stats["mean"], expected.mean, atol=1e-5)
  np.testing.assert_allclose(stats["var"], expected.var, rtol=1e-4)
