"""Load one section of params.yaml into a typed, validated dataclass.

Config flows one way: params.yaml -> dataclass (validated here, once) -> plain
function arguments. The dataclasses live in ferpipe.pipeline.params (those of modules that import
TensorFlow, so params are checked before it loads) or beside their TF-free module (data,
augment); each field declares its type, and numbers their `Range`, here checked on load.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ferpipe.errors import FerpipeError

T = TypeVar("T")
PARAMS_FILE = Path("params.yaml")


class PipelineError(FerpipeError):
    """A user-facing problem a stage reports as one line (`run_main`); other ValueErrors are bugs
    and keep their traceback. The message names the file, key or value and what to do."""


class ConfigError(PipelineError):
    """A params value or key is wrong; the message names the key and the file."""


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclasses.dataclass(frozen=True)
class Range:
    """A numeric param's allowed interval, declared beside its field.

    `learning_rate: Annotated[float, Range(0, 1, min_open=True)]` allows (0, 1]; None is
    unbounded on that side."""
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def __str__(self) -> str:
        low = "-inf" if self.min is None else _num(self.min)
        high = "inf" if self.max is None else _num(self.max)
        left = "(" if self.min_open or self.min is None else "["
        right = ")" if self.max_open or self.max is None else "]"
        return f"{left}{low}, {high}{right}"

    def check(self, value: float, where: str) -> None:
        low_ok = self.min is None or (value > self.min if self.min_open else value >= self.min)
        high_ok = self.max is None or (value < self.max if self.max_open else value <= self.max)
        if not (low_ok and high_ok):  # NaN fails both
            raise ConfigError(f"{where}: {value!r} is out of range {self}")


@dataclasses.dataclass(frozen=True)
class Length:
    """How many items a list param (or characters a string param) may have."""
    min: int = 1
    max: int | None = None
    meaning: str = ""  # e.g. "[min, max]", shown in the error

    def check(self, value: Any, where: str) -> None:
        if len(value) >= self.min and (self.max is None or len(value) <= self.max):
            return
        if isinstance(value, str) or (self.min == 1 and self.max is None):
            raise ConfigError(f"{where}: must not be empty, got {value!r}")
        if self.max == self.min:
            count = f"exactly {self.min}"
        else:
            count = f"{self.min} to {self.max}" if self.max is not None else f"at least {self.min}"
        meaning = f" {self.meaning}" if self.meaning else ""
        raise ConfigError(f"{where}: expected {count} values{meaning}, got {value!r}")


NON_EMPTY = Length(1)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:  # a type plus its declared rules (Range, Length)
        value = _coerce(value, args[0], where)
        for rule in hint.__metadata__:
            if hasattr(rule, "check"):
                rule.check(value, where)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is typing.Literal:
        # `True in (1, 3)` holds in Python; a yes/no is not a kernel size.
        is_bool = isinstance(value, bool) and not any(isinstance(a, bool) for a in args)
        if is_bool or value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return args[args.index(value)]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    hint_text = ""
    if hint is float and isinstance(value, str):
        try:
            float(value)
            hint_text = f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-5)"
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}{hint_text}")


def from_dict(cls: type[T], raw: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys and bad types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, field in fields.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key '{name}'")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    return obj


def read_params(path: Path | str = PARAMS_FILE) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_section(section: str, cls: type[T], path: Path | str = PARAMS_FILE) -> T:
    """Read `section` of params.yaml into `cls`; raises ConfigError naming file and key."""
    params = read_params(path)
    if section not in params:
        raise ConfigError(f"{path}: missing section '{section}'")
    return from_dict(cls, params[section], f"{path}:{section}")


def load_entry(section: str, key: str, cls: type[T], path: Path | str = PARAMS_FILE) -> T:
    """Read `section.key` of params.yaml (one model of a foreach section) into `cls`."""
    entries = read_params(path).get(section)
    if not isinstance(entries, dict) or key not in entries:
        known = sorted(entries) if isinstance(entries, dict) else []
        raise ConfigError(f"{path}: no entry '{key}' in section '{section}' (known: {known})")
    return from_dict(cls, entries[key], f"{path}:{section}.{key}")


def _one_line_errors() -> tuple[type[BaseException], ...]:
    """The error types run_main prints as one line: the project's own, and OSError.

    """
    return (FerpipeError, OSError)  # PipelineError, ImageError and ModelError are FerpipeErrors


def _os_message(err: OSError) -> str:
    """`<path>: <strerror>` (both paths for a rename or copy); str(err) when it names no path."""
    if err.filename is None or not err.strerror:
        return _flat(err)
    paths = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 is not None else "")
    return f"{paths}: {err.strerror}"


def _flat(err: BaseException) -> str:
    """The message on one line (a traceback-free report must not span lines)."""
    return " ".join(str(err).split()) or type(err).__name__


def run_main(main: typing.Callable[[], None]) -> None:
    """Run a stage's main(); print the project's errors and OS errors (disk full, read-only,
    missing file) as one line on stderr and exit 1, an interrupt as one line and exit 130.

    Any other exception (a ValueError from Keras, say) is a bug: it keeps its traceback."""
    try:
        main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        if not isinstance(err, _one_line_errors()):
            raise
        text = _os_message(err) if isinstance(err, OSError) else _flat(err)
        print(f"error: {text}", file=sys.stderr)
        sys.exit(1)
