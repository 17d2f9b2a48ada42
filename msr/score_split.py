"""`msr score`: P(Yes) for every candidate of every example of a split -> a scores table.

The candidates are each example's target and sampled negatives, or, with `--candidates`, the items a
retriever returned for it (a retrieval table: retrieve-then-rerank, evaluated by full ranking in
`msr evaluate --retrieval`). The question is the one training asked: the prompt settings come from the
run's `data.sft` stage. Results are appended per example and flushed to shards named by a fingerprint of the
model, adapter and settings, so an interrupted run resumes and a changed model starts afresh. Under
`accelerate launch` each process scores every n-th example into its own shard and the main
process merges them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
from accelerate import PartialState
from tqdm.auto import tqdm

from msr import schema
from msr.data.sft import STAGE as SFT_STAGE
from msr.data.sft import CandidatePrompts, SftDataConfig, answer_messages, candidates, question_inputs
from msr.identity import model_identity
from msr.models import load_model, resolve_device
from msr.provenance import ModelInput, Stage, one_writer, require_current, stage_config
from msr.rundir import JsonlLog, RunDir, write_parquet
from msr.score import MAX_BATCH_TOKENS, Scorer
from msr.train import FINGERPRINT_FILE, read_training_record, rows_digest
from msr.scored import EXAMPLE_KEY, read_retrieval, retrieved_for

log = logging.getLogger(__name__)


@dataclass
class ScoreConfig:
    """Which model scores which split."""

    run_dir: str = field(metadata={"help": "Run directory (after `msr data sft`)."})
    model: str = field(metadata={"help": "Base model (path or id)."})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder from recipes/sft.py "
                                "(none: the base model, zero-shot)."})
    split: str = field(default="test", metadata={"help": "Examples to score."})
    output: str = field(default="scores.parquet", metadata={"help": "Scores file, inside the run directory."})
    batch_size: int = field(default=32, metadata={"help": "Candidates per forward pass."})
    max_batch_tokens: int = field(default=MAX_BATCH_TOKENS, metadata={"help": "A batch is halved while its candidates "
                                  "x padded tokens exceed this (one long question cannot multiply memory)."})
    prefix_reuse: bool = field(default=True, metadata={"help": "Prefill each example's shared user prefix once."})
    max_examples: int | None = field(default=None, metadata={"help": "Score only the first N examples."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda (under accelerate: its device)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base model in 4 bits."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with the checkpoint."})
    max_pixels: int | None = field(default=None, metadata={"help": "Pixel cap per image (Qwen2-VL family); by default "
                                   "the value training recorded beside the adapter, which a different one contradicts."})
    candidates: str | None = field(default=None, metadata={
        "help": "A retrieval table inside the run directory (user_id, history_len, item_id, score, rank: a "
                "retriever's top-K items per example, from `msr baselines evaluate` or `msr graph evaluate`): "
                "score each example's retrieved items instead of its sampled negatives; label 1 where the item "
                "is the example's target (an example whose target was not retrieved has no positive)."})

    def validate(self) -> None:
        if self.split not in schema.SPLITS:
            raise ValueError(f"split: {self.split!r} is not one of {', '.join(schema.SPLITS)}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be >= 1")
        schema.check_output_table("output", self.output)


def _prompt_settings(run: RunDir) -> SftDataConfig:
    entry = run.manifest()["stages"].get(SFT_STAGE)
    if entry is None:
        raise FileNotFoundError(f"{run.root}: no `msr data sft` stage recorded; run it first so scoring asks "
                                "the question training asked")
    return SftDataConfig(**{**entry["config"], "run_dir": str(run.root)})


def score_stage(run: RunDir, cfg: ScoreConfig, settings: SftDataConfig) -> Stage:
    """What the scores depend on: the question's inputs (tables, summaries, prompts, images, by content), the
    model and adapter (a local folder by the content of its config, tokenizer, template and weight files, like any
    other input: not the model card that `msr evaluate --model_card` edits, nor checkpoints; a hub id by the
    commit its local cache resolves to), and the prompt and precision settings. Resumed records are reused only
    under the same fingerprint, and `msr evaluate` refuses the table once any of these changed, so a retrained
    adapter or a rebuilt model in the same folder is never reported with the old scores."""
    # which examples are scored (split, max_examples) is not here: records are per example, so a longer run
    # resumes a shorter one
    config = {"model": cfg.model, "adapter": cfg.adapter, "dtype": cfg.dtype, "load_in_4bit": cfg.load_in_4bit,
              "max_pixels": cfg.max_pixels, "prompt_settings": stage_config(settings)}
    inputs, values = question_inputs(run, settings), {}
    for name, model in (("model", cfg.model), ("adapter", cfg.adapter)):
        if model and Path(model).expanduser().is_dir():
            inputs[name] = ModelInput(Path(model).expanduser())
        else:
            values[name] = model_identity(model) if model else None
    if cfg.candidates:  # by content: a new retrieval is scored afresh
        inputs["candidates"] = run.path(cfg.candidates)
    return Stage(run, f"score.{cfg.output}", config, inputs, values, outputs=[cfg.output])


def _example_key(user: str, history_len: int) -> str:
    """How a shard record names its example."""
    return f"{user}:{history_len}"


def example_candidates(run: RunDir, cfg: ScoreConfig, examples: pd.DataFrame) -> dict[str, list[tuple[str, int]]]:
    """(item, label) pairs to score per example key: the target and its sampled negatives, or the example's
    retrieved items in rank order (`cfg.candidates`, whose producer must be current and which must list
    every example)."""
    if not cfg.candidates:
        return {_example_key(e[schema.USER], e[schema.HISTORY_LEN]): candidates(e) for e in examples.to_dict("records")}
    rows = retrieved_for(read_retrieval(run, cfg.candidates), examples, cfg.candidates)
    return {_example_key(user, history_len): list(zip(group[schema.ITEM], group[schema.LABEL].tolist()))
            for (user, history_len), group in rows.groupby(EXAMPLE_KEY, sort=False)}


def _guard_row(prompts: CandidatePrompts, example: dict, to_score: dict) -> dict:
    """The parity guard's row: the first candidate of the first example to score, asked as scoring asks it."""
    item, label = to_score[_example_key(example[schema.USER], example[schema.HISTORY_LEN])][0]
    messages, image = prompts.messages(example[schema.USER], example[schema.HISTORY_LEN], item)
    return {"prompt": messages, "completion": answer_messages(label), "images": [image] if image else []}


def bind_to_training(run: RunDir, cfg: ScoreConfig, settings: SftDataConfig) -> None:
    """Hold scoring to what the adapter (or fully fine-tuned model) was trained on, as its `msr_training.json`
    records: `max_pixels` comes from there (a contradicting `--max_pixels` is refused), the run's prompt settings
    must be those training read, and when it trained on this run, on the very rows the run holds now. Anything
    else would score a question the model never learned, silently."""
    folder = cfg.adapter or cfg.model
    record = read_training_record(folder) if Path(folder).is_dir() else None
    if record is None:
        if cfg.adapter:
            log.warning("%s has no %s: msr cannot check which prompts and image size it was trained on",
                        cfg.adapter, FINGERPRINT_FILE)
        return
    source = Path(folder) / FINGERPRINT_FILE
    trained_pixels = record.get("script", {}).get("max_pixels")
    if cfg.max_pixels is None:
        cfg.max_pixels = trained_pixels
    elif cfg.max_pixels != trained_pixels:
        raise ValueError(f"max_pixels: {cfg.max_pixels} contradicts the {trained_pixels} that {folder} was trained "
                         f"with ({source}); drop --max_pixels to use the trained value, or retrain")
    trained, now = record.get("question"), stage_config(settings)
    if trained is None:  # recorded by an msr from before prompt settings were kept: the rows' digest still binds
        trained = now
    changed = sorted(k for k in set(trained) | set(now) if trained.get(k) != now.get(k))
    if changed:
        said = ", ".join(f"{k}: {trained.get(k)!r} when trained, {now.get(k)!r} now" for k in changed)
        raise ValueError(f"{run.root}: the rows' prompt settings changed since {folder} was trained ({said}); "
                         "scoring would ask a question the model never learned: rebuild the rows with the trained "
                         "settings (msr data sft), or retrain")
    script = record.get("script", {})
    if Path(script.get("run_dir", "")).resolve() != run.root.resolve():
        log.warning("%s was trained on the rows of %s, not of this run: scored with this run's questions",
                    folder, script.get("run_dir"))
        return
    split = script.get("train_split", "train")
    if record.get("rows", {}).get("train") != rows_digest(run.root, split):
        raise ValueError(f"{run.path(f'{schema.SFT_DIR}/{split}')} changed since {folder} was trained on it (new "
                         "summaries, prompts or images): the model learned other questions than scoring would ask "
                         "now; retrain (recipes/sft.py)")


@one_writer(lambda cfg: f"score.{cfg.output}.{os.environ.get('RANK', '0')}")  # one lock per process rank
def score_split(cfg: ScoreConfig) -> pd.DataFrame:
    """Score the split (resuming), merge the shards, write `cfg.output`; return the table."""
    cfg.validate()
    run = RunDir(cfg.run_dir)
    # without cpu=True, a CPU-only run under torchrun or accelerate launch would stay single-process
    cpu = resolve_device(cfg.device) == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise RuntimeError(f"launched as {launched} processes but accelerate sees {state.num_processes}: each would "
                           f"score the whole split into the same files; check --device ({cfg.device}) against the "
                           "launcher's devices")
    settings = _prompt_settings(run)
    require_current(run, SFT_STAGE, "msr data sft --force, then retrain: the model learned other prompts than "
                    "scoring would ask now")
    bind_to_training(run, cfg, settings)
    stage = score_stage(run, cfg, settings)
    prompts = CandidatePrompts(run, settings)
    examples = pd.read_parquet(run.path(schema.EXAMPLES_FILE))
    examples = examples[examples[schema.SPLIT] == cfg.split].head(cfg.max_examples)
    to_score = example_candidates(run, cfg, examples)
    examples = examples.to_dict("records")
    stem = f"{cfg.output.removesuffix('.parquet')}.{stage.fingerprint()[:12]}"
    shard = JsonlLog(run.path(f"{stem}.{state.process_index}.jsonl"), key="key")
    mine = [e for n, e in enumerate(examples) if n % state.num_processes == state.process_index]
    todo = [e for e in mine if _example_key(e[schema.USER], e[schema.HISTORY_LEN]) not in shard]
    if todo:
        device = str(state.device) if state.num_processes > 1 else cfg.device
        loaded = load_model(cfg.model, cfg.dtype, device, cfg.load_in_4bit, cfg.trust_remote_code,
                            max_pixels=cfg.max_pixels, adapter=cfg.adapter)
        scorer = Scorer(loaded, cfg.prefix_reuse, cfg.batch_size, row=_guard_row(prompts, todo[0], to_score),
                        max_batch_tokens=cfg.max_batch_tokens)
        for e in tqdm(todo, desc=f"scoring {cfg.split}", unit="example", disable=not state.is_local_main_process):
            key = _example_key(e[schema.USER], e[schema.HISTORY_LEN])
            items = to_score[key]
            asked = [prompts.messages(e[schema.USER], e[schema.HISTORY_LEN], item) for item, _ in items]
            p_yes = scorer.score([m for m, _ in asked], [image for _, image in asked])
            shard.append([{"key": key, schema.USER: e[schema.USER],
                           schema.HISTORY_LEN: int(e[schema.HISTORY_LEN]), "items": [i for i, _ in items],
                           "labels": [label for _, label in items], schema.P_YES: p_yes.tolist()}])
        if scorer.images_not_shown:
            log.info("%s is a text-only model: %d candidates' images were not shown", cfg.model, scorer.images_not_shown)
    state.wait_for_everyone()
    if not state.is_main_process:
        return pd.DataFrame()
    wanted = {_example_key(e[schema.USER], e[schema.HISTORY_LEN]) for e in examples}
    records = {}
    for rank in range(state.num_processes):
        records.update(JsonlLog(run.path(f"{stem}.{rank}.jsonl"), key="key").records)
    rows = [(r[schema.USER], r[schema.HISTORY_LEN], item, label, p)
            for key, r in sorted(records.items()) if key in wanted
            for item, label, p in zip(r["items"], r["labels"], r[schema.P_YES])]
    table = pd.DataFrame(rows, columns=[schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.LABEL, schema.P_YES])
    write_parquet(run.path(cfg.output), pa.Table.from_pandas(table, preserve_index=False))
    stage.commit()
    log.info("scored %d candidates of %d %s examples -> %s", len(table), len(wanted), cfg.split, run.path(cfg.output))
    return table
