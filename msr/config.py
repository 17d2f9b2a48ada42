"""Typed stage configuration: a dataclass per stage, filled from a YAML file and `--key value` overrides.

Parsing is done by transformers' `HfArgumentParser` (types, bools, lists, `--help` from field
metadata). This module adds what it lacks: a YAML file as defaults, read with `yaml.safe_load`, and
an error that names any key the dataclass does not have, whether it came from the file or the
command line. A silently ignored key is how a run ends up with settings nobody asked for.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Sequence, TypeVar

import types
import typing

import yaml
from transformers import HfArgumentParser

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that does not fit the stage's dataclass."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping with `safe_load`; an empty file is an empty mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def parse_config(cls: type[T], argv: Sequence[str] = (), prog: str | None = None) -> T:
    """Build `cls` from `--config FILE.yaml` (optional) plus `--key value` overrides in `argv`.

    Command-line values win over the file. Unknown keys in either place raise ConfigError naming them.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(list(argv))

    parser = HfArgumentParser(cls, prog=prog)
    parser.add_argument("--config", default=None, help="YAML file whose keys are the options below")
    if known.config is not None:
        values = read_yaml(known.config)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"{known.config}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
                f"known keys: {', '.join(sorted(names))}"
            )
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            _check_type(known.config, key, value, hints[key])
        for action in parser._actions:
            if action.dest in values:
                action.default = values[action.dest]
                action.required = False
    args = rest + (["--config", known.config] if known.config else [])
    parsed = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=True)
    config, remaining = parsed[0], parsed[-1]
    if remaining:
        raise ConfigError(f"unknown argument(s) for {cls.__name__}: {' '.join(remaining)}")
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def _check_type(source: str, key: str, value: Any, hint: Any) -> None:
    """Reject a YAML value whose type the field cannot hold (argparse only converts strings)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return
        origin = typing.get_origin(t) or t
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if origin is int and isinstance(value, bool):
            continue
        if isinstance(origin, type) and isinstance(value, origin):
            return
    raise ConfigError(f"{source}: {key}: {value!r} is not a valid {hint}")
