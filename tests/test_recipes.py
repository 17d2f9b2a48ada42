"""Every recipe YAML parses against its stage's dataclass and opens with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from msr.config import parse_config
from msr.data.prepare import PrepareConfig
from msr.summarize.config import SummarizeConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# file-name prefix -> (config class, the commands its first line must give)
STAGES = {
    "data": (PrepareConfig, ("msr data prepare",)),
    "summarize": (SummarizeConfig, ("msr summarize items", "msr summarize users")),
}


def _stage(path: Path) -> str:
    return path.stem.split("_")[0]


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses_and_names_its_command(path: Path) -> None:
    assert _stage(path) in STAGES, f"{path.name}: no stage known for this recipe"
    config_class, commands = STAGES[_stage(path)]
    relative = path.relative_to(RECIPES.parent).as_posix()
    expected = "# " + " && ".join(f"{command} --config {relative}" for command in commands)
    assert path.read_text().splitlines()[0] == expected
    parse_config(config_class, ["--config", str(path)])
