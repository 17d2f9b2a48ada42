"""Benchmark: SASRec at the size of MicroLens-1M: one training epoch and full-ranking evaluation on a CPU.

A MicroLens-1M-shaped log built in memory with numpy (no run directory, no parquet): 1M users,
100k items, sequence lengths 5 + geometric (mean 9), Zipf-like item popularity (p ~ 1 / rank^0.8),
no item twice per user; leave-last-out, so each user's training prefix is all but the last two
items. Times, on msr.baselines' own functions:
- epoch_seconds: one SASRec epoch over every training window (`training_windows`, `train_epoch`),
  with the sampled loss (`--loss bce`, one negative per position): full-softmax CE over 100k items
  would need (batch x positions x 100k) logits per step, ~3 GB at batch 1024;
- encode_seconds + rank_seconds: the test example of `--eval_users` users (the target at the last
  position, the history before it) against all items, in row blocks (`rank_all`): the target's rank
  and the top `--retrieve_k` list with the history masked, as `msr baselines evaluate` computes them.
Peak RSS covers the whole run (targets: epoch within 10 minutes, peak RSS within 8 GB). Prints one
JSON object on its last line.

    python bench/sasrec_scale.py                        # full size
    python bench/sasrec_scale.py --users 100000         # a quick check (items and eval users scale down too)
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import pandas as pd
import torch
from common import matmul_ms  # bench/ is on sys.path when run as a script

from msr import schema
from msr.baselines.config import BaselineConfig
from msr.baselines.data import history_rows, training_windows
from msr.baselines.train import build_model, train_epoch, user_vectors
from msr.graph.data import RunData, prefix_matrix
from msr.graph.ranking import dot_scorer, rank_all, recall_ndcg


def synthetic(n_users: int, n_items: int, mean_len: float, seed: int) -> RunData:
    """Each user's item sequence (distinct items, Zipf popularity) as msr.graph.data codes it."""
    rng = np.random.default_rng(seed)
    lengths = 5 + rng.geometric(1 / (mean_len - 4), size=n_users) - 1
    popularity = 1 / np.arange(1, n_items + 1) ** 0.8
    users = np.repeat(np.arange(n_users), lengths)
    seq = rng.choice(n_items, size=len(users), p=popularity / popularity.sum())
    for _ in range(20):  # one item at most once per user: redraw uniformly where a pair repeats
        _, first = np.unique(users.astype(np.int64) * n_items + seq, return_index=True)
        repeat = np.ones(len(seq), dtype=bool)
        repeat[first] = False
        if not repeat.any():
            break
        seq[repeat] = rng.integers(0, n_items, int(repeat.sum()))
    return RunData(items=pd.DataFrame({schema.ITEM: np.arange(n_items).astype(str)}), users=pd.RangeIndex(n_users),
                   seq_items=seq.astype(np.int64), seq_start=np.concatenate(([0], np.cumsum(lengths)[:-1])),
                   seq_len=lengths, train_len=lengths - 2, examples=pd.DataFrame())


def _rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def main() -> None:
    """Generate the log, time one epoch and the full-ranking evaluation; print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=None, help="Default: users / 10.")
    parser.add_argument("--eval_users", type=int, default=None, help="Default: users / 10.")
    parser.add_argument("--mean_len", type=float, default=9.0)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--max_len", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--loss", choices=["bce", "ce"], default="bce")
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--retrieve_k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_items = args.items or args.users // 10
    eval_users = min(args.eval_users or args.users // 10, args.users)
    probe = [matmul_ms()]

    t0 = time.perf_counter()
    data = synthetic(args.users, n_items, args.mean_len, args.seed)
    windows = training_windows(data, args.max_len)
    generate_seconds, generate_rss = time.perf_counter() - t0, _rss_gb()

    cfg = BaselineConfig(run_dir="-", model="sasrec", hidden_size=args.hidden_size, layers=args.layers, heads=args.heads,
                         max_len=args.max_len, batch_size=args.batch_size, loss=args.loss, negatives=args.negatives,
                         seed=args.seed, device="cpu")
    cfg.validate()
    device = torch.device("cpu")
    model = build_model(cfg, n_items)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    loss = train_epoch(model, optimizer, windows, cfg, n_items, torch.Generator().manual_seed(args.seed), device)
    epoch_seconds, train_rss = time.perf_counter() - t0, _rss_gb()

    users = np.arange(eval_users)
    h = data.seq_len[users] - 1  # the test example: the last item, after everything before it
    t0 = time.perf_counter()
    vectors = user_vectors(model, history_rows(data, users, h, args.max_len), device)
    encode_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        result = rank_all(dot_scorer(vectors, model.item_vectors().detach()), prefix_matrix(data, users, h),
                          data.seq_items[data.seq_start[users] + h], k=args.retrieve_k)
    rank_seconds = time.perf_counter() - t0
    probe.append(matmul_ms())
    print(json.dumps({
        "bench": "sasrec_scale", "users": args.users, "items": n_items, "interactions": int(data.seq_len.sum()),
        "threads": torch.get_num_threads(), "loss": args.loss, "negatives": args.negatives,
        "hidden_size": args.hidden_size, "layers": args.layers, "max_len": args.max_len, "batch_size": args.batch_size,
        "windows": len(windows), "train_positions": int(windows.length.sum()),
        "steps": -(-len(windows) // args.batch_size), "epoch_seconds": round(epoch_seconds, 1),
        "epoch_loss": round(loss, 4), "eval_users": eval_users, "encode_seconds": round(encode_seconds, 1),
        "rank_seconds": round(rank_seconds, 1), "retrieve_k": args.retrieve_k,
        "retrieved_rows": len(result.top.items), "test": recall_ndcg(result.ranks, [10, 20]),
        "generate_seconds": round(generate_seconds, 1), "rss_gb_after_generate": generate_rss,
        "rss_gb_after_epoch": train_rss, "peak_rss_gb": _rss_gb(), "matmul_probe_ms": probe,
    }))


if __name__ == "__main__":
    main()
