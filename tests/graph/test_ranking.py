"""Full ranking against cases computed by hand: masking, ties, blocks, metrics, diverged scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from msr.graph import ranking
from msr.graph.ranking import NonFiniteScoresError, recall_ndcg, target_ranks


def _ranks(item_scores: list[float], targets: list[int], histories: list[list[int]]) -> np.ndarray:
    """Ranks with 1-d towers: user vector 1, item vector = its score, so the score is the item's value."""
    users = torch.ones(len(targets), 1)
    items = torch.tensor(item_scores, dtype=torch.float32).unsqueeze(1)
    rows = [r for r, h in enumerate(histories) for _ in h]
    cols = [c for h in histories for c in h]
    history = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(targets), len(item_scores)))
    return target_ranks(users, items, np.array(targets), history)


def test_history_is_masked_except_the_target() -> None:
    # scores 5 4 3 2 1; items 0 and 1 are history (masked), item 3 is the target though also in the
    # history: left above it is item 2 only -> rank 2
    assert _ranks([5, 4, 3, 2, 1], [3], [[0, 1, 3]]).tolist() == [2]
    assert _ranks([5, 4, 3, 2, 1], [3], [[]]).tolist() == [4]  # nothing masked
    assert _ranks([5, 4, 3, 2, 1], [0], [[1, 2]]).tolist() == [1]


def test_ties_rank_the_target_below_the_items_it_ties_with() -> None:
    # target 2 ties with items 1 and 3 (score 2) under item 0 (score 5): rank 4, whatever the ids
    assert _ranks([5, 2, 2, 2, 1], [2], [[]]).tolist() == [4]
    assert _ranks([5, 2, 2, 2, 1], [1], [[3]]).tolist() == [3]


def test_blocks_give_the_ranks_of_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    users, items = torch.tensor(rng.normal(size=(23, 4)), dtype=torch.float32), torch.tensor(
        rng.normal(size=(9, 4)), dtype=torch.float32)
    targets = rng.integers(0, 9, 23)
    history = sp.random(23, 9, density=0.3, random_state=1, format="csr")
    whole = target_ranks(users, items, targets, history)
    monkeypatch.setattr(ranking, "_BLOCK_CELLS", 9 * 5)  # 5 examples per block, the last one of 3
    np.testing.assert_array_equal(target_ranks(users, items, targets, history), whole)
    scores = (users @ items.T).numpy()
    masked = np.where(history.toarray() > 0, -np.inf, scores)
    masked[np.arange(23), targets] = scores[np.arange(23), targets]
    np.testing.assert_array_equal(whole, (masked >= scores[np.arange(23), targets][:, None]).sum(axis=1))


def test_recall_and_ndcg_by_hand() -> None:
    out = recall_ndcg(np.array([1, 2, 3, 11]), [2, 10])
    assert out["examples"] == 4
    assert out["recall@2"] == 0.5 and out["recall@10"] == 0.75
    assert out["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / 2) / 4)
    assert recall_ndcg(np.array([], dtype=np.int64), [5]) == {"examples": 0, "recall@5": 0.0, "ndcg@5": 0.0}


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_scores_are_an_error_not_a_perfect_rank(bad: float) -> None:
    with pytest.raises(NonFiniteScoresError, match="diverged.*learning_rate"):
        _ranks([5, 4, bad, 2], [1], [[]])  # a candidate's score
    users = torch.tensor([[1.0], [bad]])  # the second user's vector
    with pytest.raises(NonFiniteScoresError, match="example 1"):
        target_ranks(users, torch.ones(3, 1), np.array([0, 2]), sp.csr_matrix((2, 3)))
