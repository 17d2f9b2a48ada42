"""The baseline recipes parse as BaselineConfig and open with the command that runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from msr.baselines.config import BaselineConfig
from msr.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes" / "baselines").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_names_its_command(path: Path) -> None:
    relative = path.relative_to(ROOT).as_posix()
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == f"# msr baselines train --config {relative} && msr baselines evaluate --config {relative}"
    cfg = parse_config(BaselineConfig, ["--config", str(path)])
    assert cfg.output == f"{cfg.model}_scores.parquet" and (ROOT / "recipes" / "baselines" / "README.md").read_text(
        encoding="utf-8").count(path.name)


def test_there_are_recipes() -> None:
    assert {p.name for p in RECIPES} == {"quickstart.yaml", "microlens.yaml"}
