"""Benchmark: the MLLMRec graph and one training epoch at the size of Amazon Clothing (2018, 5-core).

39,387 users, 23,033 items, ~280k interactions (sequence lengths 5 + geometric, Zipf-like item
popularity), 384-d item embeddings in 500 clusters (so the cosine threshold keeps real edges) and
a random 384-d user-text embedding per training pair. Times, on msr's own functions:
- graph_seconds: cosine top-10 in row blocks + threshold, Jaccard top-10 from the sparse
  incidence matrix of the training interactions, symmetric normalisation (build_item_graph);
- epoch_seconds: one BPR epoch over every training position (an upper bound: msr trains on the
  examples' targets, one to a few per user) with seeded negatives, batch 2048;
- valid_seconds: one full-ranking validation pass (every user against every item, history masked).
Peak RSS covers the whole run; `matmul_probe_ms` (bench/common.py) before and after tells a
contended machine (~0.25 ms is normal here). Prints one JSON object on its last line.

    OMP_NUM_THREADS=1 python bench/graph.py              # full size, one thread
    python bench/graph.py --users 5000 --items 3000       # smaller, for a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import scipy.sparse as sp
import torch
from common import matmul_ms  # bench/ is on sys.path when run as a script

from msr.graph.build import build_item_graph, propagate
from msr.graph.model import Pairs, init_towers, train_epoch
from msr.graph.ranking import recall_ndcg, target_ranks


def synthetic(n_users: int, n_items: int, mean_len: float, dim: int, seed: int) -> dict:
    """Item embeddings, each user's item sequence (distinct items, Zipf popularity), pair features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(500, dim)).astype(np.float32)
    items = centres[rng.integers(0, 500, n_items)] + 0.5 * rng.normal(size=(n_items, dim)).astype(np.float32)
    lengths = 5 + rng.geometric(1 / (mean_len - 4), size=n_users) - 1
    popularity = 1 / np.arange(1, n_items + 1) ** 0.8
    draws = rng.choice(n_items, size=int(lengths.sum() * 1.2) + 1000, p=popularity / popularity.sum())
    users = np.repeat(np.arange(n_users), lengths)
    seq = draws[:len(users)].copy()
    # one item at most once per user: redraw uniformly where a pair repeats
    for _ in range(20):
        keys = users.astype(np.int64) * n_items + seq
        _, first = np.unique(keys, return_index=True)
        repeat = np.ones(len(seq), dtype=bool)
        repeat[first] = False
        if not repeat.any():
            break
        seq[repeat] = rng.integers(0, n_items, int(repeat.sum()))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    return {"items": items, "users": users, "seq": seq, "lengths": lengths, "starts": starts, "rng": rng}


def main() -> None:
    """Generate the synthetic data, time the graph, one epoch and one validation pass; print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=39_387)
    parser.add_argument("--items", type=int, default=23_033)
    parser.add_argument("--mean_len", type=float, default=7.08)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    probe = [matmul_ms()]
    t0 = time.perf_counter()
    d = synthetic(args.users, args.items, args.mean_len, args.dim, args.seed)
    gen_seconds = time.perf_counter() - t0
    n_items, lengths, starts = args.items, d["lengths"], d["starts"]
    position = np.arange(len(d["seq"])) - np.repeat(starts, lengths)
    train_len = lengths - 2  # leave-last-out: the last two positions are validation and test
    training = position < np.repeat(train_len, lengths)
    incidence = sp.csr_matrix((np.ones(int(training.sum()), np.float32), (d["users"][training], d["seq"][training])),
                              shape=(args.users, n_items))

    t0 = time.perf_counter()
    graph = build_item_graph(d["items"], incidence, knn_k=10, pure=0.5, knn_jac=10)
    item_features = torch.from_numpy(propagate(graph, d["items"]))
    graph_seconds = time.perf_counter() - t0

    pair_rows = np.flatnonzero(training & (position >= 1))  # every training position after the first
    coo = incidence.tocoo()
    pairs = Pairs(user_features=torch.from_numpy(d["rng"].normal(size=(len(pair_rows), args.dim)).astype(np.float32)),
                  users=d["users"][pair_rows], items=d["seq"][pair_rows],
                  seen_keys=np.sort(coo.row.astype(np.int64) * n_items + coo.col), n_items=n_items)
    towers = init_towers(args.dim, 256, 64, args.seed)
    optimizer = torch.optim.Adam(towers.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    loss = train_epoch(towers, optimizer, item_features, pairs, batch_size=2048, seed=args.seed, epoch=1)
    epoch_seconds = time.perf_counter() - t0

    valid_rows = starts + train_len
    history = sp.csr_matrix((np.ones(int(train_len.sum()), np.float32),
                             d["seq"][np.flatnonzero(training)], np.concatenate(([0], np.cumsum(train_len)))),
                            shape=(args.users, n_items))
    valid_users = torch.from_numpy(d["rng"].normal(size=(args.users, args.dim)).astype(np.float32))
    t0 = time.perf_counter()
    with torch.no_grad():
        ranks = target_ranks(towers.user(valid_users), towers.item(item_features), d["seq"][valid_rows], history)
    valid_seconds = time.perf_counter() - t0
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    probe.append(matmul_ms())
    print(json.dumps({
        "bench": "graph", "users": args.users, "items": n_items, "interactions": int(lengths.sum()),
        "train_interactions": int(training.sum()), "threads": torch.get_num_threads(),
        "graph_seconds": round(graph_seconds, 2), "edges": int(graph.nnz), "edges_per_item": round(graph.nnz / n_items, 1),
        "train_pairs": len(pair_rows), "epoch_seconds": round(epoch_seconds, 2), "epoch_loss": round(loss, 4),
        "valid_seconds": round(valid_seconds, 2), "valid_recall@20": round(recall_ndcg(ranks, [20])["recall@20"], 4),
        "peak_rss_gb": round(peak_rss_gb, 2), "generate_seconds": round(gen_seconds, 2), "matmul_probe_ms": probe,
    }))


if __name__ == "__main__":
    main()
