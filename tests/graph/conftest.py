"""Fixtures of the graph tests: no network, a tiny random encoder, a prepared run with summaries."""

from __future__ import annotations

import socket
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from msr import schema
from msr.rundir import write_parquet


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (the hub, PyPI, anything) fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("a graph test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random sentence-transformers encoder (32-d), built once offline."""
    from msr.tiny import build_tiny_encoder

    root = tmp_path_factory.mktemp("encoder")
    return str(build_tiny_encoder(root / "enc", ["a red mug", "a blue lamp with dots", "Recent items"]))


def write_summaries(run: Path) -> None:
    """Item and user summaries as `msr summarize` leaves them (texts made up, keyed correctly)."""
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    write_parquet(run / schema.USER_SUMMARIES_FILE, pa.table({
        schema.USER: pa.array(examples[schema.USER], pa.string()),
        schema.HISTORY_LEN: pa.array(examples[schema.HISTORY_LEN], pa.int32()),
        schema.SUMMARY: [f"user {u} after {h} items" for u, h in zip(examples[schema.USER], examples[schema.HISTORY_LEN])]}))
    items = pd.read_parquet(run / schema.ITEMS_FILE)
    write_parquet(run / schema.ITEM_SUMMARY_TABLE, pa.table({
        schema.ITEM: pa.array(items[schema.ITEM], pa.string()),
        schema.SUMMARY: [f"a picture of item {i}" for i in items[schema.ITEM]]}))


@pytest.fixture
def graph_run(tiny_run: dict) -> Path:
    """The tiny embedded run (40 users, 40 items) with summaries."""
    run = Path(tiny_run["run"])
    write_summaries(run)
    return run


def write_run(root: Path, sequences: dict[str, list[str]], n_items: int = 6) -> Path:
    """A hand-made prepared run: items i0..i{n-1} titled T0.., each user's sequence in time order, one
    train (h = len - 3), one valid (h = len - 2) and one test (h = len - 1) example per user."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"i{k}" for k in range(n_items)]
    write_parquet(root / schema.ITEMS_FILE, pa.table({
        schema.ITEM: ids, schema.TITLE: [f"T{k}" for k in range(n_items)], schema.DESCRIPTION: [""] * n_items,
        schema.BRAND: [""] * n_items, schema.CATEGORIES: pa.array([[]] * n_items, pa.list_(pa.string())),
        schema.IMAGE: pa.array([None] * n_items, pa.string())}))
    inter, examples = [], []
    for u, (user, seq) in enumerate(sorted(sequences.items())):
        inter += [(user, item, 1000 * p + u, p) for p, item in enumerate(seq)]
        negative = next(i for i in ids if i not in seq)
        for split, h in ((schema.TRAIN, len(seq) - 3), (schema.VALID, len(seq) - 2), (schema.TEST, len(seq) - 1)):
            examples.append((user, split, seq[h], h, 1000 * h + u, [negative]))
    frame = pd.DataFrame(inter, columns=[schema.USER, schema.ITEM, schema.TIMESTAMP, schema.POSITION])
    write_parquet(root / schema.INTERACTIONS_FILE, pa.Table.from_pandas(frame, preserve_index=False))
    frame = pd.DataFrame(examples, columns=list(schema.EXAMPLE_COLUMNS))
    write_parquet(root / schema.EXAMPLES_FILE, pa.Table.from_pandas(frame, preserve_index=False))
    return root
