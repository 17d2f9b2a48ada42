"""Stage configs: YAML + overrides, unknown keys and mistyped values are errors that name them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from msr.config import ConfigError, parse_config, read_yaml


@dataclass
class Example:
    run_dir: str = field(metadata={"help": "where"})
    k: int = 5
    rate: float = 0.5
    flag: bool = False
    path: str | None = None
    names: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.k < 0:
            raise ValueError("k must be >= 0")


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    cfg_file = _yaml(tmp_path, "run_dir: r\nk: 7\nflag: true\nnames: [a, b]\nrate: 1\n")
    assert parse_config(Example, ["--config", cfg_file]) == Example("r", 7, 1, True, None, ["a", "b"])
    cfg = parse_config(Example, ["--config", cfg_file, "--k", "9", "--flag", "false", "--path", "p"])
    assert (cfg.k, cfg.flag, cfg.path, cfg.run_dir) == (9, False, "p", "r")
    assert parse_config(Example, ["--run_dir", "x"]).k == 5


@pytest.mark.parametrize("text, message", [
    ("run_dir: r\nkk: 1\n", "unknown key\\(s\\) kk"),
    ("run_dir: r\nk: abc\n", "k: 'abc' is not a valid"),
    ("run_dir: r\nk: true\n", "k: True is not a valid"),
    ("run_dir: r\nk: 1.5\n", "k: 1.5 is not a valid"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_bad_yaml_is_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(Example, ["--config", _yaml(tmp_path, text)])


def test_unknown_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--bogus"):
        parse_config(Example, ["--run_dir", "x", "--bogus", "1"])
    with pytest.raises(ConfigError, match="not found"):
        parse_config(Example, ["--config", str(tmp_path / "none.yaml")])


def test_validate_runs_and_yaml_is_safe_loaded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="k must be"):
        parse_config(Example, ["--run_dir", "x", "--k", "-1"])
    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match=r"line 1 .*tag !!python/object/apply:os.system is not allowed"):
        parse_config(Example, ["--config", _yaml(tmp_path, f"run_dir: !!python/object/apply:os.system "
                                                           f"['touch {marker}']\n")])
    assert not marker.exists()


@pytest.mark.parametrize("text, message", [
    ("run_dir: r\nk: 1\nk: 2\n", r"c.yaml, line 3 \('k: 2'\): key 'k' is given twice \(first on line 2\); keep one"),
    ("run_dir: r\nnames: [a, b\n", r"c.yaml, line 3: not valid YAML: expected ',' or ']'.*flow sequence on line 2"),
    ("run_dir: r\n  k: 2\n", r"c.yaml, line 2 \('k: 2'\): not valid YAML: mapping values are not allowed"),
    ("run_dir: !!python/name:os.system\n", r"line 1 .*tag !!python/name:os.system is not allowed.*remove the tag"),
    ("run_dir: !custom x\n", r"tag !custom is not allowed"),
])
def test_yaml_mistakes_name_the_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(Example, ["--config", _yaml(tmp_path, text)])


def test_what_safe_load_accepts_is_unchanged(tmp_path: Path) -> None:
    """Merge keys may override, equal keys in different mappings are fine, list items may repeat."""
    text = "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\ne: {x: 1}\nnames: [a, a]\n"
    assert read_yaml(_yaml(tmp_path, text)) == yaml.safe_load(text)


def test_not_utf8_and_unreadable_overrides_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"run_dir: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_config(Example, ["--config", str(path)])
    with pytest.raises(ConfigError, match=r"argument --k: invalid int value: 'abc'.*--help"):
        parse_config(Example, ["--run_dir", "x", "--k", "abc"], prog="msr x")
    with pytest.raises(ConfigError, match="required: --run_dir"):
        parse_config(Example, [], prog="msr x")
