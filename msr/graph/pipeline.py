"""`msr graph train|evaluate`: the MLLMRec stage on a run directory.

train: embed item and user texts (cached), build the item-item graph from training interactions,
fit the towers with early stopping on validation Recall@stop_k. evaluate: full-ranking Recall@K
and NDCG@K on valid and test (history masked) -> graph/metrics.json, a score for every
candidate of the valid and test examples (the very candidates `msr score` scores) ->
graph_scores.parquet, for `msr evaluate --methods graph=graph_scores.parquet`, and the top
retrieve_k items of every valid and test example (history masked, the target not forced in) ->
graph_retrieval.parquet, so the graph recommender can serve as a retriever. Both stages skip
themselves when their outputs are current for the same settings and inputs.

Files in the run directory: graph/embeddings/ (cache), graph/item_graph.npz (scipy sparse),
graph/model.safetensors, graph/state.json (training record), graph/metrics.json, the output and
the retrieval table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
import torch
from safetensors.torch import load_file

from msr import schema
from msr.data.tables import refuse_window
from msr.graph.build import build_item_graph, propagate
from msr.graph.config import GraphConfig
from msr.graph.data import (
    RunData,
    candidate_codes,
    history_matrix,
    item_texts,
    load_run,
    split_rows,
    train_incidence,
    user_texts,
)
from msr.graph.encode import embed_texts, encoder_key, resolve_encoder
from msr.graph.model import MODEL_FILE, STATE_FILE, Pairs, Towers, fit, init_towers
from msr.graph.ranking import dot_scorer, rank_all, recall_ndcg, retrieval_table, target_ranks
from msr.models import resolve_device
from msr.provenance import Stage, one_writer, stage_config
from msr.rundir import RunDir, atomic_path, write_json, write_parquet

log = logging.getLogger(__name__)
TRAIN_STAGE, EVAL_STAGE = "graph.train", "graph.evaluate"
GRAPH_DIR = "graph"
EMBEDDINGS_DIR, GRAPH_FILE, METRICS_FILE = "graph/embeddings", "graph/item_graph.npz", "graph/metrics.json"
# settings that change neither the model nor its scores
_NOT_HASHED = ("run_dir", "force", "device", "encode_batch_size", "output", "ks", "retrieve_k", "retrieval")


@dataclass
class Features:
    """Frozen embeddings: items in item-code order, user texts in examples.parquet row order."""

    items: np.ndarray
    users: np.ndarray


def _tables(cfg: GraphConfig, run: RunDir) -> dict:
    names = [schema.ITEMS_FILE, schema.INTERACTIONS_FILE, schema.EXAMPLES_FILE]
    names += [schema.ITEM_SUMMARY_TABLE] if cfg.item_summary else []
    names += [schema.USER_SUMMARIES_FILE] if cfg.user_summary else []
    run.require(*names)
    return {name: run.path(name) for name in names}


def train_stage(cfg: GraphConfig, run: RunDir) -> Stage:
    """What the trained model depends on: settings, encoder weights, input tables (by content)."""
    return Stage(run, TRAIN_STAGE, stage_config(cfg, _NOT_HASHED), _tables(cfg, run), {"encoder": encoder_key(resolve_encoder(cfg.encoder))},
                 outputs=[GRAPH_FILE, f"{GRAPH_DIR}/{MODEL_FILE}", f"{GRAPH_DIR}/{STATE_FILE}"])


def eval_stage(cfg: GraphConfig, run: RunDir, trained: Stage) -> Stage:
    """What the scores depend on: the trained model (its files, by content) and the same inputs."""
    inputs = {**trained.inputs, **{out: run.path(out) for out in trained.outputs}}
    settings = {"ks": cfg.ks, "output": cfg.output, "retrieve_k": cfg.retrieve_k, "retrieval": cfg.retrieval}
    return Stage(run, EVAL_STAGE, {**trained.config, **settings}, inputs, trained.values,
                 outputs=[cfg.output, cfg.retrieval, METRICS_FILE])


def embed(cfg: GraphConfig, run: RunDir, data: RunData) -> Features:
    """Item and user-text embeddings of the whole run, from the cache where it has them."""
    common = {"encoder": cfg.encoder, "cache_root": run.path(EMBEDDINGS_DIR), "device": cfg.device,
              "batch_size": cfg.encode_batch_size, "trust_remote_code": cfg.trust_remote_code}
    items = item_texts(run, data, cfg.item_summary)
    users = user_texts(run, data, data.examples, cfg.user_summary, cfg.history_titles)
    # one call: the encoder is loaded, and the cache read, once for both
    vectors = embed_texts(items + users, desc="item and user texts", **common)
    return Features(items=vectors[:len(items)], users=vectors[len(items):])


@one_writer(TRAIN_STAGE)
def train_graph(cfg: GraphConfig) -> dict:
    """Train the graph recommender (or skip when current); return the training record."""
    cfg.validate()
    run = RunDir(cfg.run_dir)
    stage = train_stage(cfg, run)
    if stage.is_current(cfg.force):
        return json.loads(run.path(f"{GRAPH_DIR}/{STATE_FILE}").read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    key = stage.fingerprint()
    refuse_window(run, "msr graph train")
    data = load_run(run)
    train, valid = split_rows(data, schema.TRAIN), split_rows(data, schema.VALID)
    for rows, what in ((train, "training"), (valid, "validation")):
        if rows.empty:
            raise ValueError(f"{run.path(schema.EXAMPLES_FILE)} has no {what} examples: the towers train on the "
                             "training examples and stop early on the validation ones; re-run `msr data prepare`")
    features = embed(cfg, run, data)
    incidence = train_incidence(data)
    graph = build_item_graph(features.items, incidence, cfg.knn_k, cfg.pure, cfg.knn_jac)
    with atomic_path(run.path(GRAPH_FILE)) as tmp, tmp.open("wb") as f:
        sp.save_npz(f, graph)
    log.info("graph: %d items, %d edges (%.1f per item)", graph.shape[0], graph.nnz, graph.nnz / max(graph.shape[0], 1))

    device = torch.device(resolve_device(cfg.device))
    item_features = torch.as_tensor(propagate(graph, features.items), device=device)
    coo = incidence.tocoo()
    pairs = Pairs(user_features=torch.as_tensor(features.users[train.index.to_numpy()], device=device),
                  users=train["user_code"].to_numpy(), items=train["target_code"].to_numpy(),
                  seen_keys=np.sort(coo.row.astype(np.int64) * data.n_items + coo.col), n_items=data.n_items)
    valid_users = torch.as_tensor(features.users[valid.index.to_numpy()], device=device)
    valid_targets, valid_history = valid["target_code"].to_numpy(), history_matrix(data, valid)

    def validate(towers: Towers) -> float:
        towers.eval()
        ranks = target_ranks(towers.user(valid_users), towers.item(item_features), valid_targets, valid_history)
        return recall_ndcg(ranks, [cfg.stop_k])[f"recall@{cfg.stop_k}"]

    towers = init_towers(features.items.shape[1], cfg.hidden_dim, cfg.embed_dim, cfg.seed).to(device)
    record = fit(towers, item_features, pairs, validate, run.path(GRAPH_DIR), key, cfg.learning_rate,
                 cfg.batch_size, cfg.max_epochs, cfg.patience, cfg.seed, resume=not cfg.force)
    record.update(edges=int(graph.nnz), train_pairs=len(train), seconds=round(time.perf_counter() - t0, 2))
    write_json(run.path(f"{GRAPH_DIR}/{STATE_FILE}"), record)
    stage.commit()
    log.info("graph train: best valid recall@%d %.4f at epoch %d of %d", cfg.stop_k, record["best"],
             record["best_epoch"], record["epoch"])
    return record


@one_writer(EVAL_STAGE)
def evaluate_graph(cfg: GraphConfig) -> dict:
    """Full-ranking metrics and scored candidates of the trained model (or skip when current)."""
    from msr.evaluate import candidate_table

    cfg.validate()
    run = RunDir(cfg.run_dir)
    trained = train_stage(cfg, run)
    status = trained.status()
    if not status.current:
        raise FileNotFoundError(f"{run.path(GRAPH_DIR)}: no current trained model for these settings and inputs "
                                f"({status}): run `msr graph train` with the same settings first")
    stage = eval_stage(cfg, run, trained)
    if stage.is_current(cfg.force):
        return json.loads(run.path(METRICS_FILE).read_text(encoding="utf-8"))
    data = load_run(run)
    features = embed(cfg, run, data)
    with run.path(GRAPH_FILE).open("rb") as f:
        graph = sp.load_npz(f)
    device = torch.device(resolve_device(cfg.device))
    towers = Towers(features.items.shape[1], cfg.hidden_dim, cfg.embed_dim)
    towers.load_state_dict(load_file(str(run.path(f"{GRAPH_DIR}/{MODEL_FILE}"))))
    towers.to(device).eval()
    state = json.loads(run.path(f"{GRAPH_DIR}/{STATE_FILE}").read_text(encoding="utf-8"))
    metrics: dict = {"encoder": cfg.encoder, "best_epoch": state["best_epoch"], "edges": int(graph.nnz)}
    scored, retrieved = [], []
    with torch.no_grad():
        item_vecs = towers.item(torch.as_tensor(propagate(graph, features.items), device=device))
        for split in (schema.VALID, schema.TEST):
            rows = split_rows(data, split)
            user_vecs = towers.user(torch.as_tensor(features.users[rows.index.to_numpy()], device=device))
            ranking = rank_all(dot_scorer(user_vecs, item_vecs), history_matrix(data, rows), rows["target_code"].to_numpy(),
                               cfg.retrieve_k)
            metrics[split] = recall_ndcg(ranking.ranks, cfg.ks)
            retrieved.append(retrieval_table(rows, data.items[schema.ITEM].to_numpy(), ranking.top))
            table = candidate_table(run, split)
            where, items = candidate_codes(run, data, rows, table)
            table[schema.SCORE] = (user_vecs[torch.as_tensor(where, device=device)]
                                   * item_vecs[torch.as_tensor(items, device=device)]).sum(-1).cpu().numpy()
            scored.append(table.drop(columns=[schema.CUTOFF_TS]))
    for name, frames in ((cfg.output, scored), (cfg.retrieval, retrieved)):
        write_parquet(run.path(name), pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False))
    write_json(run.path(METRICS_FILE), metrics)
    stage.commit()
    log.info("graph evaluate: test %s", {k: round(v, 4) for k, v in metrics[schema.TEST].items()})
    return metrics


def run_graph(cfg: GraphConfig) -> dict:
    """Train (or reuse) the graph recommender, then evaluate it; return {"train": ..., "metrics": ...}."""
    return {"train": train_graph(cfg), "metrics": evaluate_graph(cfg)}
