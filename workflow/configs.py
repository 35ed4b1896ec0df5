"""Config dataclasses: their fields, flags (simple_parsing) and JSON.

Every entry point (``python -m train.*``, ``python -m eval.*``) describes its
options as one frozen dataclass whose fields are made with :func:`field`
(default, ``--help`` text, allowed values). `simple_parsing
<https://github.com/lebrice/SimpleParsing>`_ turns the dataclass into
``argparse`` flags: ``--num-steps`` or ``--num_steps``, booleans as
``--score``/``--no-score`` or ``--score=false``, the type and default in
``--help``. :func:`parse` returns the config itself (never an
``argparse.Namespace``), so a config built in Python and one parsed from a
command line are the same object, and :func:`to_dict`/:func:`from_dict`
write and read it as JSON.

A bad flag is one line, ``error: <what> (see <prog> --help)``, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import simple_parsing
from simple_parsing.helpers import custom_actions

__all__ = [
  "ArgumentParser",
  "Debug",
  "REQUIRED",
  "check_values",
  "count",
  "field",
  "from_dict",
  "grid_field",
  "parse",
  "to_dict",
]

T = TypeVar("T")
# The default of a field whose flag must be given (``--workdir``).
REQUIRED = dataclasses.MISSING
# The largest seed: JAX and numpy seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1
SEEDS = f"[0, {MAX_SEED}]"  # The interval of a seed field.


def count(text: str) -> int:
  """Parses a whole number, also written as ``3e5`` (the paper's steps).

  Raises:
    argparse.ArgumentTypeError: ``text`` is not a whole number.
  """
  try:
    return int(text)
  except ValueError:
    pass
  try:
    value = float(text)
  except ValueError:
    value = float("nan")
  if not value.is_integer():
    raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
  return int(value)


count.__name__ = "int"  # The metavar in --help.


class _Interval(NamedTuple):
  low: float
  high: float
  closed_low: bool
  closed_high: bool
  words: str  # ">= 1", "> 0", "in [0, 1)"

  def contains(self, value: float) -> bool:
    above = value >= self.low if self.closed_low else value > self.low
    below = value <= self.high if self.closed_high else value < self.high
    return above and below


def _interval(text: str) -> _Interval:
  """``"[1, inf)"`` -> an :class:`_Interval` (a config's definition error
  raises ``ValueError`` at import)."""
  match = re.fullmatch(r"([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])", text)
  if match is None:
    raise ValueError(f"Not an interval: {text!r}; write e.g. '[1, inf)'.")
  opening, low, high, closing = match.groups()
  low, high = float(low), float(high)
  closed_low, closed_high = opening == "[", closing == "]"
  number = lambda x: int(x) if x.is_integer() else x  # noqa: E731
  if math.isinf(high):
    words = f"{'>=' if closed_low else '>'} {number(low)}"
  elif math.isinf(low):
    words = f"{'<=' if closed_high else '<'} {number(high)}"
  else:
    words = f"in {text}"
  return _Interval(low, high, closed_low, closed_high, words)


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

  Args:
    default: the value without the flag (a tuple for a list field;
      :data:`REQUIRED`: the flag must be given).
    help: one line for ``--help`` (plain text).
    choices: the allowed values; checked by the parser and by
      :func:`check_values` (also for configs built in Python).
    alias: more flag names (``"--data-path"``).
    type: the parser of one value (default: :func:`count` for an ``int``
      default, so ``--num-steps=3e5`` works; else from the annotation).
    positional: a positional argument instead of ``--name``.
    nargs: ``"*"`` for a tuple field with ``choices``.
    metavar: the value's name in ``--help`` and errors (positionals).
    switch: a ``bool`` or ``bool | None`` field: ``--name``, ``--no-name``
      or ``--name=false`` (default: whether ``default`` is a bool).
    interval: the allowed values in interval notation, ``[`` and ``]``
      inclusive, ``(`` and ``)`` exclusive: ``"[1, inf)"`` (counts),
      ``"(0, inf)"`` (learning rates), ``"[0, 1)"`` (Adam's betas).
    metadata: more ``dataclasses.field`` metadata (e.g. ``grid``).
  """
  kwargs: dict[str, Any] = {}
  if choices is not None:
    kwargs["choices"] = tuple(choices)
  if (
    type is None and isinstance(default, int) and not isinstance(default, bool)
  ):
    type = count  # noqa: A001 (the argparse name)
  if type is not None:
    kwargs["type"] = type
  if nargs is not None:
    kwargs["nargs"] = nargs
  if metavar is not None:
    kwargs["metavar"] = metavar
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
      "interval": None if interval is None else _interval(interval),
      **(metadata or {}),
    },
    **kwargs,
  )


def _one_value(tp: type, text: str) -> Any:
  if tp is int:
    return count(text)
  if tp is float:
    try:
      return float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
        f"expected a number, got {text!r}"
      ) from None
  return text


def grid_field(
  default: Any,
  help: str,  # noqa: A002 (the argparse name)
  choices: Sequence[Any] | None = None,
  *,
  alias: str | Sequence[str] = (),
  interval: str | None = None,
) -> Any:
  """A config field whose flag also takes a comma list (a grid).

  The flag's value is a tuple of values (one without a comma), none
  repeated; :func:`check_values` checks each against ``choices`` and
  ``interval``.
  ``train.flags.parse_flags`` expands the tuples into one config per
  combination.
  """
  tp = type(default)

  def parse(text: str) -> tuple[Any, ...]:
    values = tuple(_one_value(tp, v.strip()) for v in text.split(","))
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
  """Error reporting (every entry point).

  Attributes:
    debug: show the traceback of a user error instead of one line.
  """

  debug: bool = field(
    False, "show the full traceback of an error (also: VAE_ATTN_DEBUG=1)"
  )


class ArgumentParser(simple_parsing.ArgumentParser):
  """``simple_parsing.ArgumentParser`` with this project's conventions.

  Flags are shown with dashes and also read with underscores
  (``--num_steps``), the description keeps its layout, and a
  bad flag prints one line, ``error: <what> (see <prog> --help)``, then
  exits with status 2 (no usage block).
  """

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
    """The config of every group, then the namespace of other arguments.

    Raises:
      SystemExit: status 2 after one error line (a bad flag, a value outside
        a field's choices, or a ``ValueError`` of a config's
        ``__post_init__``), 0 after ``--help``.
    """
    try:
      args = self.parse_args(argv)
    except ValueError as e:  # A config's __post_init__ refused a value.
      self.error(str(e))
    parsed = tuple(getattr(args, d) for d in self._group_dests)
    for config in parsed:
      try:
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
  """simple_parsing's flags, the description's own line breaks.

  A flag whose help does not mention its default gets ``(default: X)``
  (switches: on/off); a flag whose default is ``None`` says in its help what
  happens without it.
  """

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
  """Parses ``argv`` into one instance per config dataclass in ``groups``.

  Args:
    argv: the arguments without the program name (``None``: ``sys.argv``).
    *groups: config dataclasses, or instances of them whose values are the
      defaults (a preset); their field names and class names must differ.
    prog: the program name in ``--help`` and errors.
    description: the ``--help`` text (the module docstring).

  Returns:
    The instances, in the order of ``groups``.

  Raises:
    SystemExit: status 2 after one error line (a bad flag, or a
      ``ValueError`` of a config's ``__post_init__``), 0 after ``--help``.
  """
  parser = ArgumentParser(prog=prog, description=description, groups=groups)
  return parser.parse_groups(argv)[:-1]


def check_values(config: Any) -> None:
  """Checks every field against its ``choices`` and ``interval``, and that
  float values are finite (configs built in Python too). ``None``
  (an optional field not given) passes; a tuple (a grid) is checked value
  by value.

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
      if interval is not None and not interval.contains(v):
        raise ValueError(f"{flag} must be {interval.words}, got {v}.")


def to_dict(config: Any) -> dict[str, Any]:
  """The config as a JSON-ready dict (``dataclasses.asdict``)."""
  return dataclasses.asdict(config)


def from_dict(config_cls: type[T], values: Mapping[str, Any]) -> T:
  """Rebuilds a config from :func:`to_dict` output.

  Raises:
    ValueError: ``values`` names fields ``config_cls`` does not have.
  """
  names = {f.name for f in dataclasses.fields(config_cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(
      f"Unknown {config_cls.__qualname__} fields {unknown}; the config was "
      "written by another trainer or version."
    )
  return config_cls(**values)
