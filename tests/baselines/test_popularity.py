"""Popularity: an item's interactions strictly before the example's cutoff, over all users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from msr import schema
from msr.baselines.config import BaselineConfig
from msr.baselines.pipeline import evaluate_baseline, train_baseline
from msr.baselines.popularity import PopularityScorer
from msr.evaluate import candidate_table, popularity_before
from msr.graph import ranking
from msr.graph.ranking import rank_all
from msr.rundir import RunDir
from tests.graph.conftest import write_run


def test_counts_only_interactions_before_the_cutoff() -> None:
    # item 0 at t = 1, 5, 5; item 1 at t = 3; item 2 at t = 9: cutoffs 1, 5, 6, 10
    scorer = PopularityScorer(np.array([0, 1, 0, 0, 2]), np.array([1, 3, 5, 5, 9]), np.array([1, 5, 6, 10]), 3)
    assert scorer(0, 4).tolist() == [[0, 0, 0], [1, 1, 0], [3, 1, 0], [3, 1, 1]]


def test_blocks_give_the_counts_of_one_pass_and_order_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    items, stamps, cutoffs = rng.integers(0, 7, 60), rng.integers(0, 30, 60), np.sort(rng.integers(0, 32, 11))
    expected = np.array([[((items == i) & (stamps < c)).sum() for i in range(7)] for c in cutoffs])
    monkeypatch.setattr(ranking, "_BLOCK_CELLS", 7 * 3)  # 3 examples per block
    result = rank_all(PopularityScorer(items, stamps, cutoffs, 7), sp.csr_matrix((11, 7)), None,
                      pick_rows=np.repeat(np.arange(11), 7), pick_items=np.tile(np.arange(7), 11))
    np.testing.assert_array_equal(result.picked.reshape(11, 7), expected)
    with pytest.raises(ValueError, match="sorted by cutoff"):
        PopularityScorer(items, stamps, cutoffs[::-1], 7)


def test_the_stage_matches_msr_evaluates_popularity_and_masks_the_history(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {"a": ["i0", "i1", "i2", "i3", "i4"], "b": ["i1", "i2", "i3", "i0", "i5"],
                                       "c": ["i5", "i4", "i3", "i2", "i1"]})
    cfg = BaselineConfig(run_dir=str(run), model="popularity", retrieve_k=3)
    assert train_baseline(cfg) == {"model": "popularity", "trained": False}
    metrics = evaluate_baseline(cfg)
    assert metrics["test"]["examples"] == 3
    scores = pd.read_parquet(run / "popularity_scores.parquet")
    table = pd.concat([candidate_table(RunDir(run), s) for s in (schema.VALID, schema.TEST)], ignore_index=True)
    np.testing.assert_array_equal(scores[schema.SCORE].to_numpy(), popularity_before(RunDir(run), table))
    retrieved = pd.read_parquet(run / "popularity_retrieval.parquet")
    # user a at history_len 4 (test, cutoff 4000): history i0..i3 masked; before the cutoff i4 and i5 have one
    # interaction each (c's, at 1002 and 2; a's own i4 at 4000 and b's i5 at 4001 are not before it): a tie
    first = retrieved[(retrieved[schema.USER] == "a") & (retrieved[schema.HISTORY_LEN] == 4)]
    assert first[schema.ITEM].tolist() == ["i4", "i5"] and first[schema.SCORE].tolist() == [1, 1]
    # user b at history_len 3 (valid, cutoff 3001): i0 has a's (0), i4 c's (1002), i5 c's (2)
    second = retrieved[(retrieved[schema.USER] == "b") & (retrieved[schema.HISTORY_LEN] == 3)]
    assert second[schema.ITEM].tolist() == ["i0", "i4", "i5"] and second[schema.SCORE].tolist() == [1, 1, 1]
