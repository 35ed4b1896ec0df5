"""Config dataclasses as command lines (workflow.configs): every entry point."""

import argparse
import dataclasses
import functools
import importlib

import pytest

from train import command
from workflow import configs

# Entry point -> the config dataclasses its command line is made of.
ENTRY_POINTS = {
  "train.factorvae": ("Config", command.Launch),
  "train.oneclass": ("Config", command.Launch),
  "eval.explain": ("Config", configs.Debug),
  "eval.localization": ("Config", configs.Debug),
  "eval.disentanglement": ("Config", configs.Debug),
  "eval.aggregate": ("Config", configs.Debug),
  "eval.reproduce": ("Config", configs.Debug),
}


@dataclasses.dataclass(frozen=True)
class Toy:
  steps: int = configs.field(10, "steps", type=configs.count)
  mode: str = configs.field("a", "a mode", ("a", "b"))
  optional_mode: str | None = configs.field(None, "or none", ("a", "b"))
  switch: bool = configs.field(True, "a switch")
  names: tuple[str, ...] = configs.field((), "some names")
  seed: int = configs.grid_field(0, "a seed", alias="--seeds")
  loss: str = configs.grid_field("x", "a loss", ("x", "y"))
  size: int = configs.field(1, "a size", interval="[1, inf)")
  rate: float = configs.field(0.1, "a rate", interval="(0, inf)")
  beta: float = configs.field(0.9, "a beta", interval="[0, 1)")
  cap: int = configs.field(
    3, "a capped count", interval=f"(-inf, {configs.MAX_SEED}]"
  )
  weight: float = configs.grid_field(1.0, "a weight", interval="[0, inf)")

  def __post_init__(self):
    if self.steps < 0:
      raise ValueError("--steps must be >= 0.")


def _parse(argv):
  return configs.parse(argv, Toy, prog="toy")[0]


def test_flags_take_dashes_or_underscores_counts_switches_and_lists():
  toy = _parse(
    ["--steps=3e5", "--no-switch", "--names", "a", "b", "--optional_mode=b"]
  )
  assert (toy.steps, toy.switch, toy.names, toy.optional_mode) == (
    300_000,
    False,
    ("a", "b"),
    "b",
  )
  assert _parse(["--switch=false"]).switch is False
  default = _parse([])
  assert (default.steps, default.mode, default.optional_mode) == (10, "a", None)


def test_grid_fields_parse_comma_lists_as_tuples():
  toy = _parse(["--seeds=0,1,2", "--loss=y"])
  assert (toy.seed, toy.loss) == ((0, 1, 2), ("y",))
  # argparse parses a text default too; train.flags expands either form.
  assert _parse([]).loss == ("x",)


@pytest.mark.parametrize(
  ("argv", "words"),
  [
    (["--steps=1.5"], ["whole number", "1.5"]),
    (["--mode=c"], ["--mode", "'c'"]),
    (["--loss=x,z"], ["--loss", "'z'", "'x', 'y'"]),
    (["--seeds=1,1"], ["1,1", "repeats"]),
    (["--steps=-1"], ["--steps", ">= 0"]),
    (["--bogus"], ["--bogus"]),
    (["--siz=2"], ["--siz", "--size"]),  # No prefixes: the flag is named.
    (["--mod=b"], ["--mod", "--mode"]),
    (["--size=0"], ["--size", ">= 1", "0"]),
    (["--rate=0"], ["--rate", "> 0", "0.0"]),
    (["--rate=nan"], ["--rate", "finite", "nan"]),
    (["--weight=1,-2"], ["--weight", ">= 0", "-2.0"]),
    (["--beta=1"], ["--beta", "in [0, 1)", "1.0"]),
    (["--cap=4294967296"], ["--cap", "<= 4294967295", "4294967296"]),
  ],
)
def test_a_bad_flag_is_one_line_with_status_2(argv, words, capsys):
  with pytest.raises(SystemExit) as e:
    _parse(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ")
  assert all(w in err for w in words), err
  assert err.rstrip().endswith("(see toy --help)")


def test_choices_are_checked_for_configs_built_in_python():
  configs.check_values(Toy(optional_mode=None))
  with pytest.raises(ValueError, match=r"--mode.*'c'"):
    configs.check_values(Toy(mode="c"))
  with pytest.raises(ValueError, match=r"--rate.*> 0"):
    configs.check_values(Toy(rate=-1.0))


def test_an_interval_that_does_not_parse_fails_when_the_config_is_defined():
  with pytest.raises(ValueError, match=r"Not an interval: '1\.\.2'"):
    configs.field(1, "a count", interval="1..2")


def test_a_config_survives_json():
  toy = Toy(steps=3, names=("a",))
  assert (
    configs.from_dict(Toy, configs.to_dict(toy)) == Toy(steps=3, names=["a"])
    or configs.from_dict(Toy, configs.to_dict(toy)) == toy
  )
  with pytest.raises(ValueError, match=r"Unknown Toy fields \['width'\]"):
    configs.from_dict(Toy, {"width": 3})


def _groups(module: str) -> list:
  mod = importlib.import_module(module)
  return [
    getattr(mod, g) if isinstance(g, str) else g for g in ENTRY_POINTS[module]
  ]


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_gives_every_flag_a_text_and_its_default(module):
  parser = configs.ArgumentParser(prog=module, groups=_groups(module))
  for action in parser._actions:
    if isinstance(action, argparse._HelpAction):
      continue
    assert action.help, action.dest
    text = parser._get_formatter()._get_help_string(action)
    if action.option_strings and not action.required:
      assert "default" in text, (action.dest, text)


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_is_plain_text(module, capsys):
  with pytest.raises(SystemExit) as e:
    importlib.import_module(module).main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "usage: python -m " + module in out
  for markup in ("``", ":func:", ":mod:", ":class:", ":data:"):
    assert markup not in out, (module, markup)


def test_a_repeated_list_flag_adds_to_the_list():
  # eval.disentanglement --workdir=a --workdir=b scored b only.
  from eval import aggregate, cli, disentanglement

  parse = functools.partial(cli.parse, prog="x", description="")
  argv = ["--workdir=a", "--workdir", "b", "c"]
  config, _ = parse(argv, disentanglement.Config)
  assert config.workdir == ("a", "b", "c")
  config, _ = parse(["r1", "--vs", "r2", "--vs=r3"], aggregate.Config)
  assert list(config.vs) == ["r2", "r3"] and tuple(config.runs) == ("r1",)
