"""Stage configs: YAML + overrides, unknown keys and mistyped values are errors that name them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from msr.config import ConfigError, parse_config


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
    with pytest.raises(yaml.YAMLError):
        parse_config(Example, ["--config", _yaml(tmp_path, "run_dir: !!python/object/apply:os.system ['true']\n")])
