"""`msr baselines train|evaluate`: SASRec, GRU4Rec and popularity on a run directory.

train: fit the model on the split's training interactions (msr.baselines.data), early-stopped on
the validation examples' full-ranking metric, and save the best epoch's weights. evaluate: for the
valid and test examples, (a) a score for every candidate (the very rows `msr.evaluate.candidate_table`
builds) -> OUTPUT (default MODEL_scores.parquet), for `msr evaluate --methods NAME=OUTPUT`; (b) full-ranking
Recall@K and NDCG@K, history masked -> baselines/NAME/metrics.json; (c) the top retrieve_k items of every
example, history masked, target not forced in -> RETRIEVAL (default NAME_retrieval.parquet). Popularity
has nothing to train: its evaluate writes the same three files. Each stage skips itself when its outputs
are current for the same settings and inputs; NAME is the output's stem without `_scores` (`cfg.name`).

Files in the run directory: baselines/NAME/model.safetensors (best weights), baselines/NAME/state.json
(the training record), baselines/NAME/metrics.json, OUTPUT, RETRIEVAL.
"""

from __future__ import annotations

import json
import logging
import time

import pandas as pd
import pyarrow as pa
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from msr import schema
from msr.baselines.config import BaselineConfig
from msr.baselines.data import history_rows, training_windows
from msr.baselines.popularity import popularity_scorer
from msr.baselines.train import build_model, fit, user_vectors
from msr.graph.data import RunData, candidate_codes, history_matrix, load_run, split_rows
from msr.graph.ranking import Scorer, dot_scorer, rank_all, recall_ndcg, retrieval_table
from msr.models import resolve_device
from msr.provenance import Stage, one_writer, stage_config
from msr.rundir import RunDir, atomic_path, write_json, write_parquet

log = logging.getLogger(__name__)
BASELINES_DIR = "baselines"
MODEL_FILE, STATE_FILE, METRICS_FILE = "model.safetensors", "state.json", "metrics.json"
# settings that change neither the trained weights nor (but for the outputs' names and sizes) the scores
_NOT_HASHED = ("run_dir", "force", "device", "output", "retrieval", "ks", "retrieve_k")
_EVAL_KEYS = ("ks", "retrieve_k", "output", "retrieval")


def _file(cfg: BaselineConfig, name: str) -> str:
    return f"{BASELINES_DIR}/{cfg.name}/{name}"


def _tables(run: RunDir) -> dict:
    names = [schema.ITEMS_FILE, schema.INTERACTIONS_FILE, schema.EXAMPLES_FILE]
    run.require(*names)
    return {name: run.path(name) for name in names}


def train_stage(cfg: BaselineConfig, run: RunDir) -> Stage:
    """What the trained weights depend on: the training settings and the run's tables (by content)."""
    return Stage(run, f"baselines.{cfg.name}.train", stage_config(cfg, _NOT_HASHED), _tables(run),
                 outputs=[_file(cfg, MODEL_FILE), _file(cfg, STATE_FILE)])


def eval_stage(cfg: BaselineConfig, run: RunDir) -> Stage:
    """What the outputs depend on: for a trained model, its files (by content) and the training stage's
    settings and inputs; for popularity, the tables alone."""
    outputs = [str(cfg.output), str(cfg.retrieval), _file(cfg, METRICS_FILE)]
    evaluation = {key: getattr(cfg, key) for key in _EVAL_KEYS}
    if cfg.model == "popularity":
        return Stage(run, f"baselines.{cfg.name}", {"model": cfg.model, **evaluation}, _tables(run), outputs=outputs)
    trained = train_stage(cfg, run)
    status = trained.status()
    if not status.current:
        raise FileNotFoundError(f"{run.path(_file(cfg, ''))}: no current trained {cfg.model} for these settings and "
                                f"inputs ({status}): run `msr baselines train` with the same settings first")
    inputs = {**trained.inputs, **{out: run.path(out) for out in trained.outputs}}
    return Stage(run, f"baselines.{cfg.name}", {**trained.config, **evaluation}, inputs, outputs=outputs)


def _encode(model: nn.Module, data: RunData, rows: pd.DataFrame, cfg: BaselineConfig,
            device: torch.device) -> torch.Tensor:
    """The user vector of each example row: the model's output at the last of its history's items."""
    start = rows[schema.HISTORY_START].to_numpy() if schema.HISTORY_START in rows.columns else None
    return user_vectors(model, history_rows(data, rows["user_code"].to_numpy(), rows[schema.HISTORY_LEN].to_numpy(),
                                            cfg.max_len, start), device)


@one_writer(lambda cfg: f"baselines.{cfg.name}.train")
def train_baseline(cfg: BaselineConfig) -> dict:
    """Train SASRec or GRU4Rec (or skip when current; popularity has nothing to train); return the record."""
    cfg.validate()
    if cfg.model == "popularity":
        log.info("popularity has nothing to train: `msr baselines evaluate` scores it")
        return {"model": cfg.model, "trained": False}
    run = RunDir(cfg.run_dir)
    stage = train_stage(cfg, run)
    if stage.is_current(cfg.force):
        return json.loads(run.path(_file(cfg, STATE_FILE)).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    data = load_run(run)
    valid = split_rows(data, schema.VALID)
    windows = training_windows(data, cfg.max_len)
    if valid.empty or not len(windows) or data.n_items < 2:
        raise ValueError(f"{run.root}: nothing to train {cfg.model} on ({len(valid)} validation examples, "
                         f"{len(windows)} training windows, {data.n_items} items): it needs validation examples for "
                         "early stopping, users with at least 2 training interactions and 2 items; re-run `msr data prepare`")
    device = torch.device(resolve_device(cfg.device))
    model = build_model(cfg, data.n_items).to(device)
    valid_history, valid_targets = history_matrix(data, valid), valid["target_code"].to_numpy()

    def validate(model: nn.Module) -> float:
        scorer = dot_scorer(_encode(model, data, valid, cfg, device), model.item_vectors().detach())
        ranks = rank_all(scorer, valid_history, valid_targets).ranks
        return recall_ndcg(ranks, [cfg.stop_k])[f"{cfg.metric}@{cfg.stop_k}"]

    record = fit(model, windows, validate, cfg, data.n_items, device)
    record.update(model=cfg.model, metric=f"{cfg.metric}@{cfg.stop_k}", seconds=round(time.perf_counter() - t0, 2))
    with atomic_path(run.path(_file(cfg, MODEL_FILE))) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    write_json(run.path(_file(cfg, STATE_FILE)), record)
    stage.commit()
    log.info("%s train: best valid %s %.4f at epoch %d of %d", cfg.model, record["metric"], record["best"],
             record["best_epoch"], record["epoch"])
    return record


@one_writer(lambda cfg: f"baselines.{cfg.name}")
def evaluate_baseline(cfg: BaselineConfig) -> dict:
    """Scored candidates, full-ranking metrics and retrieval lists of valid and test (or skip when current)."""
    from msr.evaluate import candidate_table

    cfg.validate()
    run = RunDir(cfg.run_dir)
    stage = eval_stage(cfg, run)
    if stage.is_current(cfg.force):
        return json.loads(run.path(_file(cfg, METRICS_FILE)).read_text(encoding="utf-8"))
    data = load_run(run)
    metrics: dict = {"model": cfg.model}
    device = torch.device(resolve_device(cfg.device))
    model = None
    if cfg.model != "popularity":
        model = build_model(cfg, data.n_items)
        model.load_state_dict(load_file(str(run.path(_file(cfg, MODEL_FILE)))))
        model.to(device).eval()
        metrics["best_epoch"] = json.loads(run.path(_file(cfg, STATE_FILE)).read_text(encoding="utf-8"))["best_epoch"]
    scored, retrieved = [], []
    with torch.no_grad():
        for split in (schema.VALID, schema.TEST):
            rows = split_rows(data, split)
            scorer: Scorer
            if model is None:  # popularity scores blocks of examples in cutoff order
                rows = rows.sort_values(schema.CUTOFF_TS, kind="stable")
                scorer = popularity_scorer(run, data, rows)
            else:
                scorer = dot_scorer(_encode(model, data, rows, cfg, device), model.item_vectors())
            table = candidate_table(run, split)
            where, items = candidate_codes(run, data, rows, table)
            result = rank_all(scorer, history_matrix(data, rows), rows["target_code"].to_numpy(), cfg.retrieve_k, where, items)
            metrics[split] = recall_ndcg(result.ranks, cfg.ks)
            scored.append(table.drop(columns=[schema.CUTOFF_TS]).assign(**{schema.SCORE: result.picked}))
            retrieved.append(retrieval_table(rows, data.items[schema.ITEM].to_numpy(), result.top))
    for name, frames in ((cfg.output, scored), (cfg.retrieval, retrieved)):
        write_parquet(run.path(str(name)), pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False))
    write_json(run.path(_file(cfg, METRICS_FILE)), metrics)
    stage.commit()
    log.info("%s evaluate: test %s", cfg.name, {k: round(v, 4) for k, v in metrics[schema.TEST].items()})
    return metrics
