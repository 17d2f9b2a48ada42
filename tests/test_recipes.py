"""Every recipe YAML parses against its stage's dataclasses and opens with the command that runs it.

Which stage a YAML belongs to (the convention recipes/README.md documents):
- `recipes/accelerate/*.yaml`: accelerate configs, read by accelerate's own loader;
- `sft_data*.yaml`: `msr data sft` (SftDataConfig);
- `data*.yaml`: `msr data prepare` (PrepareConfig);
- `summarize*.yaml`: `msr summarize items` and `users` (SummarizeConfig);
- `recipes/graph/*.yaml`: `msr graph train` and `evaluate` (GraphConfig), named by dataset;
- any other YAML with a `model_name_or_path` key: a training recipe for `recipes/sft.py`, parsed exactly as the
  script parses it, by TRL's TrlParser over (SftScriptArguments, SFTConfig, ModelConfig).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from msr.config import parse_config
from msr.data.prepare import PrepareConfig
from msr.data.sft import SftDataConfig
from msr.graph.config import GraphConfig
from msr.summarize.config import SummarizeConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
ACCELERATE = RECIPES / "accelerate"
SFT_SCRIPT = "recipes/sft.py"
# file-name prefix -> (config class, the commands its first line must give); the longest prefix wins
STAGES = {
    "sft_data": (SftDataConfig, ("msr data sft",)),
    "data": (PrepareConfig, ("msr data prepare",)),
    "summarize": (SummarizeConfig, ("msr summarize items", "msr summarize users")),
    "graph": (GraphConfig, ("msr graph train", "msr graph evaluate")),
}
ALL_YAML = sorted(RECIPES.glob("*/*.yaml"))
STAGE_YAML = [p for p in ALL_YAML if p.parent != ACCELERATE]
ACCELERATE_YAML = sorted(ACCELERATE.glob("*.yaml"))


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0]


def _stage(path: Path) -> str | None:
    if path.parent == RECIPES / "graph":
        return "graph"
    for prefix in sorted(STAGES, key=len, reverse=True):
        if path.stem == prefix or path.stem.startswith(prefix + "_"):
            return prefix
    return None


def _is_training_recipe(path: Path) -> bool:
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return _stage(path) is None and "model_name_or_path" in values


def _can_run_bf16_on_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@pytest.mark.parametrize("path", STAGE_YAML, ids=_id)
def test_every_recipe_has_a_known_stage(path: Path) -> None:
    assert _stage(path) or _is_training_recipe(path), (
        f"{path.name}: no stage known for this recipe (name it data*, summarize*, sft_data*, or give a training "
        "recipe its model_name_or_path)")


@pytest.mark.parametrize("path", [p for p in STAGE_YAML if _stage(p)], ids=_id)
def test_stage_recipe_parses_and_names_its_command(path: Path) -> None:
    config_class, commands = STAGES[_stage(path)]
    relative = _relative(path)
    expected = "# " + " && ".join(f"{command} --config {relative}" for command in commands)
    assert _first_line(path) == expected
    parse_config(config_class, ["--config", str(path)])


@pytest.mark.parametrize("path", [p for p in STAGE_YAML if _is_training_recipe(p)], ids=_id)
def test_training_recipe_parses_and_names_its_command(path: Path) -> None:
    from trl import ModelConfig, SFTConfig, TrlParser

    from msr.train import SftScriptArguments, _check

    # The first line is the launch command, naming this very file, with an accelerate config that exists.
    words = shlex.split(_first_line(path).removeprefix("#"))
    assert words[:2] == ["accelerate", "launch"], f"{path.name}: first line must be `# accelerate launch ...`"
    assert words[-3:] == [SFT_SCRIPT, "--config", _relative(path)], (
        f"{path.name}: first line must end with `{SFT_SCRIPT} --config {_relative(path)}`")
    if "--config_file" in words:
        config_file = ROOT / words[words.index("--config_file") + 1]
        assert config_file.parent == ACCELERATE and config_file.is_file(), f"{path.name}: no such {config_file}"

    # Parse as recipes/sft.py does: TrlParser rejects any key none of the three dataclasses has, and converts every
    # value to its field's type. SFTConfig's __post_init__ then checks the hardware: bf16 without a bf16-capable GPU
    # raises "Your setup doesn't support bf16/gpu". So on a machine without one, a GPU recipe is parsed with
    # `--use_cpu true --bf16 false` added on the command line (which wins over the file), only for this check. That
    # override replaces two values, it does not skip any key: the file's keys all go through the same parser, and
    # the two values the file itself gives are checked against the raw YAML below.
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    gpu_recipe = not values.get("use_cpu", False)
    overrides = ["--use_cpu", "true", "--bf16", "false"] if gpu_recipe and not _can_run_bf16_on_gpu() else []
    parser = TrlParser((SftScriptArguments, SFTConfig, ModelConfig))
    script, training, model = parser.parse_args_and_config(args=["--config", str(path), *overrides])
    _check(training, model)  # the checks msr.train.train runs before loading anything (max_length null, ...)
    assert script.run_dir and training.output_dir and model.model_name_or_path
    if gpu_recipe:
        assert values.get("bf16") is True and values.get("dtype") == "bfloat16", f"{path.name}: a GPU recipe trains in bf16"
    else:
        assert values.get("bf16") is False and training.bf16 is False, f"{path.name}: a CPU recipe must set bf16: false"


@pytest.mark.parametrize("path", ACCELERATE_YAML, ids=_id)
def test_accelerate_config_loads_and_names_a_command(path: Path) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(path))  # what `accelerate launch --config_file` reads; unknown keys raise
    assert isinstance(config, ClusterConfig)
    words = shlex.split(_first_line(path).removeprefix("#"))
    assert words[:4] == ["accelerate", "launch", "--config_file", _relative(path)], (
        f"{path.name}: first line must be `# accelerate launch --config_file {_relative(path)} ...`")
    assert SFT_SCRIPT in words and words[-2] == "--config" and (ROOT / words[-1]).is_file(), (
        f"{path.name}: first line must launch {SFT_SCRIPT} on an existing recipe")


def test_index_lists_every_recipe() -> None:
    index = (RECIPES / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`([\w./-]+\.yaml)`", index))
    missing = [p.relative_to(RECIPES).as_posix() for p in ALL_YAML if p.relative_to(RECIPES).as_posix() not in listed]
    assert not missing, f"recipes/README.md does not list: {', '.join(missing)}"
