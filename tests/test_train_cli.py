"""The trainers' entry points: one error line and exit status 2, --debug."""

import os
import signal

import pytest

from train import factorvae, loop, oneclass
from workflow import runs


def _error_lines(capsys):
  """The error lines (logging also writes INFO lines to stderr)."""
  err = capsys.readouterr().err
  assert "Traceback" not in err
  return [line for line in err.splitlines() if line.startswith("error: ")]


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys):
  argv = ["--preset=smoke", "--data=npz", f"--data-dir={tmp_path}/none.npz"]
  assert factorvae.main([*argv, f"--workdir={tmp_path}/a"]) == 2
  err = _error_lines(capsys)
  assert len(err) == 1 and "none.npz" in err[0]
  with pytest.raises(ValueError, match="none.npz"):
    factorvae.main([*argv, f"--workdir={tmp_path}/a", "--debug"])


def test_a_workdir_in_use_is_refused_at_once(tmp_path, capsys):
  with runs.lock(tmp_path):
    argv = ["--preset=smoke", "--num-steps=1", f"--workdir={tmp_path}"]
    assert oneclass.main(argv) == 2
  err = _error_lines(capsys)
  assert len(err) == 1 and "is in use by pid" in err[0]


def test_incomplete_launch_flags_are_refused(tmp_path, capsys):
  argv = ["--preset=smoke", "--num-processes=2", f"--workdir={tmp_path}"]
  assert oneclass.main(argv) == 2
  assert "--coordinator-address" in capsys.readouterr().err


def _second_sigint() -> KeyboardInterrupt:
  """What the training loop's handler raises on a second SIGINT."""
  with loop._catch_signals():
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt) as info:
      os.kill(os.getpid(), signal.SIGINT)
  return info.value


@pytest.mark.parametrize(
  ("interrupt", "said"),
  [  # SIGINT while the first step compiled printed an 80-line traceback.
    (KeyboardInterrupt, "before training started"),
    # A second SIGINT during training was said to come before training.
    (_second_sigint, "again"),
  ],
)
def test_ctrl_c_before_training_or_twice_is_one_line(
  interrupt, said, tmp_path, capsys, monkeypatch
):
  def compiling(*args, **kwargs):
    raise interrupt()

  monkeypatch.setattr(loop, "train_and_evaluate", compiling)
  argv = ["--preset=smoke", f"--workdir={tmp_path}"]
  assert factorvae.main(argv) == 130
  err = capsys.readouterr().err
  assert "Traceback" not in err
  (line,) = [x for x in err.splitlines() if x.startswith("Interrupted")]
  assert str(tmp_path) in line and "are kept" in line and "again" in line
  assert said in line.split(".")[0], line
  with pytest.raises(KeyboardInterrupt):
    factorvae.main([*argv, "--debug"])


@pytest.mark.parametrize(
  ("argv", "words"),
  [  # Said "normal_digit must be an int in 0..9" after training had begun.
    (["--dataset=mnist", "--normal-digit=11"], ["--normal-digit", "[0, 9]"]),
    # The preset chose --model=mnist; the line said "--model=mnist" only.
    (["--preset=smoke", "--dataset=mvtec"], ["preset's", "--model=resnet18"]),
  ],
)
def test_oneclass_flags_that_do_not_fit_are_refused_when_parsed(
  argv, words, tmp_path, capsys
):
  with pytest.raises(SystemExit) as e:
    oneclass.main([*argv, f"--workdir={tmp_path}"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert all(w in err for w in words), err
  assert not any(tmp_path.iterdir())  # Nothing written.


def test_an_unknown_layer_is_refused_before_anything_is_written(
  tmp_path, capsys
):
  # It was refused only once the first step compiled, about 5 s in.
  workdir = tmp_path / "run"
  argv = ["--preset=smoke", "--layer=encoder/conv9", f"--workdir={workdir}"]
  assert factorvae.main(argv) == 2
  (line,) = _error_lines(capsys)
  assert "'encoder/conv9'" in line and "did you mean 'encoder/conv1'" in line
  assert not workdir.exists()
