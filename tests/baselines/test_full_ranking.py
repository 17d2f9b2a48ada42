"""One full-ranking pass (msr.graph.ranking.rank_all): target ranks, top-K lists, picked scores, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from msr import schema
from msr.graph import ranking
from msr.graph.ranking import dot_scorer, rank_all, retrieval_table


def _history(histories: list[list[int]], n_items: int) -> sp.csr_matrix:
    rows = [r for r, h in enumerate(histories) for _ in h]
    cols = [c for h in histories for c in h]
    return sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(histories), n_items))


def _fixed(scores: list[list[float]]):
    table = torch.tensor(scores, dtype=torch.float32)
    return lambda lo, hi: table[lo:hi].clone()


def _lists(result: ranking.Ranking, rows: int) -> list[list[int]]:
    return [result.top.items[result.top.rows == r].tolist() for r in range(rows)]


def test_the_history_is_masked_the_target_kept_for_its_rank_and_never_forced_into_the_list() -> None:
    # scores 5 4 3 2 1 0; history {0, 1, 3} with target 3 (a repeat): rank 2 (only item 2 above it);
    # the top-3 list masks the whole history, the target included: items 2, 4, 5
    scorer = _fixed([[5, 4, 3, 2, 1, 0], [5, 4, 3, 2, 1, 0]])
    result = rank_all(scorer, _history([[0, 1, 3], []], 6), np.array([3, 5]), k=3)
    assert result.ranks.tolist() == [2, 6]
    assert _lists(result, 2) == [[2, 4, 5], [0, 1, 2]]  # example 1's target (item 5) is outside its top 3
    assert result.top.ranks.tolist() == [1, 2, 3, 1, 2, 3]
    assert result.top.scores.tolist() == [3, 1, 0, 5, 4, 3]


def test_ties_go_to_the_lower_item_code_also_across_the_cut() -> None:
    scorer = _fixed([[1, 2, 2, 2, 0, 2], [3, 1, 1, 3, 1, 3]])
    result = rank_all(scorer, _history([[], [3]], 6), None, k=3)
    assert _lists(result, 2) == [[1, 2, 3], [0, 5, 1]]


def test_a_list_holds_only_the_items_left_when_fewer_than_k() -> None:
    result = rank_all(_fixed([[1, 2, 3, 4]]), _history([[0, 3]], 4), np.array([1]), k=10)
    assert _lists(result, 1) == [[2, 1]] and result.top.ranks.tolist() == [1, 2] and result.ranks.tolist() == [2]


def test_blocks_give_the_results_of_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    users, items = torch.tensor(rng.normal(size=(23, 4)), dtype=torch.float32), torch.tensor(
        rng.normal(size=(9, 4)), dtype=torch.float32)
    targets, history = rng.integers(0, 9, 23), sp.random(23, 9, density=0.3, random_state=1, format="csr")
    picks = rng.integers(0, 23, 40), rng.integers(0, 9, 40)
    whole = rank_all(dot_scorer(users, items), history, targets, 4, *picks)
    monkeypatch.setattr(ranking, "_BLOCK_CELLS", 9 * 5)  # 5 examples per block
    blocks = rank_all(dot_scorer(users, items), history, targets, 4, *picks)
    for a, b in ((whole.ranks, blocks.ranks), (whole.picked, blocks.picked), (whole.top.items, blocks.top.items),
                 (whole.top.rows, blocks.top.rows)):
        np.testing.assert_array_equal(a, b)
    scores = (users @ items.T).numpy()
    np.testing.assert_allclose(whole.picked, scores[picks[0], picks[1]], rtol=1e-6)  # raw, unmasked, in order
    masked = np.where(history.toarray() > 0, -np.inf, scores)
    expected = [[int(i) for i in np.argsort(-row, kind="stable")[:4] if np.isfinite(row[i])] for row in masked]
    assert _lists(whole, 23) == expected


def test_retrieval_table_names_examples_and_items_by_id() -> None:
    result = rank_all(_fixed([[1, 2, 3]]), _history([[2]], 3), None, k=2)
    examples = pd.DataFrame({schema.USER: ["u"], schema.HISTORY_LEN: [4]})
    table = retrieval_table(examples, np.array(["a", "b", "c"]), result.top)
    assert list(table.columns) == [schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.SCORE, schema.RANK,
                                   schema.TIED_OUT]
    assert table.values.tolist() == [["u", 4, "b", 2.0, 1, 0], ["u", 4, "a", 1.0, 2, 0]]
