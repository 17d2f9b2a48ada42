"""Supervised fine-tuning of the recommender: TRL's SFTTrainer with LoRA (or QLoRA) adapters.

`recipes/sft.py` is the script users launch (`accelerate launch recipes/sft.py --config ...`);
this module holds what it does, so the quickstart and the tests run the very same code.
Completion-only loss comes from TRL itself (prompt/completion rows), the collator is TRL's, the
adapters are PEFT's. Training resumes from the last checkpoint in `output_dir`, and only when
that checkpoint was made with the same settings (a fingerprint kept beside it): resuming another
configuration's checkpoint would silently train, or skip, the wrong thing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from peft import LoraConfig
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, SFTConfig, SFTTrainer

from msr import __version__, schema
from msr.data.sft import STAGE as SFT_STAGE
from msr.data.sft import load_sft_split
from msr.models import load_model, lora_target_regex
from msr.rundir import RunDir

log = logging.getLogger(__name__)
FINGERPRINT_FILE = "msr_training.json"
# SFTConfig fields that decide what a run learns (logging, saving and evaluation cadence do not)
_LEARNING_FIELDS = ("learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "lr_scheduler_type", "warmup_steps", "warmup_ratio",
                    "weight_decay", "optim", "seed", "bf16", "fp16", "completion_only_loss", "max_length")


@dataclass
class SftScriptArguments:
    """Where the rows are (TRL's SFTConfig and ModelConfig hold everything else)."""

    run_dir: str = field(metadata={"help": "Run directory holding sft/{split} (after `msr data sft`)."})
    train_split: str = field(default="train", metadata={"help": "Rows to train on."})
    eval_split: str | None = field(default="valid", metadata={"help": "Rows to evaluate the loss on (null: none)."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_rows: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    max_pixels: int | None = field(default=None, metadata={"help": "Cap on an image's pixels for processors "
                                   "that resize by area (Qwen2-VL family: tokens per image = max_pixels / 784). "
                                   "Use the same value when scoring."})


# ModelConfig fields msr does not implement, with the value that means "not used"
_UNSUPPORTED = {"model_revision": "main", "attn_implementation": None, "load_in_8bit": False,
                "use_bnb_nested_quant": False, "bnb_4bit_quant_storage": None, "lora_target_parameters": None,
                "bnb_4bit_quant_type": "nf4"}


def _check(training: SFTConfig, model_cfg: ModelConfig) -> None:
    """Refuse settings msr would otherwise ignore or that would silently damage a run."""
    unsupported = [k for k, unused in _UNSUPPORTED.items() if getattr(model_cfg, k) != unused]
    if unsupported:
        raise ValueError(f"msr does not support these ModelConfig settings yet: {', '.join(unsupported)}; "
                         "remove them from the recipe")
    if training.max_length is not None:
        raise ValueError("max_length must be null: truncating an msr row would cut image tokens or the "
                         "answer itself; bound the prompt with the processor's image size instead")
    if not model_cfg.model_name_or_path:
        raise ValueError("model_name_or_path is required")
    if model_cfg.load_in_4bit and not model_cfg.use_peft:
        raise ValueError("load_in_4bit (QLoRA) needs use_peft: true; 4-bit weights cannot be trained directly")


def peft_config(model_cfg: ModelConfig, model) -> LoraConfig | None:
    """LoRA on every linear projection of the language model (or `lora_target_modules` if given)."""
    if not model_cfg.use_peft:
        return None
    return LoraConfig(
        r=model_cfg.lora_r, lora_alpha=model_cfg.lora_alpha, lora_dropout=model_cfg.lora_dropout,
        target_modules=model_cfg.lora_target_modules or lora_target_regex(model),
        modules_to_save=model_cfg.lora_modules_to_save, task_type=model_cfg.lora_task_type,
        use_rslora=model_cfg.use_rslora, use_dora=model_cfg.use_dora)


def build_trainer(script: SftScriptArguments, training: SFTConfig, model_cfg: ModelConfig) -> SFTTrainer:
    """The SFTTrainer for a recipe: rows from the run, the model from msr.models, LoRA on the LM."""
    _check(training, model_cfg)
    train_rows = load_sft_split(script.run_dir, script.train_split)
    eval_rows = load_sft_split(script.run_dir, script.eval_split) if script.eval_split else None
    if script.max_train_rows:
        train_rows = train_rows.select(range(min(script.max_train_rows, len(train_rows))))
    if eval_rows is not None and script.max_eval_rows:
        eval_rows = eval_rows.select(range(min(script.max_eval_rows, len(eval_rows))))
    loaded = load_model(model_cfg.model_name_or_path, model_cfg.dtype or "auto",
                        load_in_4bit=model_cfg.load_in_4bit, trust_remote_code=training.trust_remote_code,
                        for_training=True, max_pixels=script.max_pixels)
    return SFTTrainer(model=loaded.model, args=training, train_dataset=train_rows, eval_dataset=eval_rows,
                      processing_class=loaded.processor, peft_config=peft_config(model_cfg, loaded.model))


def training_fingerprint(script: SftScriptArguments, training: SFTConfig, model_cfg: ModelConfig) -> dict:
    """What a training run's result depends on: rows, model, adapter and optimisation settings."""
    rows = {"data.sft": RunDir(script.run_dir).manifest()["stages"].get(SFT_STAGE, {}).get("config_hash")}
    learning = {k: getattr(training, k, None) for k in _LEARNING_FIELDS}
    return json.loads(json.dumps({"script": dataclasses.asdict(script), "rows": rows, "training": learning,
                                  "model": dataclasses.asdict(model_cfg)}, sort_keys=True, default=str))


def claim_output_dir(out: Path, fingerprint: dict, restart: bool = False) -> None:
    """Record `fingerprint` in `out`. When `out` holds checkpoints of other settings, refuse, or with
    `restart` delete them so training starts over."""
    path = out / FINGERPRINT_FILE
    conflict = None
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != fingerprint:
            changed = sorted(f"{part}.{k}" for part in fingerprint for k in
                             set(fingerprint[part]) | set(stored.get(part, {}))
                             if fingerprint[part].get(k) != stored.get(part, {}).get(k))
            conflict = f"{out} holds a run with other settings (changed: {', '.join(changed)})"
    elif out.is_dir() and get_last_checkpoint(str(out)):
        conflict = f"{out} holds checkpoints without {FINGERPRINT_FILE}"
    if conflict and restart:
        log.info("%s: starting over", conflict)
        shutil.rmtree(out)
    elif conflict:
        raise ValueError(f"{conflict}; resuming it would train the wrong thing: delete it or choose another "
                         "output_dir")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint, indent=2, sort_keys=True), encoding="utf-8")


def train(script: SftScriptArguments, training: SFTConfig, model_cfg: ModelConfig,
          trainer: SFTTrainer | None = None, restart_if_changed: bool = False) -> Path:
    """Fine-tune (resuming from the last checkpoint in output_dir when it has the same settings;
    with other settings refusing, or starting over with `restart_if_changed`), then save the adapter
    (or model) with its processor and a model card; return the folder."""
    out = Path(training.output_dir)
    if training.process_index == 0:
        claim_output_dir(out, training_fingerprint(script, training, model_cfg), restart_if_changed)
    trainer = trainer or build_trainer(script, training, model_cfg)
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out))
    metrics = {**result.metrics, "wall_seconds": round(time.perf_counter() - start, 2)}
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    lora = getattr(trainer.model, "peft_config", {}).get("default")
    write_model_card(out, script, training, model_cfg, lora, len(trainer.train_dataset), metrics)
    return out


def write_model_card(out: Path, script: SftScriptArguments, training: SFTConfig, model_cfg: ModelConfig,
                     lora: LoraConfig | None, rows: int, metrics: dict) -> None:
    """README.md beside the weights: base model, data, arguments, metrics (`msr evaluate` adds more)."""
    arguments = {"script": dataclasses.asdict(script), "model": dataclasses.asdict(model_cfg),
                 "training": {k: v for k, v in training.to_dict().items() if "token" not in k}}
    lines = [
        f"# msr recommender: {Path(model_cfg.model_name_or_path).name}",
        "",
        f"- base model: `{model_cfg.model_name_or_path}`",
        f"- method: MLLM-MSR supervised fine-tuning (Yes/No on a candidate), msr {__version__}",
        f"- adapter: {'LoRA' if lora else 'none (full fine-tuning)'}"
        + (f" r={lora.r}, alpha={lora.lora_alpha}, dropout={lora.lora_dropout}, targets `{lora.target_modules}`"
           + (f", also trained in full: {sorted(lora.modules_to_save)}" if lora.modules_to_save else "")
           + (", 4-bit base (QLoRA)" if model_cfg.load_in_4bit else "") if lora else ""),
        f"- data: `{script.run_dir}` split `{script.train_split}`, {rows} rows (one per example x candidate)",
        "",
        "## Training metrics",
        "",
        "```json",
        json.dumps(metrics, indent=2, sort_keys=True, default=str),
        "```",
        "",
        "## Arguments",
        "",
        "```json",
        json.dumps(arguments, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    (out / schema.MODEL_CARD_FILE).write_text("\n".join(lines), encoding="utf-8")
