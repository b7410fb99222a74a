"""Config dataclasses validated by pydantic: every config file and every ``--set KEY=VALUE``.

A config is a dataclass declared with :func:`config`; its field types, defaults and
``pydantic.Field`` constraints are its whole validation, and unknown fields are refused, in
nested sections too. What users give (YAML files, command-line overrides) is validated
strictly by :func:`parse`: 5.5 is not an integer, 1 is not a boolean, a section must be a
mapping. Every problem becomes one :class:`ConfigError` line that names the key, e.g.
``training config: steps: must be a valid integer, not 5.5``. Configs built in Python are
validated too (laxly: a nested section may be given as a dict).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from ctlab.errors import UserError

T = TypeVar("T")
Fraction = Annotated[float, Field(ge=0, le=1)]  # a share or a ratio: 0..1


class ConfigError(UserError):
    """A config file or override that does not fit its config's declaration."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does: ``3e-4`` is a number, not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_value(text: str) -> Any:
    """``text`` read as YAML (1.2 floats); yaml.YAMLError when it is not valid YAML."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects


def config(cls: type[T]) -> type[T]:
    """Declare a config dataclass (a pydantic dataclass that refuses unknown fields)."""
    return pydantic_dataclass(cls, config=ConfigDict(extra="forbid"))


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe(error: ValidationError) -> str:
    """The problems of a pydantic ValidationError as one line, each naming its key."""
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"] if part != "[key]"]
        if item["type"] == "unexpected_keyword_argument":
            where = ".".join(loc[:-1])
            problems.append(f"{where + ': ' if where else ''}unknown field {loc[-1]!r}")
            continue
        message = item["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        message = message.replace("must be an object", "must be a mapping").replace("a valid array", "a list")
        if item["type"] == "missing_argument":
            message = "is required"
        elif item["type"] != "value_error":
            message += f", not {_shown(item['input'])}"
        problems.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return "; ".join(problems)


def parse(cls: type[T], data: Any, where: str) -> T:
    """``data`` (as read from YAML or JSON) validated strictly into config ``cls``; a
    :class:`ConfigError` prefixed with ``where`` otherwise."""
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: holds a value that is not a number, string, list or mapping ({err})") from None
    try:
        return _adapter(cls).validate_json(text, strict=True)
    except ValidationError as err:
        raise ConfigError(f"{where}: {describe(err)}") from None


def read_yaml(path: str | Path, what: str) -> dict:
    """The mapping a YAML file holds (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        data = yaml_value(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} is a mapping of fields, not {type(data).__name__}")
    return data


def to_dict(instance: Any) -> dict:
    return dataclasses.asdict(instance)


def set_key(data: dict, assignment: str) -> None:
    """Apply ``KEY=VALUE`` (the value read as YAML) to ``data`` (see :func:`put`)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"bad --set {assignment!r}: expected KEY=VALUE")
    try:
        value = yaml_value(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: {raw!r} is not a valid YAML value") from None
    put(data, key.strip(), value)


def put(data: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` in ``data``, a config as a dict: each dot reaches into a section or a
    mapping, at any depth. Whether the key exists and the value fits is for :func:`parse` to say."""
    *sections, name = key.split(".")
    target = data
    for depth, section in enumerate(sections):
        target = target.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{key}: {'.'.join(sections[: depth + 1])} is a value, not a section")
    target[name] = value


def overlay(instance: Any, changes: dict) -> dict:
    """Config ``instance`` as a dict with ``changes`` on top: a section (a nested config) is
    changed field by field, any other field replaced whole."""
    data = dataclasses.asdict(instance)
    for key, value in changes.items():
        current = getattr(instance, key, None)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            data[key] = overlay(current, value)
        else:
            data[key] = value
    return data
