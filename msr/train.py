"""Supervised fine-tuning of the recommender: TRL's SFTTrainer with LoRA (or QLoRA) adapters.

`recipes/sft.py` is the script users launch (`accelerate launch recipes/sft.py --config ...`);
this module holds what it does, so the quickstart and the tests run the very same code.
Completion-only loss comes from TRL itself (prompt/completion rows), the collator is TRL's, the
adapters are PEFT's. Training resumes from the last complete checkpoint in `output_dir`, and only
when that checkpoint was made with the same settings and the same rows (a fingerprint kept beside
it): resuming another configuration's checkpoint would silently train, or skip, the wrong thing.
"""

from __future__ import annotations

import copy
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from peft import LoraConfig
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, SFTConfig, SFTTrainer

from msr import __version__, schema
from msr.checkpoints import last_complete_checkpoint, set_aside_incomplete_checkpoints
from msr.data.sft import load_sft_split
from msr.models import load_model, lora_target_regex, model_identity
from msr.rundir import RunDir

log = logging.getLogger(__name__)
FINGERPRINT_FILE = "msr_training.json"

# The training fingerprint holds EVERY field of SFTConfig, ModelConfig and SftScriptArguments except
# these, which only decide when things are logged, saved or evaluated, where results go and how
# fast data is loaded: none of them changes the weights a run learns. A field not named here counts,
# so a setting a new TRL or transformers release adds refuses a resume until it is judged here.
# (Every name must be a field of the installed classes: tests/test_train.py checks it.)
NOT_LEARNING_TRAINING: dict[str, tuple[str, ...]] = {
    # where the run writes and what trackers call it: output_dir is the folder being claimed itself
    "output and run identity": ("output_dir", "run_name", "project", "report_to", "trackio_space_id",
                                "trackio_bucket_id", "trackio_static_space_id"),
    # what is logged and how often; logging_nan_inf_filter only filters the logged running loss,
    # include_num_input_tokens_seen only counts tokens for the log, skip_memory_metrics only
    # measures, debug only detects under/overflow
    "logging": ("logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node",
                "logging_nan_inf_filter", "include_num_input_tokens_seen", "log_level", "log_level_replica",
                "disable_tqdm", "skip_memory_metrics", "debug"),
    # when and what checkpoints are written (resuming needs optimizer and scheduler files: a
    # checkpoint without them is incomplete, see last_complete_checkpoint); enable_jit_checkpoint
    # saves one on SIGTERM
    "saving": ("save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model",
               "enable_jit_checkpoint"),
    # publishing to the Hub (hub_token is a secret, never written to the fingerprint file)
    "publishing": ("push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy",
                   "hub_always_push", "hub_revision"),
    # when and how the eval loss is computed: evaluation runs with gradients off and never steps the
    # optimizer (the eval rows' content still counts, as `rows.eval`: the logged eval losses of a
    # resumed run must be on the same rows)
    "evaluation": ("eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "per_device_eval_batch_size",
                   "prediction_loss_only", "eval_do_concat_batches", "eval_use_gather_object",
                   "eval_accumulation_steps", "include_for_metrics", "batch_eval_metrics", "bf16_full_eval",
                   "fp16_full_eval", "eval_packing"),
    # how many processes load and tokenize the rows, and host-memory pinning: the same batches in the
    # same order either way (dataloader_in_order is NOT here: out of order changes the batch order)
    "data loading speed": ("dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
                           "dataloader_prefetch_factor", "dataloader_multiprocessing_context",
                           "dataset_num_proc"),
    # launcher and script bookkeeping: msr picks the checkpoint to resume itself; do_* are only read
    # by scripts, local_rank is set per process by the launcher, torch_empty_cache_steps only frees
    # cached memory
    "launcher": ("resume_from_checkpoint", "do_train", "do_eval", "do_predict", "local_rank",
                 "torch_empty_cache_steps"),
    # how DDP exchanges gradients, not their values: searching for unused parameters (TRL sets it
    # itself for a VLM), bucket size, a static graph, the time a collective may wait
    "distributed communication": ("ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_static_graph",
                                  "ddp_timeout"),
    # deprecated aliases that transformers keeps equal to activation_checkpointing(_kwargs), which count
    "aliases": ("gradient_checkpointing", "gradient_checkpointing_kwargs"),
}
# SftScriptArguments fields used only for the eval loss (the eval rows' content counts as `rows.eval`)
NOT_LEARNING_SCRIPT: dict[str, tuple[str, ...]] = {"evaluation": ("eval_split", "max_eval_rows")}
# With load_best_model_at_end the final weights are the checkpoint with the best eval metric, so
# when is evaluated and saved, and on which rows, does pick what a run produces: these groups count.
PICK_THE_RESULT_WITH_BEST_MODEL = ("saving", "evaluation")


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


def _own_copy(training: SFTConfig) -> SFTConfig:
    """A copy of `training` for the trainer to keep: TRL and transformers fill in some of their args
    (ddp_find_unused_parameters for a VLM, gradient-checkpointing kwargs), and the caller's config
    must stay what the recipe says, for training_fingerprint. Shallow (the process state is shared),
    except the fields' own dicts and lists, copied together so that aliases stay one object (TRL edits
    gradient_checkpointing_kwargs, the Trainer reads activation_checkpointing_kwargs)."""
    clone, memo = copy.copy(training), {}
    for f in dataclasses.fields(training):
        value = getattr(training, f.name)
        if isinstance(value, (dict, list, set)) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            setattr(clone, f.name, copy.deepcopy(value, memo))
    return clone


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
    return SFTTrainer(model=loaded.model, args=_own_copy(training), train_dataset=train_rows,
                      eval_dataset=eval_rows, processing_class=loaded.processor,
                      peft_config=peft_config(model_cfg, loaded.model))


def _plain(value):
    """`value` as JSON data: enums by value, paths as strings, dataclasses (AcceleratorConfig) as dicts."""
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=str)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # torch.dtype and the like


def _settings(config, excluded: set[str]) -> dict:
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)
            if f.init and f.name not in excluded}


def rows_digest(run_dir: str | Path, split: str) -> str:
    """The content digest of one split's rows (`sft/{split}`, as load_sft_split reads them; the run's
    cached folder digest). The rows embed their images, so this is the content training reads."""
    run = RunDir(run_dir)
    path = run.path(f"{schema.SFT_DIR}/{split}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} not found: run `msr data sft --run_dir {run_dir}` first")
    return run.content_digest(path)


def training_fingerprint(script: SftScriptArguments, training: SFTConfig, model_cfg: ModelConfig) -> dict:
    """What a training run's result depends on: every setting of the three configs except the named
    cadence and bookkeeping ones (NOT_LEARNING_*), the base model's identity (its files' content, or the
    hub commit), the number of processes (the global batch is
    per-device batch x accumulation x processes), and the content of the rows it reads (hashed here,
    once per call: the rows are small beside a training run)."""
    counted = PICK_THE_RESULT_WITH_BEST_MODEL if training.load_best_model_at_end else ()
    not_training = {k for group, names in NOT_LEARNING_TRAINING.items() if group not in counted for k in names}
    not_script = {k for group, names in NOT_LEARNING_SCRIPT.items() if group not in counted for k in names}
    rows = {"train": rows_digest(script.run_dir, script.train_split),
            "eval": rows_digest(script.run_dir, script.eval_split) if script.eval_split else None}
    model = {**_settings(model_cfg, set()), "identity": model_identity(model_cfg.model_name_or_path)}
    fingerprint = {"script": _settings(script, not_script), "training": _settings(training, not_training),
                   "model": model, "rows": rows, "launch": {"world_size": training.world_size}}
    return json.loads(json.dumps(fingerprint, sort_keys=True))


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
    """Fine-tune (resuming from the last complete checkpoint in output_dir when it has the same
    settings and rows; with other settings refusing, or starting over with `restart_if_changed`),
    then save the adapter (or model) with its processor and a model card; return the folder."""
    out = Path(training.output_dir)
    with contextlib.ExitStack() as held:
        if training.process_index == 0:  # one training run per output folder: a second launch fails at once
            held.enter_context(RunDir(script.run_dir).lock(f"train {out.resolve()}"))
            claim_output_dir(out, training_fingerprint(script, training, model_cfg), restart_if_changed)
            set_aside_incomplete_checkpoints(out)
        return _train(out, script, training, model_cfg, trainer)


def _train(out: Path, script: SftScriptArguments, training: SFTConfig, model_cfg: ModelConfig,
           trainer: SFTTrainer | None) -> Path:
    trainer = trainer or build_trainer(script, training, model_cfg)
    last = last_complete_checkpoint(out)  # the same on every process, whether or not rank 0 moved any yet
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
