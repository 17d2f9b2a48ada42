"""`msr quickstart`: every stage on the embedded dataset, offline, on CPU.

Each step is resumable: the generator is idempotent, `prepare` skips when current, models
already built for this run's data are reused, and summaries come from their caches. Re-running
after an interruption continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from msr import schema
from msr.config import config_hash
from msr.data.prepare import PrepareConfig, prepare
from msr.data.sft import SftDataConfig, write_sft_rows
from msr.evaluate import REPORT_FILE, EvaluateConfig, evaluate, report
from msr.score_split import ScoreConfig, score_split
from msr.data.synthetic import COVERS_DIR, PAIRS_FILE, TITLES_FILE, SynthConfig, generate
from msr.rundir import RunDir
from msr.summarize.config import SummarizeConfig
from msr.summarize.items import summarize_items
from msr.summarize.users import summarize_users
from msr.tiny import VLM_FAMILIES, TinyConfig, build_from_config
from msr.train import SftScriptArguments, train

log = logging.getLogger(__name__)


@dataclass
class QuickstartConfig:
    """Size and seed of the quickstart."""

    run_dir: str = field(default="runs/quickstart", metadata={"help": "Run directory."})
    num_users: int = field(default=300, metadata={"help": "Users of the embedded dataset."})
    num_items: int = field(default=240, metadata={"help": "Items of the embedded dataset."})
    family: str = field(default="llava", metadata={"help": f"Tiny VLM family: {', '.join(VLM_FAMILIES)}."})
    seed: int = field(default=0, metadata={"help": "Seed of the dataset, the split and the models."})
    summary_tokens: int = field(default=16, metadata={"help": "max_new_tokens of the tiny summarizers."})
    history_titles: int = field(default=5, metadata={"help": "Recent titles in the recommender's prompt "
                                "(a tiny random model learns from titles, not from its own summaries)."})
    epochs: float = field(default=2.0, metadata={"help": "SFT epochs."})
    learning_rate: float = field(default=5e-3, metadata={"help": "SFT learning rate (high: tiny random model)."})

    def validate(self) -> None:
        if self.family not in VLM_FAMILIES:
            raise ValueError(f"family: {self.family!r} is not one of {', '.join(VLM_FAMILIES)}")


def quickstart(cfg: QuickstartConfig) -> dict:
    """Run the pipeline on the embedded dataset; return the data statistics and model paths."""
    start = time.perf_counter()
    run = RunDir(cfg.run_dir)
    raw = generate(SynthConfig(out_dir=str(run.path("raw")), num_users=cfg.num_users,
                               num_items=cfg.num_items, seed=cfg.seed))
    stats = prepare(PrepareConfig(run_dir=str(run.root), interactions=str(raw / PAIRS_FILE),
                                  items=str(raw / TITLES_FILE), image_dir=str(raw / COVERS_DIR),
                                  train_targets_per_user=3, seed=cfg.seed))
    models = {}
    for name, family in (("vlm", cfg.family), ("lm", "text")):
        tiny = TinyConfig(out_dir=str(run.path(f"models/{name}")), family=family, run_dir=str(run.root),
                          seed=cfg.seed)
        stage = f"tiny.{name}"
        digest = config_hash(tiny) + run.manifest()["stages"]["data.prepare"]["config_hash"]
        if not run.is_current(stage, digest):
            build_from_config(tiny)
            run.record(stage, digest, vars(tiny), [f"models/{name}/config.json"])
        models[name] = tiny.out_dir
    summarize = SummarizeConfig(run_dir=str(run.root), item_model=models["vlm"], user_model=models["lm"],
                                max_new_tokens=cfg.summary_tokens, batch_size=32)
    summaries = {"items": summarize_items(summarize), "users": summarize_users(summarize)}
    rows = write_sft_rows(SftDataConfig(run_dir=str(run.root), history_titles=cfg.history_titles))
    adapter = _train(run, cfg, models["vlm"])
    for output, weights in (("scores.parquet", str(adapter)), ("scores_zero_shot.parquet", None)):
        score_split(ScoreConfig(run_dir=str(run.root), model=models["vlm"], adapter=weights, output=output,
                                dtype="float32", device="cpu"))
    metrics = evaluate(EvaluateConfig(run_dir=str(run.root),
                                      methods=["sft=scores.parquet", "zero_shot=scores_zero_shot.parquet"]))
    elapsed = time.perf_counter() - start
    _print_summary(run.root, stats, models, summaries, rows, adapter, elapsed)
    print("\n" + report(metrics, EvaluateConfig(run_dir=str(run.root)).ks))
    print(f"report: {run.path(REPORT_FILE)}  (ROC plot and metrics.json beside it)")
    return {"stats": stats, "models": models, "summaries": summaries, "sft_rows": rows, "adapter": str(adapter),
            "metrics": metrics, "seconds": elapsed}


def _train(run: RunDir, cfg: QuickstartConfig, model: str) -> Path:
    """LoRA SFT of the tiny VLM on CPU (skipped when this run's adapter is current)."""
    from trl import ModelConfig, SFTConfig

    out = run.path("adapter")
    script = SftScriptArguments(run_dir=str(run.root))
    # the tiny model's random frozen lm_head caps its logits near 1, so it is trained too (as in
    # recipes/quickstart/tiny_cpu.yaml); real checkpoints train LoRA only, as the paper does
    model_cfg = ModelConfig(model_name_or_path=model, dtype="float32", use_peft=True, lora_r=16, lora_alpha=32,
                            lora_dropout=0.1, lora_modules_to_save=["lm_head"])
    training = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, max_length=None, num_train_epochs=cfg.epochs,
                         per_device_train_batch_size=16, learning_rate=cfg.learning_rate, logging_steps=25,
                         eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, report_to="none",
                         activation_checkpointing=False, seed=cfg.seed)
    stages = run.manifest()["stages"]
    digest = config_hash(cfg, exclude=("run_dir",)) + stages["data.sft"]["config_hash"]
    if not run.is_current("sft.train", digest):
        train(script, training, model_cfg)
        run.record("sft.train", digest, {"learning_rate": cfg.learning_rate, "epochs": cfg.epochs},
                   ["adapter/adapter_model.safetensors"])
    return out


def _print_summary(root: Path, stats: dict, models: dict[str, str], summaries: dict, rows: dict, adapter: Path,
                   seconds: float) -> None:
    lines = [
        f"msr quickstart: done in {seconds:.1f}s, run directory {root}",
        f"  data: {stats['users']} users, {stats['items']} items, {stats['interactions']} interactions, "
        f"image coverage {stats['image_coverage']:.1%}",
        "  examples: " + ", ".join(f"{k} {v}" for k, v in stats["examples"].items()),
        "  dropped: " + (", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "nothing"),
        f"  tiny VLM: {models['vlm']}   tiny LM: {models['lm']}",
        f"  summaries: {summaries['items']['items']} items ({summaries['items']['generated']} generated now), "
        f"{summaries['users']['states']} user states ({summaries['users']['generated']} generated now) "
        f"-> {root / schema.ITEM_SUMMARIES_FILE}, {root / schema.USER_SUMMARIES_FILE}",
        f"  SFT rows: {rows} -> {root / schema.SFT_DIR};  LoRA adapter and model card: {adapter}",
        f"  tables: {', '.join(str(root / f) for f in (schema.ITEMS_FILE, schema.INTERACTIONS_FILE, schema.EXAMPLES_FILE))}",
    ]
    print("\n".join(lines))
