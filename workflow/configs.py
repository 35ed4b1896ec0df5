"""Config dataclasses: their fields, flags (simple_parsing) and JSON.

Every entry point describes its options as one frozen dataclass whose fields
are made with :func:`field` (default, ``--help`` text, allowed values);
simple_parsing turns it into flags (``--num-steps`` or ``--num_steps``,
``--score``/``--no-score``), and :func:`parse` returns the config itself, so
a config built in Python and one parsed from a command line are the same
object. A bad flag is one line, ``error: <what> (see <prog> --help)``, exit
status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import simple_parsing
from simple_parsing.helpers import custom_actions

T = TypeVar("T")
# The default of a field whose flag must be given (``--workdir``).
REQUIRED = dataclasses.MISSING
# The largest seed: JAX and numpy seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1
SEEDS = f"[0, {MAX_SEED}]"  # The interval of a seed field.


def count(text: str) -> int:
  """Parses a whole number, also written as ``3e5`` (the paper's steps)."""
  with contextlib.suppress(ValueError):
    return int(text)
  with contextlib.suppress(ValueError):
    if float(text).is_integer():
      return int(float(text))
  raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")


count.__name__ = "int"  # The metavar in --help.


def _interval(text: str) -> tuple[Callable[[float], bool], str]:
  """``"[1, inf)"`` -> ``(contains, ">= 1")`` (a bad one fails at import)."""
  match = re.fullmatch(r"([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])", text)
  if match is None:
    raise ValueError(f"Not an interval: {text!r}; write e.g. '[1, inf)'.")
  opening, low, high, closing = match.groups()
  low, high = float(low), float(high)
  number = lambda x: int(x) if x.is_integer() else x
  if math.isinf(high):
    words = f"{'>=' if opening == '[' else '>'} {number(low)}"
  elif math.isinf(low):
    words = f"{'<=' if closing == ']' else '<'} {number(high)}"
  else:
    words = f"in {text}"

  def contains(v: float) -> bool:
    above = v >= low if opening == "[" else v > low
    return above and (v <= high if closing == "]" else v < high)

  return contains, words


def field(
  default: Any,
  help: str,  # noqa: A002 (the argparse name)
  choices: Sequence[Any] | None = None,
  *,
  alias: str | Sequence[str] = (),
  type: Callable[[str], Any] | None = None,  # noqa: A002
  positional: bool = False,
  nargs: str | None = None,
  metavar: str | None = None,
  switch: bool | None = None,
  interval: str | None = None,
  metadata: Mapping[str, Any] | None = None,
) -> Any:
  """A config field with its ``--help`` text and optional allowed values.

  Example: ``loss: str = configs.field("ad", "objective", ("ad", "tc"))``.
  ``default`` may be :data:`REQUIRED`; ``choices`` and ``interval``
  (``"[1, inf)"``, ``"(0, inf)"``, ``"[0, 1)"``) are checked by the parser
  and :func:`check_values`; ``type`` parses one value (default: :func:`count`
  for an ``int``); ``switch`` makes a ``bool | None`` field a switch; the
  other arguments are argparse's.
  """
  if (
    type is None and isinstance(default, int) and not isinstance(default, bool)
  ):
    type = count  # noqa: A001 (the argparse name)
  choices = None if choices is None else tuple(choices)
  kwargs = dict(choices=choices, type=type, nargs=nargs, metavar=metavar)
  kwargs = {k: v for k, v in kwargs.items() if v is not None}
  if nargs == "+" and not positional and default in (REQUIRED, None):
    kwargs["action"] = "extend"  # --workdir a --workdir b: both.
  if isinstance(default, bool) if switch is None else switch:
    kwargs["negative_prefix"] = "--no-"
    if not isinstance(default, bool):  # bool | None: simple_parsing's action.
      kwargs.update(action=custom_actions.BooleanOptionalAction, nargs="?")
  return simple_parsing.field(
    default,
    alias=list([alias] if isinstance(alias, str) else alias) or None,
    positional=positional,
    help=help,
    metadata={
      "allowed": kwargs.get("choices"),
      "interval": interval and _interval(interval),
      **(metadata or {}),
    },
    **kwargs,
  )


def _number(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"expected a number, got {text!r}"
    ) from None


def grid_field(
  default: Any,
  help: str,  # noqa: A002 (the argparse name)
  choices: Sequence[Any] | None = None,
  *,
  alias: str | Sequence[str] = (),
  interval: str | None = None,
) -> Any:
  """A config field whose flag also takes a comma list (a grid): its value is
  a tuple (none repeated) that ``train.command.parse_flags`` expands."""
  tp = type(default)
  one = {int: count, float: _number}.get(tp, str)

  def parse(text: str) -> tuple[Any, ...]:
    values = tuple(one(v.strip()) for v in text.split(","))
    if len(set(values)) != len(values):
      raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
    return values

  parse.__name__ = tp.__name__
  allowed = f"; one of {', '.join(map(str, choices))}" if choices else ""
  return field(
    default,
    f"{help}{allowed} (a comma list trains a grid)",
    alias=alias,
    type=parse,
    interval=interval,
    metadata={"grid": True, "allowed": choices},
  )


@dataclasses.dataclass(frozen=True)
class Debug:
  """Error reporting (every entry point)."""

  debug: bool = field(
    False, "show the full traceback of an error (also: VAE_ATTN_DEBUG=1)"
  )


class ArgumentParser(simple_parsing.ArgumentParser):
  """``simple_parsing.ArgumentParser`` with this project's conventions:
  dashed flags also read with underscores, the description's own layout,
  and a bad flag is one line with exit status 2 (no usage block)."""

  def __init__(
    self, *, prog: str, description: str = "", groups: Sequence[Any] = ()
  ):
    super().__init__(
      prog=prog,
      description=description,
      formatter_class=_HelpFormatter,
      add_option_string_dash_variants=simple_parsing.DashVariant.DASH,
      nested_mode=simple_parsing.NestedMode.WITHOUT_ROOT,
      add_config_path_arg=False,
      allow_abbrev=False,  # --los=ad is not --loss=ad.
    )
    self._group_dests: list[str] = []
    for group in groups:
      self.add_group(group)

  def add_group(self, group: type | Any) -> None:
    """Adds the flags of a config dataclass (or of an instance: defaults)."""
    cls = group if isinstance(group, type) else type(group)
    default = None if isinstance(group, type) else group
    self._group_dests.append(cls.__name__.lower())
    self.add_arguments(
      cls,
      dest=self._group_dests[-1],
      default=default,
      dataclass_wrapper_class=_Group,
    )

  def parse_groups(self, argv: Sequence[str] | None) -> tuple[Any, ...]:
    """The config of every group, then the namespace of other arguments
    (``SystemExit``: 2 after one error line, 0 after ``--help``)."""
    try:  # A ValueError: a config's __post_init__ or check_values.
      args = self.parse_args(argv)
      parsed = tuple(getattr(args, d) for d in self._group_dests)
      for config in parsed:
        check_values(config)
    except ValueError as e:
      self.error(str(e))
    return (*parsed, args)

  def parse_known_args(self, args=None, namespace=None, **kwargs):
    """``--num_steps`` is read as ``--num-steps`` (values stay as given)."""
    args = sys.argv[1:] if args is None else args
    return super().parse_known_args(
      [_dashed(a) for a in args], namespace, **kwargs
    )

  def error(self, message: str):
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    if unknown:
      message = (
        "; ".join(
          self._near_miss(a)
          for a in unknown.group(1).split()
          if a.startswith("-")
        )
        or message
      )
    self.exit(2, f"error: {message} (see {self.prog} --help)\n")

  def _near_miss(self, arg: str) -> str:
    """``unknown flag --los; did you mean --loss, --lambda-ad?``"""
    name = arg.split("=", 1)[0]
    flags = [
      o
      for a in self._actions
      for o in a.option_strings
      if o.startswith("--") and "_" not in o
    ]
    close = [f for f in flags if f.startswith(name)]
    close += difflib.get_close_matches(name, flags, n=3, cutoff=0.7)
    close = list(dict.fromkeys(close))
    hint = f"; did you mean {', '.join(close[:3])}?" if close else ""
    return f"unknown flag {name}{hint}"


class _Group(simple_parsing.wrappers.DataclassWrapper):
  """A config's flags in ``--help`` under its docstring's first line."""

  @property
  def title(self) -> str:
    doc = (self.dataclass.__doc__ or self.dataclass.__name__).strip()
    return doc.splitlines()[0].rstrip(".")

  @property
  def description(self) -> str:
    return ""


def _dashed(arg: str) -> str:
  """``--a_b=c_d`` -> ``--a-b=c_d``; other arguments unchanged."""
  if not arg.startswith("--"):
    return arg
  name, eq, value = arg.partition("=")
  return name.replace("_", "-") + eq + value


class _HelpFormatter(
  simple_parsing.SimpleHelpFormatter, argparse.RawDescriptionHelpFormatter
):
  """simple_parsing's flags, the description's own line breaks, and
  ``(default: X)`` where the help does not mention it (``None``: the help
  says what happens without the flag)."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    default = action.default
    if (
      not action.option_strings
      or "default" in text
      or default is None
      or default is argparse.SUPPRESS
    ):
      return text
    if isinstance(default, bool):
      shown = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
      shown = " ".join(str(v) for v in default)
    else:
      shown = str(default) if default != "" else '""'
    return f"{text} (default: {shown.replace('%', '%%')})"


def parse(
  argv: Sequence[str] | None,
  *groups: type | Any,
  prog: str,
  description: str = "",
) -> tuple[Any, ...]:
  """Parses ``argv`` (``None``: ``sys.argv``) into one instance per config
  dataclass in ``groups`` (or instance: a preset's defaults), in order.

  Raises:
    SystemExit: status 2 after one error line, 0 after ``--help``.
  """
  parser = ArgumentParser(prog=prog, description=description, groups=groups)
  return parser.parse_groups(argv)[:-1]


def check_values(config: Any) -> None:
  """Checks every value (each of a tuple; ``None`` passes) against its
  field's ``choices`` and ``interval``, and that floats are finite.

  Raises:
    ValueError: naming the flag, the bad value and what is allowed.
  """
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    values = value if isinstance(value, (tuple, list)) else (value,)
    flag = f"--{f.name.replace('_', '-')}"
    for v in (v for v in values if v is not None):  # None: "not given".
      choices = f.metadata.get("allowed")
      if choices is not None and v not in choices:
        raise ValueError(
          f"{flag}={v!r} is not one of {tuple(choices)}; pass "
          f"{flag}=<one of them>."
        )
      if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{flag} must be a finite number, got {v}.")
      interval = f.metadata.get("interval")
      if interval and not interval[0](v):
        raise ValueError(f"{flag} must be {interval[1]}, got {v}.")


def to_dict(config: Any) -> dict[str, Any]:
  """The config as a JSON-ready dict (``dataclasses.asdict``)."""
  return dataclasses.asdict(config)


def from_dict(config_cls: type[T], values: Mapping[str, Any]) -> T:
  """Rebuilds a config from :func:`to_dict` output (``ValueError``: unknown
  fields)."""
  names = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(
      f"Unknown {config_cls.__qualname__} fields {unknown}; the config was "
      "written by another trainer or version."
    )
  return config_cls(**values)
