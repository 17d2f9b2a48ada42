"""`msr quickstart`: every stage that exists, on the embedded dataset, offline, on CPU.

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
from msr.data.synthetic import COVERS_DIR, PAIRS_FILE, TITLES_FILE, SynthConfig, generate
from msr.rundir import RunDir
from msr.summarize.config import SummarizeConfig
from msr.summarize.items import summarize_items
from msr.summarize.users import summarize_users
from msr.tiny import VLM_FAMILIES, TinyConfig, build_from_config

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
    elapsed = time.perf_counter() - start
    _print_summary(run.root, stats, models, summaries, elapsed)
    return {"stats": stats, "models": models, "summaries": summaries, "seconds": elapsed}


def _print_summary(root: Path, stats: dict, models: dict[str, str], summaries: dict, seconds: float) -> None:
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
        f"  tables: {', '.join(str(root / f) for f in (schema.ITEMS_FILE, schema.INTERACTIONS_FILE, schema.EXAMPLES_FILE))}",
    ]
    print("\n".join(lines))
