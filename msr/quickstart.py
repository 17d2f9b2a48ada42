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
from msr.baselines.config import BaselineConfig
from msr.baselines.pipeline import evaluate_baseline, train_baseline
from msr.data.prepare import PrepareConfig, prepare
from msr.data.sft import SftDataConfig, write_sft_rows
from msr.data.synthetic import (
    COVERS_DIR,
    PAIRS_FILE,
    TITLES_FILE,
    SynthConfig,
    generate,
)
from msr.evaluate import REPORT_FILE, EvaluateConfig, evaluate, report
from msr.graph.config import GraphConfig
from msr.graph.pipeline import METRICS_FILE as GRAPH_METRICS_FILE
from msr.graph.pipeline import run_graph
from msr.provenance import Stage, stage_config
from msr.rundir import RunDir
from msr.score_split import ScoreConfig, score_split
from msr.summarize.config import SummarizeConfig
from msr.summarize.items import summarize_items
from msr.summarize.users import summarize_users
from msr.tiny import VLM_FAMILIES, TinyConfig, build_from_config
from msr.train import SftScriptArguments, train

log = logging.getLogger(__name__)
SFT_MODEL_DIR = "sft_model"
RETRIEVE_K = 20  # SASRec's top 20 per test example, reranked by the fine-tuned VLM: as many prompts as 1 + 20
SEQUENTIAL = {"sasrec": {}, "gru4rec": {"layers": 1}}  # else as in recipes/baselines/quickstart.yaml, but retrieve_k RETRIEVE_K


@dataclass
class QuickstartConfig:
    """Size and seed of the quickstart."""

    run_dir: str = field(default="runs/quickstart", metadata={"help": "Run directory."})
    num_users: int = field(default=300, metadata={"help": "Users of the embedded dataset."})
    num_items: int = field(default=240, metadata={"help": "Items of the embedded dataset."})
    image_weight: float = field(default=0.3, metadata={"help": "Weight of the image-only attributes in the "
                                "embedded users' tastes: low, because the tiny model learns from titles."})
    family: str = field(default="llava", metadata={"help": f"Tiny VLM family: {', '.join(VLM_FAMILIES)}."})
    seed: int = field(default=0, metadata={"help": "Seed of the dataset, the split and the models."})
    summary_tokens: int = field(default=16, metadata={"help": "max_new_tokens of the tiny summarizers."})
    history_titles: int = field(default=5, metadata={"help": "Recent titles in the recommender's prompt "
                                "(a tiny random model learns from titles, not from its own summaries)."})
    epochs: float = field(default=9.0, metadata={"help": "SFT epochs (the tiny model needs ~4 to find the signal)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "SFT learning rate."})
    batch_size: int = field(default=32, metadata={"help": "SFT rows per step."})

    def validate(self) -> None:
        """Refuse a family msr.tiny cannot build before any work starts."""
        if self.family not in VLM_FAMILIES:
            raise ValueError(f"family: {self.family!r} is not one of {', '.join(VLM_FAMILIES)}")


def quickstart(cfg: QuickstartConfig) -> dict:
    """Run the pipeline on the embedded dataset; return the data statistics and model paths."""
    start = time.perf_counter()
    run = RunDir(cfg.run_dir)
    raw = generate(SynthConfig(out_dir=str(run.path("raw")), num_users=cfg.num_users,
                               num_items=cfg.num_items, image_weight=cfg.image_weight, seed=cfg.seed))
    stats = prepare(PrepareConfig(run_dir=str(run.root), interactions=str(raw / PAIRS_FILE),
                                  items=str(raw / TITLES_FILE), image_dir=str(raw / COVERS_DIR),
                                  train_targets_per_user=-1, seed=cfg.seed))
    models = {}
    for name, family in (("vlm", cfg.family), ("lm", "text")):
        tiny = TinyConfig(out_dir=str(run.path(f"models/{name}")), family=family, run_dir=str(run.root),
                          seed=cfg.seed)
        stage = Stage(run, f"tiny.{name}", stage_config(tiny, ("out_dir", "run_dir")),
                      {"items": run.path(schema.ITEMS_FILE)}, outputs=[f"models/{name}"])
        if not stage.is_current():
            build_from_config(tiny)
            stage.commit()
        models[name] = tiny.out_dir
    summarize = SummarizeConfig(run_dir=str(run.root), item_model=models["vlm"], user_model=models["lm"],
                                max_new_tokens=cfg.summary_tokens, batch_size=32)
    summaries = {"items": summarize_items(summarize), "users": summarize_users(summarize)}
    # the tiny random summarizers write noise, which only hides the titles from the tiny recommender;
    # the graph recommender below does read them (with real models keep them in the prompt too)
    rows = write_sft_rows(SftDataConfig(run_dir=str(run.root), history_titles=cfg.history_titles,
                                        user_summary=False, candidate_summary=False))
    tuned = _train(run, cfg, models["vlm"])
    for output, weights in (("scores.parquet", tuned), ("scores_zero_shot.parquet", models["vlm"])):
        score_split(ScoreConfig(run_dir=str(run.root), model=str(weights), output=output, dtype="float32",
                                device="cpu"))
    graph = run_graph(GraphConfig(run_dir=str(run.root), history_titles=cfg.history_titles, batch_size=256,
                                  device="cpu", seed=cfg.seed))
    sequential = {name: _baseline(run, cfg, name, extra) for name, extra in SEQUENTIAL.items()}
    score_split(ScoreConfig(run_dir=str(run.root), model=str(tuned), output="rerank_scores.parquet", dtype="float32",
                            device="cpu", candidates=sequential["sasrec"]["retrieval"]))
    metrics = evaluate(EvaluateConfig(
        run_dir=str(run.root), model_card=str(tuned), compare_to=list(SEQUENTIAL), seed=cfg.seed,
        methods=["sft=scores.parquet", "zero_shot=scores_zero_shot.parquet", "graph=graph_scores.parquet"]
        + [f"{name}={b['scores']}" for name, b in sequential.items()],
        retrieval=f"sasrec={sequential['sasrec']['retrieval']}", rerank_methods=["sft=rerank_scores.parquet"]))
    elapsed = time.perf_counter() - start
    _print_summary(run.root, stats, models, summaries, rows, tuned, elapsed)
    recall = graph["metrics"]["test"]
    print("  graph recommender, full ranking over all items (test): "
          + ", ".join(f"{k} {v:.4f}" for k, v in recall.items() if "@" in k) + f" -> {run.path(GRAPH_METRICS_FILE)}")
    print("\n" + report(metrics, EvaluateConfig(run_dir=str(run.root)).ks))
    print(f"report: {run.path(REPORT_FILE)}  (ROC plot and metrics.json beside it)")
    return {"stats": stats, "models": models, "summaries": summaries, "sft_rows": rows, "sft_model": str(tuned),
            "graph": graph, "baselines": sequential, "metrics": metrics, "seconds": elapsed}


def _baseline(run: RunDir, cfg: QuickstartConfig, model: str, extra: dict) -> dict[str, str]:
    """Train (unless current) and evaluate one sequential baseline; its scored and retrieval tables."""
    baseline = BaselineConfig(run_dir=str(run.root), model=model, dropout=0.5, batch_size=32, patience=20,
                              retrieve_k=RETRIEVE_K, device="cpu", seed=cfg.seed, **extra)
    train_baseline(baseline)
    evaluate_baseline(baseline)
    return {"scores": baseline.output, "retrieval": baseline.retrieval}


def _train(run: RunDir, cfg: QuickstartConfig, model: str) -> Path:
    """SFT of the tiny VLM on CPU (skipped when this run's model is current).

    Full fine-tuning, unlike the LoRA recipes for real checkpoints: a random model has no features
    for a low-rank update to adapt, and LoRA on it stays at chance within this budget (measured:
    loss at ln 2 after 5 epochs, where full fine-tuning learns from epoch 4 on)."""
    from trl import ModelConfig, SFTConfig

    out = run.path(SFT_MODEL_DIR)
    script = SftScriptArguments(run_dir=str(run.root))
    model_cfg = ModelConfig(model_name_or_path=model, dtype="float32", use_peft=False)
    training = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, max_length=None, num_train_epochs=cfg.epochs,
                         per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
                         learning_rate=cfg.learning_rate,
                         logging_steps=25, eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
                         report_to="none", activation_checkpointing=False, seed=cfg.seed)
    stage = Stage(run, "sft.train", stage_config(cfg), {"rows": run.path(schema.SFT_DIR), "model": Path(model)},
                  outputs=[f"{SFT_MODEL_DIR}/model.safetensors"])
    if not stage.is_current():
        train(script, training, model_cfg, restart_if_changed=True)  # new settings start over
        stage.commit()
    return out


def _print_summary(root: Path, stats: dict, models: dict[str, str], summaries: dict, rows: dict, tuned: Path,
                   seconds: float) -> None:
    lines = [
        f"msr quickstart: done in {seconds:.1f}s, run directory {root}",
        (f"  data: {stats['users']} users, {stats['items']} items, {stats['interactions']} interactions, "
        f"image coverage {stats['image_coverage']:.1%}"),
        "  examples: " + ", ".join(f"{k} {v}" for k, v in stats["examples"].items()),
        "  dropped: " + (", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "nothing"),
        f"  tiny VLM: {models['vlm']}   tiny LM: {models['lm']}",
        (f"  summaries: {summaries['items']['items']} items ({summaries['items']['generated']} generated now), "
        f"{summaries['users']['states']} user states ({summaries['users']['generated']} generated now) "
        f"-> {root / schema.ITEM_SUMMARIES_FILE}, {root / schema.USER_SUMMARIES_FILE}"),
        f"  SFT rows: {rows} -> {root / schema.SFT_DIR};  fine-tuned model and its model card: {tuned}",
        f"  tables: {', '.join(str(root / f) for f in (schema.ITEMS_FILE, schema.INTERACTIONS_FILE, schema.EXAMPLES_FILE))}",
    ]
    print("\n".join(lines))
