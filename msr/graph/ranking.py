"""Full-ranking evaluation: every example's target against every item, its history masked.

Scores are computed for a block of examples at a time (block x items), so no users x items
matrix is ever held. One pass (`rank_all`) gives what every recommender of msr reports: the
target's rank, the top K items (a retrieval list) and the scores of chosen (example, item) pairs
(the candidates `msr evaluate` compares on). Any model plugs in as a `Scorer`: a function of a
block of example rows that returns their scores against all items (`dot_scorer` for a dot-product
model; msr.baselines.popularity for counts before a cutoff).

Ties rank the target below the items it ties with (pessimistic), as in msr.metrics. With one
target per example, Recall@K is the hit rate at K and NDCG@K is 1 / log2(rank + 1) with the
1-based rank. The target's own score is never masked, even when the target also appears in the
history (a repeat); a top-K list masks the whole history, the target included, and does not force
the target in. When a tie crosses the cut of a top-K list, the tied items with the lower codes fill it and the
list records how many tied items it left out (`tied_out`): a target among those tied items did not make the
top K under pessimistic ties, and `msr evaluate` counts it so. A non-finite score (a diverged
model) is an error, not a rank: NaN compares false with everything, so it would rank the target
first and make the model look perfect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from msr import schema
from msr.metrics import full_ranking_metrics

_BLOCK_CELLS = 1 << 23

Scorer = Callable[[int, int], torch.Tensor]  # (lo, hi) -> scores of example rows lo..hi-1 x all items


class NonFiniteScoresError(ValueError):
    """Scores with NaN or inf: the model diverged (typically a learning rate too high)."""


@dataclass
class Retrieved:
    """Top-K lists of a set of examples, flattened: entry j is item `items[j]` of example `rows[j]`."""

    rows: np.ndarray  # example row (0-based, in the order ranked)
    items: np.ndarray  # item code
    scores: np.ndarray  # the model's score
    ranks: np.ndarray  # 1-based rank within the example's list
    tied_out: np.ndarray  # items with the list's last score that the cut left out (the same for every entry of a list)


@dataclass
class Ranking:
    """What one full-ranking pass found (`rank_all`)."""

    ranks: np.ndarray  # 1-based rank of each example's target (empty without targets)
    top: Retrieved  # top-K lists (empty for k = 0)
    picked: np.ndarray  # score of each requested (row, item) pair, unmasked


def dot_scorer(user_vecs: torch.Tensor, item_vecs: torch.Tensor) -> Scorer:
    """The scores of a dot-product model: user vector . item vector."""
    return lambda lo, hi: user_vecs[lo:hi] @ item_vecs.T


def target_ranks(user_vecs: torch.Tensor, item_vecs: torch.Tensor, targets: np.ndarray,
                 history: sp.csr_matrix) -> np.ndarray:
    """1-based rank of each example's target among all items not in its history (the target itself
    is never masked, even when it also appears in the history); raises NonFiniteScoresError when
    any score is NaN or infinite."""
    return rank_all(dot_scorer(user_vecs, item_vecs), history, targets).ranks


def rank_all(scorer: Scorer, history: sp.csr_matrix, targets: np.ndarray | None = None, k: int = 0,
             pick_rows: np.ndarray | None = None, pick_items: np.ndarray | None = None) -> Ranking:
    """One blocked pass over `history.shape[0]` examples x `history.shape[1]` items: the rank of each
    example's target (when `targets` is given), its top `k` items with the history masked (fewer when
    fewer items are left), and the raw score of each (pick_rows[j], pick_items[j]) pair."""
    n_rows, n_items = history.shape
    block = max(1, _BLOCK_CELLS // max(n_items, 1))
    targets = None if targets is None else np.array(targets, dtype=np.int64)  # a writable copy for torch
    ranks = np.empty(len(targets) if targets is not None else 0, dtype=np.int64)
    picks = _Picks(pick_rows, pick_items)
    found: list[tuple[np.ndarray, ...]] = []
    for lo in range(0, n_rows, block):
        hi = min(lo + block, n_rows)
        scores = scorer(lo, hi).float()
        finite = torch.isfinite(scores).all(dim=1)
        if not bool(finite.all()):
            bad = lo + int(torch.nonzero(~finite)[0, 0])
            raise NonFiniteScoresError(f"NaN or infinite scores (the first at example {bad}): the model diverged; "
                                       "train again with a lower learning_rate")
        picks.take(scores, lo, hi)
        mask = history[lo:hi].tocoo()
        is_target = (mask.col == targets[lo + mask.row]) if targets is not None else np.zeros(mask.nnz, dtype=bool)
        _mask(scores, mask.row[~is_target], mask.col[~is_target])
        if targets is not None:
            local = torch.arange(hi - lo, device=scores.device)
            wanted = torch.as_tensor(targets[lo:hi], device=scores.device)
            ranks[lo:hi] = (scores >= scores[local, wanted].unsqueeze(1)).sum(dim=1).cpu().numpy()
        if k:
            _mask(scores, mask.row[is_target], mask.col[is_target])
            found.append(_top_k(scores, min(k, n_items), lo))
    columns = zip(*found) if found else [[np.zeros(0, dtype)] for dtype in
                                         (np.int64, np.int64, np.float32, np.int64, np.int64)]
    return Ranking(ranks=ranks, top=Retrieved(*(np.concatenate(c) for c in columns)), picked=picks.scores)


def _mask(scores: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> None:
    """Set the (row, col) cells of a block to -inf, in place."""
    scores[torch.as_tensor(rows, dtype=torch.long, device=scores.device),
           torch.as_tensor(cols, dtype=torch.long, device=scores.device)] = -torch.inf


def _top_k(scores: torch.Tensor, k: int, lo: int) -> tuple[np.ndarray, ...]:
    """The k best items of each row of a masked block, by score then lower item code, -inf (masked)
    entries dropped: (rows + lo, items, scores, 1-based ranks, tied items left out), flattened."""
    values, items = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
    tied = values[:, k - 1] == values[:, k] if values.shape[1] > k else torch.zeros(len(values), dtype=torch.bool)
    tied &= torch.isfinite(values[:, k - 1])  # masked items (-inf) are not candidates, tied or not
    values, items = values[:, :k], items[:, :k]
    left_out = np.zeros(len(values), dtype=np.int64)
    for row in torch.nonzero(tied.cpu()).flatten().tolist():  # a tie across the cut: take the lower codes
        s, kth = scores[row], values[row, k - 1]
        above = s > kth
        level = torch.nonzero(s == kth).flatten()
        room = k - int(above.sum())
        items[row] = torch.cat([torch.nonzero(above).flatten(), level[:room]])
        values[row] = s[items[row]]
        left_out[row] = len(level) - room
    items, order = items.sort(dim=1)  # codes ascending, then a stable sort by score descending
    values = values.gather(1, order)
    order = values.sort(dim=1, descending=True, stable=True).indices
    items, values = items.gather(1, order).cpu().numpy(), values.gather(1, order).cpu().numpy()
    keep = np.isfinite(values)
    rows = np.broadcast_to(np.arange(len(values))[:, None] + lo, values.shape)
    ranks = np.broadcast_to(np.arange(1, k + 1), values.shape)
    left_out = np.broadcast_to(left_out[:, None], values.shape)
    return rows[keep], items[keep].astype(np.int64), values[keep].astype(np.float32), ranks[keep], left_out[keep]


class _Picks:
    """Gathers the scores of chosen (row, item) pairs block by block."""

    def __init__(self, rows: np.ndarray | None, items: np.ndarray | None):
        rows = np.asarray(rows if rows is not None else [], dtype=np.int64)
        items = np.asarray(items if items is not None else [], dtype=np.int64)
        if rows.shape != items.shape:
            raise ValueError(f"pick_rows and pick_items differ in shape: {rows.shape} and {items.shape}")
        self.order = np.argsort(rows, kind="stable")
        self.rows, self.items = rows[self.order], items[self.order]
        self.scores = np.empty(len(rows), dtype=np.float32)

    def take(self, scores: torch.Tensor, lo: int, hi: int) -> None:
        a, b = np.searchsorted(self.rows, [lo, hi])
        rows = torch.as_tensor(self.rows[a:b] - lo, device=scores.device)
        items = torch.as_tensor(self.items[a:b], device=scores.device)
        self.scores[self.order[a:b]] = scores[rows, items].cpu().numpy()


def retrieval_table(examples: pd.DataFrame, item_ids: np.ndarray, found: Retrieved) -> pd.DataFrame:
    """The retrieval table of ranked `examples` (their USER and HISTORY_LEN, in ranking order): one row
    per retrieved item, columns USER, HISTORY_LEN, ITEM (id), SCORE, RANK, TIED_OUT (the items tied with the
    list's last score that the cut left out)."""
    return pd.DataFrame({schema.USER: examples[schema.USER].to_numpy()[found.rows],
                         schema.HISTORY_LEN: examples[schema.HISTORY_LEN].to_numpy()[found.rows],
                         schema.ITEM: np.asarray(item_ids)[found.items],
                         schema.SCORE: found.scores, schema.RANK: found.ranks.astype(np.int32),
                         schema.TIED_OUT: found.tied_out.astype(np.int64)})


def recall_ndcg(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over examples with one target each (1-based ranks), plus the
    example count; 0.0 for no examples."""
    per_example = full_ranking_metrics(ranks, ks)
    return {"examples": len(ranks), **{name: float(v.mean()) if len(v) else 0.0 for name, v in per_example.items()}}
