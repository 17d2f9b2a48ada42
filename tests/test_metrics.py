"""Metrics against hand-computed values and scikit-learn; ties never favour the positive."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from msr import metrics


def test_hand_computed_user() -> None:
    # positive scored 0.7; negatives 0.9 and 0.7 (a tie) above or level with it, 0.1 and 0.2 below
    scores = np.array([0.7, 0.9, 0.1, 0.7, 0.2])
    labels = np.array([1, 0, 0, 0, 0])
    rank = metrics.positive_rank(scores, labels)
    assert rank == 3  # the tie ranks above the positive
    assert metrics.hit_rate(rank, 1) == 0 and metrics.hit_rate(rank, 3) == 1
    assert metrics.ndcg(rank, 5) == pytest.approx(1 / math.log2(4)) and metrics.ndcg(rank, 2) == 0
    assert metrics.mrr(rank, 5) == pytest.approx(1 / 3) and metrics.mrr(rank, 1) == 0
    assert metrics.roc_auc(scores, labels) == pytest.approx((2 + 0.5) / 4)  # 2 below, 1 tie, 1 above


def test_constant_scorer_gets_the_worst_rank() -> None:
    out = metrics.ranking_metrics([(np.zeros(21), np.r_[1, np.zeros(20)])], ks=(1, 5, 10))
    assert out["hr@10"] == 0 and out["ndcg@10"] == 0 and out["mrr@10"] == 0
    assert out["auc"] == 0.5 and out["user_auc"] == 0.5


def test_aggregate_over_users() -> None:
    groups = [(np.array([0.9, 0.1, 0.2]), np.array([1, 0, 0])),   # rank 1
              (np.array([0.1, 0.5, 0.2]), np.array([1, 0, 0]))]   # rank 3
    out = metrics.ranking_metrics(groups, ks=(1, 3))
    assert out["users"] == 2
    assert out["hr@1"] == 0.5 and out["hr@3"] == 1.0
    assert out["mrr@3"] == pytest.approx((1 + 1 / 3) / 2)
    assert out["ndcg@3"] == pytest.approx((1 + 1 / 2) / 2)
    assert out["user_auc"] == pytest.approx((1 + 0) / 2)
    pooled = roc_auc_score([1, 0, 0, 1, 0, 0], [0.9, 0.1, 0.2, 0.1, 0.5, 0.2])
    assert out["auc"] == pytest.approx(pooled)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=60))
def test_auc_matches_scikit_learn(pairs) -> None:
    scores = np.array([s for s, _ in pairs], dtype=float)  # few distinct values: many ties
    labels = np.array([int(y) for _, y in pairs])
    if labels.min() == labels.max():
        with pytest.raises(ValueError):
            metrics.roc_auc(scores, labels)
        return
    assert metrics.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_bad_groups_are_errors() -> None:
    with pytest.raises(ValueError, match="exactly one positive"):
        metrics.positive_rank(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="no users"):
        metrics.ranking_metrics([])


def test_vectorised_metrics_equal_the_scalar_definitions() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 8, 30)
    groups = np.repeat(np.arange(30), sizes)
    scores = rng.integers(0, 4, len(groups)).astype(float)  # many ties with the positive
    labels = np.concatenate([np.r_[1, np.zeros(n - 1, dtype=int)] for n in sizes])
    shuffle = rng.permutation(len(groups))  # an example's candidates need not be contiguous
    out = metrics.example_metrics(scores[shuffle], labels[shuffle], groups[shuffle], ks=(1, 3))
    for g in range(30):
        s, y = scores[groups == g], labels[groups == g]
        rank = metrics.positive_rank(s, y)
        assert out["hr@3"][g] == metrics.hit_rate(rank, 3) and out["mrr@1"][g] == metrics.mrr(rank, 1)
        assert out["ndcg@3"][g] == pytest.approx(metrics.ndcg(rank, 3))
        assert out["user_auc"][g] == pytest.approx(metrics.roc_auc(s, y))


def test_non_finite_scores_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.example_metrics(np.array([np.nan, 0.1]), np.array([1, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.retrieved_ranks(np.array([np.inf, 0.1]), np.array([1, 0]), np.array([0, 0]), 1)


def test_full_ranking_hand_computed() -> None:
    out = metrics.full_ranking_metrics(np.array([1, 3, np.inf, 11]), ks=(1, 10))  # inf: not retrieved
    assert out["recall@1"].tolist() == [1, 0, 0, 0] and out["recall@10"].tolist() == [1, 1, 0, 0]
    assert out["ndcg@10"].tolist() == pytest.approx([1, 0.5, 0, 0])


def test_retrieved_ranks_tie_against_the_target_and_miss_when_not_retrieved() -> None:
    scores = np.array([0.5, 0.5, 0.9, 0.1, 0.2, 0.3])
    labels = np.array([1, 0, 0, 0, 0, 0])  # example 0: target tied with one item, below another; example 1: absent
    groups = np.array([0, 0, 0, 1, 1, 1])
    assert metrics.retrieved_ranks(scores, labels, groups, 2).tolist() == [3, np.inf]
