"""Every recipe YAML parses against its stage's dataclasses and opens with the command that runs it.

Which stage a YAML belongs to (the convention recipes/README.md documents):
- `recipes/accelerate/*.yaml`: accelerate configs, read by accelerate's own loader;
- `sft_data*.yaml`: `msr data sft` (SftDataConfig);
- `data*.yaml`: `msr data prepare` (PrepareConfig);
- `summarize*.yaml`: `msr summarize items` and `users` (SummarizeConfig);
- `recipes/graph/*.yaml`: `msr graph train` and `evaluate` (GraphConfig), named by dataset;
- any other YAML with a `model_name_or_path` key: a training recipe for `recipes/sft.py`, parsed exactly as the
  script parses it, by TRL's TrlParser over (SftScriptArguments, SFTConfig, ModelConfig).

Every training recipe also trains for 2 real steps on the CPU, through that same parse and `msr.train.train`, on a
tiny random model (`msr.tiny`) of the recipe's model family, with only the model, data and output paths, the
step/logging/saving cadence and the GPU-only settings (bf16, dtype, fused optimizer, dataloader workers) overridden.
A recipe whose model family `msr.tiny` cannot build fails.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from msr.baselines.config import BaselineConfig
from msr.config import parse_config
from msr.data.prepare import PrepareConfig
from msr.data.sft import SftDataConfig, write_sft_rows
from msr.evaluate import EvaluateConfig
from msr.graph.config import GraphConfig
from msr.score_split import ScoreConfig
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
    "baselines": (BaselineConfig, ("msr baselines train", "msr baselines evaluate")),
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
    if path.parent in (RECIPES / "graph", RECIPES / "baselines"):
        return path.parent.name
    for prefix in sorted(STAGES, key=len, reverse=True):
        if path.stem == prefix or path.stem.startswith(prefix + "_"):
            return prefix
    return None


def _is_training_recipe(path: Path) -> bool:
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return _stage(path) is None and "model_name_or_path" in values


def _is_preset(path: Path) -> bool:
    return "preset" in (yaml.safe_load(path.read_text(encoding="utf-8")) or {})


# a preset's sections: the command whose section it is, and that command's config class
PRESET_SECTIONS = {"data prepare": ("msr data prepare", PrepareConfig),
                   "baselines": ("msr baselines train", BaselineConfig),
                   "data sft": ("msr data sft", SftDataConfig),
                   "score": ("msr score", ScoreConfig),
                   "evaluate": ("msr evaluate", EvaluateConfig)}


def _can_run_bf16_on_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@pytest.mark.parametrize("path", STAGE_YAML, ids=_id)
def test_every_recipe_has_a_known_stage(path: Path) -> None:
    assert _stage(path) or _is_training_recipe(path) or _is_preset(path), (
        f"{path.name}: no stage known for this recipe (name it data*, summarize*, sft_data*, or give a training "
        "recipe its model_name_or_path)")


@pytest.mark.parametrize("path", [p for p in STAGE_YAML if _stage(p)], ids=_id)
def test_stage_recipe_parses_and_names_its_command(path: Path) -> None:
    config_class, commands = STAGES[_stage(path)]
    relative = _relative(path)
    expected = "# " + " && ".join(f"{command} --config {relative}" for command in commands)
    assert _first_line(path) == expected
    parse_config(config_class, ["--config", str(path)])


@pytest.mark.parametrize("path", [p for p in STAGE_YAML if _is_preset(p)], ids=_id)
def test_preset_sections_parse_and_its_commands_come_first(path: Path) -> None:
    """Each section of a preset parses as its command reads it, the header gives every command in the order they
    run (prepare first, evaluate last), and its published block reads."""
    from msr.published import read_published

    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    header = [line.removeprefix("# ") for line in path.read_text(encoding="utf-8").splitlines()
              if line.startswith("# msr ")]
    assert header[0] == f"msr data prepare --config {_relative(path)}"
    assert header[-1] == f"msr evaluate --config {_relative(path)}"
    for section, (command, config_class) in PRESET_SECTIONS.items():
        assert section in values, f"{path.name}: no `{section}` section"
        parse_config(config_class, ["--config", str(path), "--run_dir", "x"], prog=command)
    assert read_published(path)["rows"]


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


# --- every training recipe trains: 2 real steps on a tiny random model of the recipe's family, on the CPU

# hub id patterns (lower case) -> the msr.tiny family standing in for that checkpoint; the first match wins
HUB_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"qwen2-vl|qwen2_vl", "qwen2_vl"),
    (r"qwen2\.5-vl|qwen2_5_vl", "qwen2_5_vl"),
    (r"qwen3-vl|qwen3_vl", "qwen3_vl"),
    (r"llava-v1\.6|llava-next|llava_next", "llava_next"),
    (r"smolvlm|idefics3", "idefics3"),
    (r"llava-1\.5|llava-v1\.5", "llava"),
    # text-only chat LMs (the text recommender): msr.tiny's Llama with a string-only ChatML template
    (r"qwen2\.5-\d|qwen3-\d|llama-2|llama-3|smollm", "text"),
)
# config.json model_type of a local checkpoint -> family
MODEL_TYPE_FAMILIES = {"llava": "llava", "llava_next": "llava_next", "idefics3": "idefics3", "qwen2_vl": "qwen2_vl",
                       "qwen2_5_vl": "qwen2_5_vl", "qwen3_vl": "qwen3_vl", "llama": "text"}
# settings that only a GPU can run, replaced for the CPU; everything else in a recipe stays as it is
CPU_OVERRIDES = {"use_cpu": "true", "bf16": "false", "dtype": "float32", "dataloader_num_workers": "0"}
# module names that must never be LoRA-wrapped (vision tower, projector/connector, merger, lm_head)
NOT_LANGUAGE_MODEL = ("vision", "visual", "projector", "connector", "merger", "lm_head")
TRAINING_YAML = [p for p in STAGE_YAML if _is_training_recipe(p)]


def _documented_tiny_family(model: str) -> str | None:
    """The family of `msr tiny --out_dir <model> --family <f>` where the recipes document that command."""
    pattern = re.compile(rf"msr tiny --out_dir {re.escape(model)} --family (\w+)")
    for doc in sorted(RECIPES.rglob("*")):
        if doc.suffix in (".md", ".yaml") and (found := pattern.search(doc.read_text(encoding="utf-8"))):
            return found.group(1)
    return None


def tiny_family(model: str) -> str | None:
    """The tiny family standing in for a recipe's model_name_or_path, or None when msr.tiny has none.

    A hub id maps by name; a local checkpoint (e.g. one `msr tiny` wrote) by its config.json model_type, or, when
    it has not been built yet, by the `msr tiny ... --family` command the recipes give for it."""
    config = ROOT / model / "config.json"
    if config.is_file():
        return MODEL_TYPE_FAMILIES.get(json.loads(config.read_text(encoding="utf-8")).get("model_type"))
    for pattern, family in HUB_FAMILIES:
        if re.search(pattern, model.lower()):
            return family
    documented = _documented_tiny_family(model)
    return documented if documented in MODEL_TYPE_FAMILIES.values() else None


@pytest.mark.parametrize(("model", "family"), [
    ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"), ("Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl"),
    ("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next"), ("llava-hf/llama3-llava-next-8b-hf", "llava_next"),
    ("HuggingFaceTB/SmolVLM-500M-Instruct", "idefics3"), ("HuggingFaceM4/Idefics3-8B-Llama3", "idefics3"),
    ("llava-hf/llava-1.5-7b-hf", "llava"), ("runs/quickstart-recipe/models/vlm", "llava"),
    ("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl"), ("google/gemma-3-4b-it", None), ("runs/nowhere/models/vlm", None),
    ("Qwen/Qwen2.5-1.5B-Instruct", "text"), ("meta-llama/Meta-Llama-3-8B-Instruct", "text"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "text"), ("meta-llama/Llama-2-7b-chat-hf", "text")])
def test_tiny_family_of_a_model_name(model: str, family: str | None) -> None:
    assert tiny_family(model) == family


@pytest.fixture(scope="module")
def recipe_rows(tiny_run_template: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A private copy of the tiny prepared run with SFT rows (rows do not depend on the model family, so one run
    serves every recipe), and a cache of tiny models, one per family, built on first use."""
    import shutil

    import pandas as pd

    run = tmp_path_factory.mktemp("recipe_rows") / "run"
    shutil.copytree(tiny_run_template["run"], run)
    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, history_titles=3))
    return {"run": run, "titles": pd.read_parquet(run / "items.parquet")["title"].tolist(), "models": {},
            "root": tmp_path_factory.mktemp("recipe_models")}


def _tiny_model(rows: dict, family: str) -> str:
    from msr.tiny import build_tiny_lm, build_tiny_vlm

    if family not in rows["models"]:
        folder = rows["root"] / family
        rows["models"][family] = str(build_tiny_lm(folder, rows["titles"]) if family == "text" else
                                     build_tiny_vlm(folder, family, rows["titles"], seed=0))
    return rows["models"][family]


@pytest.mark.parametrize("path", TRAINING_YAML, ids=_id)
def test_training_recipe_trains_two_steps_on_a_tiny_model(path: Path, recipe_rows: dict, tmp_path: Path) -> None:
    from trl import ModelConfig, SFTConfig, TrlParser

    from msr.tiny import VLM_FAMILIES
    from msr.train import SftScriptArguments, build_trainer, train

    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    model = str(values["model_name_or_path"])
    family = tiny_family(model)
    if family is None:
        pytest.fail(f"{path.name}: no tiny model family for model_name_or_path {model!r}, so this recipe cannot be "
                    f"smoke-tested; msr.tiny builds {', '.join(VLM_FAMILIES)}: add the family there and to "
                    "HUB_FAMILIES in tests/test_recipes.py, or use a model of a supported family")
    batch = int(values.get("per_device_train_batch_size", 8)) * int(values.get("gradient_accumulation_steps", 1))
    overrides = {
        **CPU_OVERRIDES, "model_name_or_path": _tiny_model(recipe_rows, family),
        "run_dir": str(recipe_rows["run"]), "output_dir": str(tmp_path / "out"), "max_train_rows": str(2 * batch),
        "max_eval_rows": "4", "max_steps": "2", "logging_steps": "1", "eval_strategy": "no", "save_strategy": "no",
        "report_to": "none"}
    if "fused" in str(values.get("optim", "")):
        overrides["optim"] = "adamw_torch"  # the fused AdamW kernels are GPU-only
    parser = TrlParser((SftScriptArguments, SFTConfig, ModelConfig))  # as recipes/sft.py parses the recipe
    script, training, model_cfg = parser.parse_args_and_config(
        args=["--config", str(path), *(word for key, value in overrides.items() for word in (f"--{key}", value))])

    if model_cfg.load_in_4bit:
        # No final evaluation for a 4-bit recipe here: in eval mode on a CPU with AVX512-BF16, bitsandbytes repacks
        # 4-bit weights in blocks of 64 input features, which the tiny vision tower's 32-wide layers do not fill
        # ("shape '[96, 0]' is invalid"); real checkpoints' layers are multiples of 64, and training is unaffected.
        script = dataclasses.replace(script, eval_split=None)
    trainer = build_trainer(script, training, model_cfg)  # what train() builds itself when given none
    if script.max_pixels:  # the recipe's image cap reached the processor
        assert trainer.processing_class.image_processor.size.longest_edge == script.max_pixels
    out = train(script, training, model_cfg, trainer)

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), losses
    assert (out / "README.md").is_file()
    if not model_cfg.use_peft:
        assert (out / "model.safetensors").is_file() or any(out.glob("model-*.safetensors")), sorted(out.iterdir())
        return
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    # LoRA wraps only linear layers of the language model: no vision tower, projector/connector, merger or lm_head,
    # unless the recipe lists that module in lora_modules_to_save; nothing but the adapters (and those modules) trains
    base = trainer.model.get_base_model()
    in_decoder = {id(m) for m in base.get_decoder().modules()}
    to_save = tuple(model_cfg.lora_modules_to_save or ())

    def listed(name: str) -> bool:
        return any(f".{keep}." in f".{name}." for keep in to_save)

    wrapped = {name: m for name, m in base.named_modules() if hasattr(m, "lora_A")}
    assert wrapped, f"{path.name}: no module got LoRA weights"
    wrong = [name for name, m in wrapped.items() if not listed(name) and (
        id(m) not in in_decoder or any(part in name for part in NOT_LANGUAGE_MODEL)
        or not isinstance(m.get_base_layer(), torch.nn.Linear))]
    assert not wrong, f"{path.name}: LoRA on modules that are not linear layers of the language model: {wrong}"
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    unexpected = [name for name in trainable if "lora_" not in name and not listed(name)]
    assert not unexpected, f"{path.name}: trainable besides LoRA and lora_modules_to_save: {unexpected}"
    # and the saved adapter holds exactly those weights
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    assert any("lora_" in key for key in keys), keys
    assert not [key for key in keys if not listed(key) and ("lora_" not in key or any(
        part in key for part in NOT_LANGUAGE_MODEL))], keys
