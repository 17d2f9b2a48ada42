"""Every recipe YAML parses against its stage's dataclass and opens with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from msr.config import parse_config
from msr.data.prepare import PrepareConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STAGES = {"data.yaml": (PrepareConfig, "msr data prepare --config")}


@pytest.mark.parametrize("path", sorted(p for p in RECIPES.glob("*/*.yaml") if p.name in STAGES),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses_and_names_its_command(path: Path) -> None:
    config_class, command = STAGES[path.name]
    first_line = path.read_text().splitlines()[0]
    relative = path.relative_to(RECIPES.parent).as_posix()
    assert first_line == f"# {command} {relative}"
    parse_config(config_class, ["--config", str(path)])


def test_every_recipe_is_covered() -> None:
    yamls = list(RECIPES.glob("*/*.yaml"))
    assert yamls and all(p.name in STAGES for p in yamls)
