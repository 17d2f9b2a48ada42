"""Ranking metrics for 1 positive + N negatives per user: pure functions over numpy arrays.

Ties never favour the positive: in the rank-based metrics (HR, NDCG, MRR) a negative scored
equal to the positive counts as ranked above it, so a constant scorer gets the worst rank, not
the best. AUC gives a tie half credit, the standard definition (what scikit-learn computes).
The scalar functions (`positive_rank`, `hit_rate`, `ndcg`, `mrr`) are the readable definitions;
`example_metrics` computes the same per example for a whole table at once (tested against them),
and `full_ranking_metrics` gives Recall/NDCG@K from a target's rank in a full or retrieved ranking.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

DEFAULT_KS = (1, 3, 5, 10)


def positive_rank(scores: np.ndarray, labels: np.ndarray) -> int:
    """1-based rank of the single positive among its candidates, ties resolved against it."""
    labels = np.asarray(labels)
    if labels.sum() != 1:
        raise ValueError(f"expected exactly one positive, got {int(labels.sum())}")
    scores = np.asarray(scores, dtype=np.float64)
    positive = scores[labels == 1][0]
    return 1 + int((scores[labels == 0] >= positive).sum())


def hit_rate(rank: int, k: int) -> float:
    """1 if the positive is in the top k."""
    return float(rank <= k)


def ndcg(rank: int, k: int) -> float:
    """Discounted gain of the one relevant item (its ideal DCG is 1)."""
    return 1.0 / np.log2(rank + 1) if rank <= k else 0.0


def mrr(rank: int, k: int) -> float:
    """Reciprocal rank, truncated at k."""
    return 1.0 / rank if rank <= k else 0.0


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve over all (positive, negative) pairs; ties count one half."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks a tied run occupies
    ranks[order] = np.repeat(average, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    tp = np.cumsum(labels)[last_of_tie]
    fp = np.cumsum(~labels)[last_of_tie]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def example_metrics(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                    ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-example HR@K, NDCG@K, MRR@K and AUC, vectorised over a whole candidate table.

    ``groups`` gives each candidate's example as an index 0..G-1 (candidates of one example need not
    be contiguous); each example needs exactly one positive and at least one negative. Returned
    arrays are indexed by example, so a bootstrap can reweight them; their means are
    `ranking_metrics`. Non-finite scores are refused: NaN compares false with everything, so it
    would rank every positive first."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    groups = np.asarray(groups, dtype=np.int64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    n = int(groups.max()) + 1 if len(groups) else 0
    positives = np.bincount(groups[labels], minlength=n)
    if (positives != 1).any():
        bad = int(np.flatnonzero(positives != 1)[0])
        raise ValueError(f"expected exactly one positive per example, got {int(positives[bad])} in example {bad} "
                         f"({int((positives != 1).sum())} such examples)")
    positive = np.empty(n)
    positive[groups[labels]] = scores[labels]
    against = positive[groups]
    negative = ~labels
    n_neg = np.bincount(groups[negative], minlength=n)
    if (n_neg == 0).any():
        raise ValueError("AUC needs at least one positive and one negative in every example")
    above = np.bincount(groups[negative & (scores >= against)], minlength=n)  # ties count against the positive
    tied = np.bincount(groups[negative & (scores == against)], minlength=n)
    rank = 1 + above
    hit = {k: rank <= k for k in ks}
    out = {"user_auc": (n_neg - above + 0.5 * tied) / n_neg}
    out.update({f"hr@{k}": hit[k].astype(np.float64) for k in ks})
    out.update({f"ndcg@{k}": np.where(hit[k], 1.0 / np.log2(rank + 1), 0.0) for k in ks})
    out.update({f"mrr@{k}": np.where(hit[k], 1.0 / rank, 0.0) for k in ks})
    return out


def ranking_metrics(groups: Iterable[tuple[np.ndarray, np.ndarray]], ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Mean HR@K, NDCG@K, MRR@K and per-user AUC over users, plus AUC over all pairs pooled.

    Each group is one user's (scores, labels) with exactly one positive."""
    groups = list(groups)
    if not groups:
        raise ValueError("no users to evaluate")
    scores = np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in groups])
    labels = np.concatenate([np.asarray(y) for _, y in groups])
    index = np.repeat(np.arange(len(groups)), [len(s) for s, _ in groups])
    return mean_metrics(example_metrics(scores, labels, index, ks), roc_auc(scores, labels))


def mean_metrics(per_example: dict[str, np.ndarray], pooled_auc: float) -> dict:
    """The reported figures: the example count, pooled AUC and the mean of every per-example metric."""
    out = {"users": len(per_example["user_auc"]), "auc": float(pooled_auc)}
    out.update({name: float(np.mean(values)) for name, values in per_example.items()})
    return out


def full_ranking_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-example Recall@K and NDCG@K of one target per example from its 1-based rank (``np.inf``: not
    ranked at all, a miss at every K). With one target, Recall@K is the hit rate at K."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 1), 0.0)
    return out


def retrieved_ranks(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """1-based rank of each example's target among its retrieved items by a reranker's scores (ties rank
    it below), or ``np.inf`` where the target was not retrieved (no candidate labelled 1): a miss at every
    K. ``groups`` gives each candidate's example, 0..n_groups-1. Non-finite scores are refused."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    groups = np.asarray(groups, dtype=np.int64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    if (np.bincount(groups[labels], minlength=n_groups) > 1).any():
        raise ValueError("an example has its target retrieved twice")
    target = np.full(n_groups, np.nan)
    target[groups[labels]] = scores[labels]
    above = np.bincount(groups[~labels & (scores >= target[groups])], minlength=n_groups)
    return np.where(np.isnan(target), np.inf, 1.0 + above)
