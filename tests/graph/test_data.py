"""Leakage: no graph edge, Jaccard overlap, negative or user text ever reads a validation or test interaction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from msr import schema
from msr.graph.build import jaccard_topk
from msr.graph.config import GraphConfig
from msr.graph.data import (
    EMPTY_ITEM_TEXT,
    EMPTY_USER_TEXT,
    item_texts,
    load_run,
    train_incidence,
    user_texts,
)
from msr.graph.pipeline import GRAPH_FILE, train_graph
from msr.rundir import RunDir, write_parquet
from tests.graph.conftest import write_run, write_summaries

TRAIN_PART = {"a": ["i0", "i1", "i2"], "b": ["i1", "i2", "i3"], "c": ["i0", "i3", "i2"]}
HELD_OUT_A = {"a": ["i3", "i4"], "b": ["i0", "i5"], "c": ["i1", "i5"]}
HELD_OUT_B = {"a": ["i5", "i4"], "b": ["i4", "i5"], "c": ["i5", "i4"]}  # i4 and i5 now co-occur with everything


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    return tuple(write_run(tmp_path / name, {u: TRAIN_PART[u] + held[u] for u in TRAIN_PART})
                 for name, held in (("a", HELD_OUT_A), ("b", HELD_OUT_B)))


def test_training_interactions_stop_before_validation(tmp_path: Path) -> None:
    run_a, run_b = _runs(tmp_path)
    data = load_run(RunDir(run_a))
    assert data.train_len.tolist() == [3, 3, 3]
    incidence = train_incidence(data)
    assert sorted(zip(*incidence.nonzero())) == sorted(
        (u, int(i[1])) for u, user in enumerate("abc") for i in TRAIN_PART[user])
    assert (incidence != train_incidence(load_run(RunDir(run_b)))).nnz == 0
    # the construction has teeth: with every interaction, the Jaccard neighbours would differ
    full_a, full_b = (load_run(RunDir(r)) for r in (run_a, run_b))
    every = [sp.csr_matrix((np.ones(len(d.seq_items)), (np.repeat(np.arange(3), d.seq_len), d.seq_items)), shape=(3, 6))
             for d in (full_a, full_b)]
    assert (jaccard_topk(every[0], 3) != jaccard_topk(every[1], 3)).nnz > 0


def test_users_without_validation_train_up_to_their_first_held_out_target(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {"a": ["i0", "i1", "i2", "i3", "i4"], "b": ["i1", "i2", "i3", "i0", "i5"]})
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    examples = examples[~((examples[schema.USER] == "a") & (examples[schema.SPLIT] == schema.VALID))]
    write_parquet(run / schema.EXAMPLES_FILE, pa.Table.from_pandas(examples, preserve_index=False))
    assert load_run(RunDir(run)).train_len.tolist() == [4, 3]


def test_graph_is_identical_whatever_the_held_out_items(tmp_path: Path, tiny_encoder: str) -> None:
    graphs = []
    for run in _runs(tmp_path):
        train_graph(GraphConfig(run_dir=str(run), encoder=tiny_encoder, user_summary=False, item_summary=False,
                                history_titles=2, knn_k=3, pure=0.0, knn_jac=3, max_epochs=1))
        with (run / GRAPH_FILE).open("rb") as f:
            graphs.append(sp.load_npz(f))
    assert graphs[0].nnz > 0 and (graphs[0] != graphs[1]).nnz == 0


def test_user_text_reads_only_the_history_before_the_cutoff(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {u: TRAIN_PART[u] + HELD_OUT_A[u] for u in TRAIN_PART})
    write_summaries(run)
    data = load_run(RunDir(run))
    rows = data.examples[data.examples[schema.USER] == "a"]  # train h=2, valid h=3, test h=4
    texts = user_texts(RunDir(run), data, rows, user_summary=True, history_titles=10)
    assert texts == ["user a after 2 items Recent items: T0; T1.", "user a after 3 items Recent items: T0; T1; T2.",
                     "user a after 4 items Recent items: T0; T1; T2; T3."]
    assert user_texts(RunDir(run), data, rows, user_summary=False, history_titles=1)[1] == "Recent items: T2."
    assert item_texts(RunDir(run), data, item_summary=True)[0] == "Title: T0. Summary: a picture of item i0."


def test_missing_summaries_name_the_command_to_run(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", {u: TRAIN_PART[u] + HELD_OUT_A[u] for u in TRAIN_PART})
    data = load_run(RunDir(run))
    with pytest.raises(FileNotFoundError, match="msr summarize users"):
        user_texts(RunDir(run), data, data.examples, user_summary=True, history_titles=0)
    with pytest.raises(FileNotFoundError, match="msr summarize items"):
        item_texts(RunDir(run), data, item_summary=True)
    write_summaries(run)
    table = pd.read_parquet(run / schema.USER_SUMMARIES_FILE)
    write_parquet(run / schema.USER_SUMMARIES_FILE, pa.Table.from_pandas(table.iloc[1:], preserve_index=False))
    with pytest.raises(ValueError, match="msr summarize users"):
        user_texts(RunDir(run), data, data.examples, user_summary=True, history_titles=0)


@pytest.mark.parametrize("change", [
    {schema.HISTORY_LEN: 5, schema.TARGET: "i1"},  # past user a's 5 items: would read user b's first, i1
    {schema.TARGET: "i0"},  # not the item at history_len 4
    {schema.HISTORY_LEN: -1},
    {schema.HISTORY_LEN: 3, schema.TARGET: "i3"},  # right item, but a second example at user a's h 3
], ids=["past-the-end", "wrong-target", "negative", "duplicate"])
def test_examples_must_point_into_their_users_sequence(tmp_path: Path, change: dict) -> None:
    run = write_run(tmp_path / "run", {u: TRAIN_PART[u] + HELD_OUT_A[u] for u in TRAIN_PART})
    load_run(RunDir(run))
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    assert examples.loc[2, schema.USER] == "a" and examples.loc[2, schema.HISTORY_LEN] == 4
    for column, value in change.items():
        examples.loc[2, column] = value
    write_parquet(run / schema.EXAMPLES_FILE, pa.Table.from_pandas(examples, preserve_index=False))
    with pytest.raises(ValueError, match=r"examples.parquet: 1 examples do not match.*row 2, user a.*msr data prepare"):
        load_run(RunDir(run))


def test_empty_texts_get_a_placeholder_and_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = write_run(tmp_path / "run", {"a": ["i0", "i1", "i2"], "b": ["i3", "i4", "i5", "i0"]})
    items = pd.read_parquet(run / schema.ITEMS_FILE)
    items.loc[1, schema.TITLE] = " "
    write_parquet(run / schema.ITEMS_FILE, pa.Table.from_pandas(items, preserve_index=False))
    data = load_run(RunDir(run))
    with caplog.at_level("WARNING"):
        texts = item_texts(RunDir(run), data, item_summary=False)
    assert texts[1] == EMPTY_ITEM_TEXT and texts[0] == "Title: T0."
    assert "1 of 6 item texts are empty" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # user a's train example has no history before it (h = 0)
        texts = user_texts(RunDir(run), data, data.examples, user_summary=False, history_titles=2)
    assert texts[0] == EMPTY_USER_TEXT and texts[1] == "Recent items: T0."
    assert "1 of 6 user texts are empty" in caplog.text
