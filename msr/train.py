"""Supervised fine-tuning of the recommender: TRL's SFTTrainer with LoRA (or QLoRA) adapters.

`recipes/sft.py` is the script users launch (`accelerate launch recipes/sft.py --config ...`);
this module holds what it does, so the quickstart and the tests run the very same code.
The trainer is TRL's, the adapters PEFT's; the collator is TRL's vision-language collator extended
(`msr.parity.QuestionCollator`) to tokenize each row as the scorer does, with the loss on the answer only, for VLMs
and text-only LMs alike; a parity guard checks it on the actual processor before training starts. Training resumes from the last complete checkpoint in `output_dir`, and only
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

import datasets
import pyarrow.compute as pc
from datasets import Dataset
from peft import LoraConfig
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, SFTConfig, SFTTrainer

from msr import __version__, schema
from msr.checkpoints import last_complete_checkpoint, set_aside_incomplete_checkpoints
from msr.data.sft import STAGE as SFT_STAGE
from msr.data.sft import load_sft_split
from msr.identity import model_identity
from msr.models import is_vision_model, load_model, lora_target_regex
from msr.parity import ParityError, QuestionCollator, check_parity
from msr.provenance import require_current
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
                                   "Scoring takes the same value from the training record."})

    def __post_init__(self) -> None:
        # on the command line `--eval_split null` arrives as the word; it means none, as YAML's null does
        if isinstance(self.eval_split, str) and self.eval_split.strip().lower() in ("null", "none", ""):
            self.eval_split = None


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
    if training.completion_only_loss is False:
        raise ValueError("completion_only_loss must be true or null: msr trains the answer only (a loss over the "
                         "prompt teaches the model to write prompts, the public MLLM-MSR code's defect)")
    if training.packing or training.padding_free:
        raise ValueError("packing and padding_free must be false: each msr row is one question, collated as a whole")


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
    require_current(RunDir(script.run_dir), SFT_STAGE, "msr data sft: the rows are older than the summaries, "
                    "prompts or images they were made from, so the model would learn questions scoring no longer asks")
    vlm = is_vision_model(model_cfg.model_name_or_path, training.trust_remote_code)
    train_rows = _rows(script.run_dir, script.train_split, script.max_train_rows, vlm, "training")
    eval_rows = _rows(script.run_dir, script.eval_split, script.max_eval_rows, vlm, "evaluation") \
        if script.eval_split else None
    loaded = load_model(model_cfg.model_name_or_path, model_cfg.dtype or "auto",
                        load_in_4bit=model_cfg.load_in_4bit, trust_remote_code=training.trust_remote_code,
                        for_training=True, max_pixels=script.max_pixels)
    try:
        check_parity(loaded.processor, loaded.is_vlm, train_rows[0])
    except ParityError as err:
        raise ParityError(f"{loaded.name}: {err}") from None
    args = _own_copy(training)
    # the rows reach msr's collator whole (prompt, completion, images); TRL neither drops nor pre-tokenizes them
    args.remove_unused_columns = False
    args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    collator = QuestionCollator(processor=loaded.processor, is_vlm=loaded.is_vlm,
                                pad_to_multiple_of=training.pad_to_multiple_of)
    return SFTTrainer(model=loaded.model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
                      processing_class=loaded.processor, data_collator=collator,
                      peft_config=peft_config(model_cfg, loaded.model))


def _rows(run_dir: str, split: str, limit: int | None, is_vlm: bool, what: str) -> Dataset:
    """The first `limit` rows of a split, as msr's collator reads them (`rows_for_model`). datasets' caching is off
    meanwhile: a cast writes its result as a cache file beside the dataset, inside the run's sft folder, which would
    make the rows look edited to every later stage (with caching off it goes to a temporary folder)."""
    caching = datasets.is_caching_enabled()
    datasets.disable_caching()
    try:
        rows = load_sft_split(run_dir, split)
        return rows_for_model(rows.select(range(min(limit, len(rows)))) if limit else rows, is_vlm, what)
    finally:
        if caching:
            datasets.enable_caching()


def rows_for_model(rows: Dataset, is_vlm: bool, what: str) -> Dataset:
    """The rows as msr's collator reads them: images left as the bytes the rows store, for `msr.parity.as_image`
    to decode as scoring does; a text-only LM gets no images (each row that had one is counted and logged)."""
    if is_vlm:
        return rows.cast_column("images", datasets.List(datasets.Image(decode=False)))
    shown = pc.sum(pc.greater(pc.list_value_length(rows.data.column("images")), 0)).as_py() or 0
    if shown:
        log.info("text-only model: %d of %d %s rows have an image it cannot see; they are asked without it",
                 shown, len(rows), what)
    return rows.remove_columns("images")


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
                   "model": model, "rows": rows, "question": question_settings(script.run_dir),
                   "launch": {"world_size": training.world_size}}
    return json.loads(json.dumps(fingerprint, sort_keys=True))


def question_settings(run_dir: str | Path) -> dict:
    """The prompt settings the run's rows were written with (`msr data sft`'s recorded config): what question the
    model learns to answer, which `msr score` must ask in the same words."""
    return RunDir(run_dir).manifest()["stages"].get(SFT_STAGE, {}).get("config", {})


def read_training_record(folder: str | Path) -> dict | None:
    """What training recorded in an output folder (adapter or fully fine-tuned model), or None where msr did not
    train it (a base model, an adapter from elsewhere)."""
    path = Path(folder) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable training record ({err}); retrain into a fresh output_dir") from None


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
