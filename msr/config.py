"""Typed stage configuration: a dataclass per stage, filled from a YAML file and `--key value` overrides.

Parsing is done by transformers' `HfArgumentParser` (types, bools, lists, `--help` from field
metadata). This module adds what it lacks: a YAML file as defaults, read with `yaml.safe_load`'s
loader, and an error that names any key the dataclass does not have, whether it came from the file
or the command line. A silently ignored key is how a run ends up with settings nobody asked for.

Every mistake in a config is a `ConfigError` that names the file, the line and the key or tag, and
says what to do: invalid YAML, a tag outside plain YAML (`!!python/...`: refused, never run), a key
given twice in one mapping (YAML would silently keep the last), an unknown key, a value of the wrong
type, and a command-line value argparse cannot read.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, NoReturn, Sequence, TypeVar

import yaml
from transformers import HfArgumentParser

T = TypeVar("T")
_YAML_TAGS = "tag:yaml.org,2002:"
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_VALUES = 100_000
MAX_INT = 2**31 - 1
# the largest value of a setting that sizes an allocation, by field name (one meaning in every stage that has it)
FIELD_MAX = {"max_len": 100_000, "hidden_size": 65_536, "hidden_dim": 65_536, "embed_dim": 65_536, "layers": 1_024,
             "heads": 1_024, "batch_size": 1 << 20, "encode_batch_size": 1 << 20, "negatives": 100_000,
             "negatives_valid": 100_000, "negatives_test": 100_000, "max_new_tokens": 1 << 20,
             "num_users": 100_000_000, "num_items": 100_000_000, "resamples": 1_000_000, "concurrency": 1_024}


class ConfigError(ValueError):
    """A configuration file or override that does not fit the stage's dataclass."""


class _YamlProblem(yaml.YAMLError):
    """A config mistake found while loading, at `mark`, with the message (and fix) to show."""

    def __init__(self, mark: yaml.Mark, message: str):
        super().__init__(message)
        self.mark, self.message = mark, message


class _ConfigLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader, stricter: a key given twice in one mapping is an error (plain YAML keeps
    the last one silently), and so is a tag it has no constructor for (`!!python/...`), by name."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == _YAML_TAGS + "merge":  # `<<: *defaults`: explicit keys may override merged ones
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:  # unhashable: SafeLoader names it below
                continue
            if seen:
                raise _YamlProblem(key_node.start_mark, f"key {key!r} is given twice (first on line "
                                   f"{first_line[key] + 1}); keep one of them")
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _refuse_tag(loader: _ConfigLoader, node: yaml.Node) -> NoReturn:
    tag = node.tag.replace(_YAML_TAGS, "!!", 1)
    raise _YamlProblem(node.start_mark, f"tag {tag} is not allowed: a config holds plain values (text, numbers, "
                       "true/false, lists, mappings); remove the tag")


_ConfigLoader.add_constructor(None, _refuse_tag)


def _check_size(root: yaml.Node | None) -> None:
    """Refuse a document nested deeper than `MAX_CONFIG_DEPTH` or holding more than `MAX_CONFIG_VALUES` values once
    its aliases are expanded (a few hundred bytes of aliases of aliases stand for billions of values, which any
    use or message would expand), or an alias that refers to itself; before any value is built."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)] if root is not None else []
    open_nodes: set[int] = set()
    while stack:
        node, depth, done = stack.pop()
        if done:
            open_nodes.discard(id(node))
            children = _children(node)
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_CONFIG_VALUES:
                raise _YamlProblem(node.start_mark, f"holds more than {MAX_CONFIG_VALUES} values once its aliases "
                                   "are expanded; a config is a mapping of plain values")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise _YamlProblem(node.start_mark, "an alias here refers to the value that holds it")
        if depth > MAX_CONFIG_DEPTH:
            raise _YamlProblem(node.start_mark, f"nested more than {MAX_CONFIG_DEPTH} levels deep; a config is a "
                               "mapping of plain values")
        open_nodes.add(id(node))
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in _children(node))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _where(path: Path, text: str, mark: yaml.Mark) -> str:
    """`FILE, line N` plus that line's text (which shows the key), for an error message."""
    lines = text.splitlines()
    shown = lines[mark.line].strip() if mark.line < len(lines) else ""
    return f"{path}, line {mark.line + 1}" + (f" ({shown!r})" if shown else "")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping with `safe_load`'s loader (refusing duplicate keys and unsafe tags); an empty file
    is an empty mapping. Every problem is a ConfigError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        _check_size(node)
        data = None if node is None else loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read (a config is a flat mapping of key: value)") from None
    except _YamlProblem as e:
        raise ConfigError(f"{_where(path, text, e.mark)}: {e.message}") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        context = f" ({e.context} on line {e.context_mark.line + 1})" if e.context and e.context_mark else ""
        raise ConfigError(f"{_where(path, text, mark)}: not valid YAML: {e.problem}{context}; fix the syntax there "
                          "(a value that holds ': ' or ' #' needs quotes)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}); fix the file") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def preset_section(values: dict[str, Any], prog: str, path: str | Path) -> dict[str, Any]:
    """A stage's keys from a config file: the file itself, or, in a preset (a file with a `preset:` key: one
    section per command, recipes/movielens), the section named for the command (`data prepare`, `baselines`
    with `baselines train` / `baselines evaluate` over it, `evaluate`...). A preset's other keys (its `preset`
    title, its `published` block, other commands' sections) are not this stage's."""
    if "preset" not in values:
        return values
    words = prog.split()[1:]
    names = [" ".join(words[:n]) for n in range(1, len(words) + 1)]
    merged: dict[str, Any] = {}
    for name in names:
        section = values.get(name)
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{path}: preset section `{name}` must be a mapping of key: value")
        merged.update(section or {})
    if not any(name in values for name in names):
        sections = ", ".join(k for k in values if isinstance(values[k], dict) and k != "published") or "none"
        raise ConfigError(f"{path}: a preset without a section for `{prog}` (its sections: {sections})")
    return merged


class _StageParser(HfArgumentParser):
    """`HfArgumentParser` whose errors (a value it cannot read, a missing required key) are ConfigErrors,
    so `msr` reports them on one line like every other user error, instead of exiting from inside."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (`{self.prog} --help` lists the keys)")


def parse_config(cls: type[T], argv: Sequence[str] = (), prog: str | None = None) -> T:
    """Build `cls` from `--config FILE.yaml` (optional) plus `--key value` overrides in `argv`.

    Command-line values win over the file. Unknown keys in either place raise ConfigError naming them.
    """
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("--config", default=None)
    try:
        known, rest = pre.parse_known_args(list(argv))
    except argparse.ArgumentError as e:
        raise ConfigError(f"{prog or 'msr'}: {e}") from None

    parser = _StageParser(cls, prog=prog)
    parser.add_argument("--config", default=None, help="YAML file whose keys are the options below")
    if known.config is not None:
        values = preset_section(read_yaml(known.config), prog or "msr", known.config)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted((key for key in values if key not in names), key=str)  # a YAML key may be a number
        if unknown:
            raise ConfigError(
                f"{known.config}: unknown key(s) {', '.join(map(str, unknown))} for {cls.__name__}; "
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
    _check_bounds(config)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def _check_bounds(config: Any) -> None:
    """Refuse a number no stage can use before any stage uses it (an integer beyond +-2^31 or a field's own
    limit in `FIELD_MAX`, a float that is NaN or infinite), so that a typo never becomes an allocation of hundreds of
    GB or an overflow deep inside a stage."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name}: {v} is not a finite number")
            limit = FIELD_MAX.get(f.name, MAX_INT)
            if isinstance(v, int) and not -MAX_INT <= v <= limit:
                raise ConfigError(f"{f.name}: {v} is out of range (at most {limit:,})")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value can be held by a field of type `hint` (a list's elements checked too)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for t in allowed:
        if t is type(None) and value is None:
            return True
        origin = typing.get_origin(t) or t
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if origin is int and isinstance(value, bool):
            continue
        if isinstance(origin, type) and isinstance(value, origin):
            element = typing.get_args(t)
            if origin is list and element:
                return all(_fits(v, element[0]) for v in value)
            return True
    return False


def _check_type(source: str, key: str, value: Any, hint: Any) -> None:
    """Reject a YAML value whose type the field cannot hold (argparse only converts strings)."""
    if _fits(value, hint):
        return
    expected = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    raise ConfigError(f"{source}: {key}: {value!r} is not a valid {expected or hint}; give a value of that type")
