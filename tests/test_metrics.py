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
