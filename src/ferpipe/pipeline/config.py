"""Load one section of params.yaml into its typed, validated model.

Config flows one way: params.yaml -> a pydantic model of ferpipe.pipeline.params (validated
here, once) -> plain function arguments. A validation error becomes one line naming the file,
the key path, the rule and the value.
"""
from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any, TypeVar

from ferpipe.errors import FerpipeError

T = TypeVar("T")
PARAMS_FILE = Path("params.yaml")


class PipelineError(FerpipeError):
    """A user-facing problem a stage reports as one line (`run_main`); other ValueErrors are bugs
    and keep their traceback. The message names the file, key or value and what to do."""


class ConfigError(PipelineError):
    """A params value or key is wrong; the message names the key and the file."""


def _where(base: str, loc: tuple) -> str:
    """`params.yaml:train` + ('space', 'optimizer', 0) -> `params.yaml:train.space.optimizer[0]`."""
    out = base
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def from_dict(cls: type[T], raw: Any, where: str) -> T:
    """Validate `raw` into the params model `cls`; the first problem is one ConfigError line
    naming the key path, the rule and the value given."""
    from pydantic import ValidationError

    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.endswith("]")))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(_fields_at(cls, loc[:-1]))
            raise ConfigError(f"{_where(where, loc[:-1])}: unknown key '{loc[-1]}' (allowed: {allowed})") from None
        if first["type"] == "missing":
            raise ConfigError(f"{_where(where, loc[:-1])}: missing required key '{loc[-1]}'") from None
        if first["type"] == "value_error" and not loc:  # a check across fields: the section is named
            raise ConfigError(f"{_where(where, loc)}: {message}") from None
        given = first.get("input")
        message = _rule(first["type"], first.get("ctx") or {}, message)
        hint = ""
        if isinstance(given, str) and first["type"] in ("float_type", "int_type"):
            try:
                float(given)
                hint = f" (YAML reads {given} as text: write it with a dot, e.g. 1.0e-5)"
            except ValueError:
                pass
        raise ConfigError(f"{_where(where, loc)}: {message}, got {given!r}{hint}") from None


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}


def _rule(kind: str, ctx: dict, message: str) -> str:
    """pydantic's message as the rule it states: "must be >= 1", "must be one of a, b, c"."""
    if kind in _BOUNDS:
        sign, key = _BOUNDS[kind]
        return f"must be {sign} {ctx[key]}"
    if kind == "literal_error":
        return "must be one of " + str(ctx["expected"]).replace("'", "").replace(" or ", ", ")
    return message


def _fields_at(cls: Any, loc: tuple) -> list[str]:
    """The field names of the model at `loc` inside `cls` (for an unknown key's message)."""
    model = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part) if isinstance(part, str) else None
        if field is None:
            break
        annotation = field.annotation
        inner = [a for a in typing.get_args(annotation) if hasattr(a, "model_fields")]
        model = annotation if hasattr(annotation, "model_fields") else (inner[-1] if inner else model)
    return list(getattr(model, "model_fields", {}))


def read_params(path: Path | str = PARAMS_FILE) -> dict:
    # Imported here: `ferpipe score` in the core install reads archives through this package's
    # readers, which need PipelineError from this module but not PyYAML (a pipeline extra).
    import yaml

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
