"""`msr data prepare`: raw dataset -> items, interactions and examples in the run directory.

Order of operations (each drop is counted in data_stats.json under `dropped`):
unknown items -> items without title/image (if required) -> exact duplicates -> repeated
(user, item) pairs (earliest kept) -> iterative k-core -> chronological sort -> length cap ->
targets (leave-last-out, or a ratio split of users or of a sample list: `split`) -> K-shot subset ->
labels (1, or the user's rating against `label_threshold`) and history windows -> seeded negatives. A step that leaves no interaction stops the stage with
one ValueError naming the step and the counts so far, never an IndexError further on.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from msr import schema
from msr.data import images, splits
from msr.data.loaders import FORMATS, read_dataset
from msr.provenance import Stage, one_writer, stage_config
from msr.rundir import RunDir, write_json, write_parquet

log = logging.getLogger(__name__)
STAGE = "data.prepare"
SPLITS = ("leave_last_out", "users", "samples")


@dataclass
class PrepareConfig:
    """Where the raw data is, how to filter it, and how to split it."""

    run_dir: str = field(metadata={"help": "Run directory to write items/interactions/examples into."})
    interactions: str = field(metadata={"help": "Interactions file: MicroLens pairs csv, Amazon reviews "
                                                "jsonl(.gz), or generic csv/parquet (user,item,timestamp)."})
    items: str = field(metadata={"help": "Items file: MicroLens titles csv, Amazon metadata jsonl(.gz), "
                                         "or generic items jsonl (id,title,description,image)."})
    format: str = field(default="microlens", metadata={"help": f"One of {', '.join(FORMATS)}."})
    image_dir: str | None = field(default=None, metadata={"help": "Folder of item images (MicroLens "
                                  "covers/, `{item_id}.jpg` for Amazon, the root of relative paths for generic)."})
    user_min: int = field(default=5, metadata={"help": "k-core: minimum interactions per user."})
    item_min: int = field(default=5, metadata={"help": "k-core: minimum interactions per item."})
    dedup_pairs: bool = field(default=True, metadata={"help": "Keep only the earliest interaction of a "
                              "repeated (user, item) pair. Exact duplicate rows are always dropped."})
    max_seq_len: int = field(default=0, metadata={"help": "Keep each user's most recent N interactions "
                             "after k-core (0: no cap)."})
    min_history: int = field(default=1, metadata={"help": "Minimum history length of any target."})
    train_targets_per_user: int = field(default=1, metadata={"help": "Training targets per user, the "
                                        "positions just before validation (-1: all eligible positions)."})
    negatives_train: int = field(default=1, metadata={"help": "Negatives per training target."})
    negatives_valid: int = field(default=1, metadata={"help": "Negatives per validation target."})
    negatives_test: int = field(default=20, metadata={"help": "Negatives per test target."})
    require_title: bool = field(default=True, metadata={"help": "Drop items with an empty title."})
    require_image: bool = field(default=False, metadata={"help": "Drop items without a usable image."})
    verify_images: bool = field(default=True, metadata={"help": "Decode every image to find corrupt files "
                                "(off: only check that the file exists)."})
    max_image_pixels: int = field(default=images.MAX_IMAGE_PIXELS, metadata={"help": "Refuse images with more "
                                  "pixels than this (width x height, read from the header): too_many_pixels."})
    max_title_chars: int = field(default=500, metadata={"help": "Cut a longer title to this many characters "
                                 "(counted as items_title_cut): every prompt holds titles, so one huge title must not "
                                 "make a question longer than the model's positions."})
    max_description_chars: int = field(default=2000, metadata={"help": "Cut a longer description to this many "
                                       "characters (counted as items_description_cut)."})
    split: str = field(default="leave_last_out", metadata={"help": "How targets are chosen: leave_last_out (each "
                       "user's last = test, second-last = valid, earlier = train); users (users in chronological "
                       "order, by their last interaction, cut by split_ratio: a held-out user's one target is their "
                       "last item; LLaRA); samples (every position with >= min_history before it is a sample, listed "
                       "user after user in file order, then time; the last max_samples kept and cut by split_ratio in "
                       "list order; TALLRec)."})
    split_ratio: str = field(default="8:1:1", metadata={"help": "train:valid:test shares for split users|samples."})
    max_samples: int = field(default=0, metadata={"help": "split samples: keep the last N samples of the list "
                             "(TALLRec: 10000; 0: all)."})
    train_samples: int = field(default=0, metadata={"help": "Keep a seeded subset of K training examples (few-shot: "
                               "TALLRec's 16/64/256; 0: all). Validation and test are unchanged."})
    history_window: int = field(default=0, metadata={"help": "Every method sees only the last N interactions before "
                                "a target (examples' history_start; LLaRA and TALLRec: 10; 0: the whole history)."})
    label_threshold: float | None = field(default=None, metadata={"help": "Explicit labels: a target is positive when "
                                          "the user's own rating is above this (TALLRec: 3), negative otherwise; no "
                                          "negatives are sampled (set negatives_* to 0). Needs a format with "
                                          "ratings (movielens, recbole)."})
    allow_truncated: bool = field(default=False, metadata={"help": "Keep the complete lines of a truncated "
                                  "gzip file (counted as truncated_*_files) instead of stopping with an error."})
    seed: int = field(default=0, metadata={"help": "Seed for negative sampling."})
    force: bool = field(default=False, metadata={"help": "Re-run even if outputs are current."})

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: {self.format!r} is not one of {', '.join(FORMATS)}")
        for name in ("max_title_chars", "max_description_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("user_min", "item_min", "min_history", "negatives_train", "negatives_valid",
                     "negatives_test", "max_seq_len", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be >= 1, got {self.max_image_pixels}")
        if self.train_targets_per_user < -1:
            raise ValueError("train_targets_per_user must be -1 (all) or >= 0")
        if self.split not in SPLITS:
            raise ValueError(f"split: {self.split!r} is not one of {', '.join(SPLITS)}")
        if self.split != "leave_last_out":
            splits.parse_ratio(self.split_ratio)
        for name in ("max_samples", "train_samples", "history_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_samples and self.split != "samples":
            raise ValueError("max_samples applies to split: samples only")
        if self.label_threshold is not None:
            sampled = [n for n in ("negatives_train", "negatives_valid", "negatives_test") if getattr(self, n)]
            if sampled:
                raise ValueError(f"label_threshold labels each target by its rating, so no negatives are sampled: set "
                                 f"{', '.join(sampled)} to 0")
        if self.max_seq_len and self.max_seq_len < self.min_history + 2:
            raise ValueError("max_seq_len must leave room for min_history + validation + test")


def prepare_stage(run: RunDir, cfg: PrepareConfig) -> Stage:
    """What the stage reads (the raw files and the image folder, by content) and writes."""
    config = stage_config(cfg)
    inputs = {"interactions": cfg.interactions, "items": cfg.items}
    if cfg.image_dir:
        inputs["image_dir"] = cfg.image_dir
    return Stage(run, STAGE, config, inputs, outputs=[schema.ITEMS_FILE, schema.INTERACTIONS_FILE,
                                                      schema.EXAMPLES_FILE, schema.DATA_STATS_FILE])


@one_writer(STAGE)
def prepare(cfg: PrepareConfig) -> dict:
    """Run the stage (or skip it when its outputs are current); return the statistics."""
    cfg.validate()
    run = RunDir(cfg.run_dir)
    stage = prepare_stage(run, cfg)
    if stage.is_current(cfg.force):
        return json.loads(run.path(schema.DATA_STATS_FILE).read_text())

    t0 = time.perf_counter()
    raw = read_dataset(cfg.format, cfg.interactions, cfg.items, cfg.image_dir, cfg.allow_truncated)
    dropped: Counter = Counter(raw.counts)
    log.info("read %d interactions, %d items in %.1fs", len(raw.interactions), len(raw.items),
             time.perf_counter() - t0)
    _require(len(raw.interactions), f"reading {cfg.interactions}", dropped)
    _require(len(raw.items), f"reading {cfg.items} (no items)", dropped)
    has_rating = schema.RATING in raw.interactions.columns
    if cfg.label_threshold is not None and not has_rating:
        raise ValueError(f"label_threshold: format {cfg.format!r} has no ratings (movielens and recbole have)")

    items = raw.items.sort_values(schema.ITEM, kind="stable").reset_index(drop=True)
    for column, limit, name in ((schema.TITLE, cfg.max_title_chars, "title"),
                                (schema.DESCRIPTION, cfg.max_description_chars, "description")):
        text = items[column].fillna("")
        too_long = text.str.len() > limit
        if too_long.any():
            dropped[f"items_{name}_cut"] += int(too_long.sum())
            items.loc[too_long, column] = text[too_long].str.slice(0, limit).str.rstrip()
    item_codes = pd.Index(items[schema.ITEM]).get_indexer(raw.interactions[schema.ITEM])
    known = item_codes >= 0
    dropped["interactions_unknown_item"] += int((~known).sum())
    inter = raw.interactions[known]
    item_codes = item_codes[known]
    _require(len(inter), "dropping interactions of unknown items", dropped)

    referenced = np.zeros(len(items), dtype=bool)
    referenced[item_codes] = True
    image_paths = np.full(len(items), None, dtype=object)
    usable, reasons = images.verify_images(items[schema.IMAGE][referenced].tolist(), cfg.verify_images,
                                           root=cfg.image_dir, max_pixels=cfg.max_image_pixels)
    image_paths[referenced] = usable
    for reason, n in reasons.items():
        if reason != images.OK:
            dropped[f"items_image_{reason}"] += n
    items[schema.IMAGE] = image_paths

    bad_item = np.zeros(len(items), dtype=bool)
    if cfg.require_title:
        no_title = referenced & (items[schema.TITLE].fillna("").str.strip() == "").to_numpy()
        dropped["items_without_title"] += int(no_title.sum())
        bad_item |= no_title
    if cfg.require_image:
        no_image = referenced & pd.isna(image_paths)
        dropped["items_without_image"] += int((no_image & ~bad_item).sum())
        bad_item |= no_image
    keep = ~bad_item[item_codes]
    dropped["interactions_of_dropped_items"] += int((~keep).sum())
    needs = [name for name, on in (("a title", cfg.require_title), ("an image", cfg.require_image)) if on]
    _require(int(keep.sum()), f"dropping items without {' or '.join(needs)}", dropped)

    user_codes, user_ids = pd.factorize(inter[schema.USER], sort=True)
    users, its = user_codes[keep].astype(np.int64), item_codes[keep].astype(np.int64)
    stamps = inter[schema.TIMESTAMP].to_numpy()[keep]
    rates = inter[schema.RATING].to_numpy(np.float64)[keep] if has_rating else np.full(len(users), np.nan)
    file_order = np.full(len(user_ids), len(user_codes), dtype=np.int64)  # each user's first row in the file
    np.minimum.at(file_order, user_codes, np.arange(len(user_codes)))

    order = np.lexsort((stamps, its, users))
    users, its, stamps, rates = users[order], its[order], stamps[order], rates[order]
    same_pair = np.concatenate(([False], (users[1:] == users[:-1]) & (its[1:] == its[:-1])))
    exact = same_pair & np.concatenate(([False], stamps[1:] == stamps[:-1]))
    dropped["duplicate_rows"] += int(exact.sum())
    repeat = same_pair & ~exact if cfg.dedup_pairs else np.zeros_like(exact)
    dropped["repeated_pairs"] += int(repeat.sum())
    first = ~(exact | repeat)
    users, its, stamps, rates = users[first], its[first], stamps[first], rates[first]

    n_users, n_items = len(user_ids), len(items)
    core, rounds = splits.kcore(users, its, cfg.user_min, cfg.item_min, n_users, n_items)
    dropped["kcore_interactions"] += int((~core).sum())
    users, its, stamps, rates = users[core], its[core], stamps[core], rates[core]
    _require(len(users), f"the {cfg.user_min}/{cfg.item_min}-core", dropped)
    log.info("k-core (%d, %d): %d rounds, %d interactions left", cfg.user_min, cfg.item_min, rounds, len(users))

    order = splits.chronological_order(users, stamps, its)
    users, its, stamps, rates = users[order], its[order], stamps[order], rates[order]
    consumed_users, consumed_items = users, its  # every (user, item) a user consumed, the capped-away ones too
    if cfg.max_seq_len:
        recent = splits.keep_last(users, cfg.max_seq_len)
        dropped["interactions_beyond_max_seq_len"] += int((~recent).sum())
        users, its, stamps, rates = users[recent], its[recent], stamps[recent], rates[recent]

    # re-code the surviving users and items densely (items stay in id order)
    user_keep, users = np.unique(users, return_inverse=True)
    item_keep, its = np.unique(its, return_inverse=True)
    user_ids = np.asarray(user_ids)[user_keep]
    items = items.iloc[item_keep].reset_index(drop=True)
    n_users, n_items = len(user_keep), len(item_keep)

    pos, starts, lengths = splits.positions_in_runs(users)
    targets, protocol = _choose_targets(cfg, starts, lengths, stamps, np.argsort(file_order[user_keep], kind="stable"))
    dropped["users_too_short_to_split"] += targets.users_too_short
    ex_users = users[targets.rows]
    per_split = np.array([cfg.negatives_train, cfg.negatives_valid, cfg.negatives_test])
    # a negative is never an item the user consumed, also before a --max_seq_len cap
    seen = splits.seen_keys(consumed_users, consumed_items, user_keep, item_keep)
    negatives, offsets, fillable = splits.sample_negatives(
        ex_users, per_split[targets.split], seen, np.bincount(seen // n_items, minlength=n_users), n_items, cfg.seed)
    dropped["examples_without_enough_negatives"] += int((~fillable).sum())
    test_code = schema.SPLITS.index("test")
    if not (fillable & (targets.split == test_code)).any():
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()) if v) or "none"
        log.warning("no test examples left (%d users, %d items; dropped, by reason: %s): every user needs min_history "
                    "(%d) + 2 interactions, and negatives_test (%d) items it never interacted with; lower them, or use "
                    "more data (later stages have nothing to score)", n_users, n_items, reasons, cfg.min_history,
                    cfg.negatives_test)

    user_arr, item_arr = pa.array(user_ids.astype(str)), pa.array(items[schema.ITEM].astype(str))
    rows, split_codes = targets.rows[fillable], targets.split[fillable]
    neg_offsets = np.concatenate(([0], np.cumsum(np.diff(offsets)[fillable])))
    split_names = np.array(schema.SPLITS)

    write_parquet(run.path(schema.ITEMS_FILE), pa.table({
        schema.ITEM: item_arr,
        schema.TITLE: pa.array(items[schema.TITLE].fillna(""), pa.string()),
        schema.DESCRIPTION: pa.array(items[schema.DESCRIPTION].fillna(""), pa.string()),
        schema.BRAND: pa.array(items[schema.BRAND].fillna(""), pa.string()),
        schema.CATEGORIES: pa.array(items[schema.CATEGORIES].tolist(), pa.list_(pa.string())),
        schema.IMAGE: pa.array(items[schema.IMAGE], pa.string(), from_pandas=True)}))
    extra = {schema.RATING: pa.array(rates, pa.float32())} if has_rating else {}
    if cfg.label_threshold is not None:
        extra[schema.LIKED] = pa.array(rates > cfg.label_threshold)
    write_parquet(run.path(schema.INTERACTIONS_FILE), pa.table({
        schema.USER: user_arr.take(pa.array(users)), schema.ITEM: item_arr.take(pa.array(its)),
        schema.TIMESTAMP: pa.array(stamps, pa.int64()), schema.POSITION: pa.array(pos, pa.int32()), **extra}))
    history = pos[rows]
    labels = rates[rows] > cfg.label_threshold if cfg.label_threshold is not None else np.ones(len(rows), bool)
    write_parquet(run.path(schema.EXAMPLES_FILE), pa.table({
        schema.USER: user_arr.take(pa.array(users[rows])),
        schema.SPLIT: pa.array(split_names[split_codes]),
        schema.TARGET: item_arr.take(pa.array(its[rows])),
        schema.HISTORY_LEN: pa.array(history, pa.int32()),
        schema.CUTOFF_TS: pa.array(stamps[rows], pa.int64()),
        schema.NEGATIVES: pa.ListArray.from_arrays(pa.array(neg_offsets, pa.int32()),
                                                   item_arr.take(pa.array(negatives))),
        schema.HISTORY_START: pa.array(np.maximum(history - cfg.history_window, 0) if cfg.history_window else
                                       np.zeros(len(rows), np.int64), pa.int32()),
        schema.TARGET_LABEL: pa.array(labels.astype(np.int8), pa.int8()),
    }).replace_schema_metadata({schema.SPLIT_METADATA: cfg.split}))
    stats = _statistics(cfg, n_users, n_items, lengths, items, split_names[split_codes], dropped, rounds)
    protocol["positive_targets"] = {s: int(labels[split_codes == code].sum()) for code, s in enumerate(schema.SPLITS)}
    stats["protocol"] = {"split": cfg.split, "split_ratio": cfg.split_ratio if cfg.split != "leave_last_out" else None,
                         "history_window": cfg.history_window, "label_threshold": cfg.label_threshold,
                         "train_samples": cfg.train_samples, **protocol}
    write_json(run.path(schema.DATA_STATS_FILE), stats)
    stage.commit()
    log.info("data prepare: done in %.1fs -> %s", time.perf_counter() - t0, run.root)
    return stats


def _choose_targets(cfg: PrepareConfig, starts: np.ndarray, lengths: np.ndarray, stamps: np.ndarray,
                    file_order: np.ndarray) -> tuple[splits.Targets, dict]:
    """The examples' rows and splits under `cfg.split`, cut to `train_samples`; and what the protocol left out."""
    beyond = 0
    if cfg.split == "users":
        targets = splits.user_ratio_split(starts, lengths, stamps[starts + lengths - 1],
                                          splits.parse_ratio(cfg.split_ratio), cfg.train_targets_per_user,
                                          cfg.min_history)
    elif cfg.split == "samples":
        targets, beyond = splits.sample_list_split(starts, lengths, file_order, splits.parse_ratio(cfg.split_ratio),
                                                   cfg.min_history, cfg.max_samples)
    else:
        targets = splits.leave_last_out(starts, lengths, cfg.train_targets_per_user, cfg.min_history)
    targets, k_out = splits.k_shot(targets, cfg.train_samples, cfg.seed)
    return targets, {"samples_beyond_max_samples": beyond, "train_examples_beyond_train_samples": k_out}


def _require(n: int, step: str, dropped: Counter) -> None:
    """Stop with one clear error when a step leaves nothing to work with (never an IndexError later)."""
    if n == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()) if v) or "none"
        raise ValueError(f"no interactions left after {step} (dropped, by reason: {reasons})")


def _statistics(cfg: PrepareConfig, n_users: int, n_items: int, lengths: np.ndarray, items: pd.DataFrame,
                example_splits: np.ndarray, dropped: Counter, rounds: int) -> dict:
    n_inter = int(lengths.sum())
    pct = np.percentile(lengths, [0, 25, 50, 75, 90, 99, 100]) if n_inter else np.zeros(7)
    with_image = int(items[schema.IMAGE].notna().sum())
    return {
        "format": cfg.format,
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "density": n_inter / (n_users * n_items) if n_users and n_items else 0.0,
        "sequence_length": dict(zip(["min", "p25", "p50", "p75", "p90", "p99", "max"],
                                    [float(p) for p in pct]), mean=float(lengths.mean()) if n_inter else 0.0),
        "items_with_image": with_image,
        "image_coverage": with_image / n_items if n_items else 0.0,
        "examples": {s: int((example_splits == s).sum()) for s in schema.SPLITS},
        "kcore_rounds": rounds,
        "dropped": dict(sorted((k, int(v)) for k, v in dropped.items() if v)),
    }
