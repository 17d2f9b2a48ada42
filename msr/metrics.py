"""Ranking metrics for 1 positive + N negatives per user: pure functions over numpy arrays.

Ties never favour the positive: in the rank-based metrics (HR, NDCG, MRR) a negative scored
equal to the positive counts as ranked above it, so a constant scorer gets the worst rank, not
the best. AUC gives a tie half credit, the standard definition (what scikit-learn computes).
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


def ranking_metrics(groups: Iterable[tuple[np.ndarray, np.ndarray]], ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Mean HR@K, NDCG@K, MRR@K and per-user AUC over users, plus AUC over all pairs pooled.

    Each group is one user's (scores, labels) with exactly one positive."""
    all_scores, all_labels, per_user = [], [], {f"{m}@{k}": [] for m in ("hr", "ndcg", "mrr") for k in ks}
    user_aucs = []
    for scores, labels in groups:
        rank = positive_rank(scores, labels)
        for k in ks:
            per_user[f"hr@{k}"].append(hit_rate(rank, k))
            per_user[f"ndcg@{k}"].append(ndcg(rank, k))
            per_user[f"mrr@{k}"].append(mrr(rank, k))
        user_aucs.append(roc_auc(scores, labels))
        all_scores.append(np.asarray(scores, dtype=np.float64))
        all_labels.append(np.asarray(labels))
    if not user_aucs:
        raise ValueError("no users to evaluate")
    out = {"users": len(user_aucs), "auc": roc_auc(np.concatenate(all_scores), np.concatenate(all_labels)),
           "user_auc": float(np.mean(user_aucs))}
    out.update({name: float(np.mean(values)) for name, values in per_user.items()})
    return out
