"""The prepare stage: hand-checked output, no leakage (property test), determinism, resume."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import write_jsonl
from msr import schema
from msr.data.prepare import PrepareConfig, prepare

OUTPUTS = (schema.ITEMS_FILE, schema.INTERACTIONS_FILE, schema.EXAMPLES_FILE, schema.DATA_STATS_FILE)


def _microlens_config(root: Path, run: Path, **overrides) -> PrepareConfig:
    values = dict(run_dir=str(run), interactions=str(root / "pairs.csv"), items=str(root / "titles.csv"),
                  image_dir=str(root / "covers"), user_min=1, item_min=1, negatives_test=1)
    values.update(overrides)
    return PrepareConfig(**values)


def test_microlens_end_to_end(microlens_dir: Path, tmp_path: Path) -> None:
    stats = prepare(_microlens_config(microlens_dir, tmp_path / "run"))
    inter = pd.read_parquet(tmp_path / "run" / schema.INTERACTIONS_FILE)
    # user 2 has items 12 and 13 at the same time: the tie is broken by item id
    assert inter[inter[schema.USER] == "2"][schema.ITEM].tolist() == ["10", "12", "13", "11"]
    assert inter[inter[schema.USER] == "2"][schema.POSITION].tolist() == [0, 1, 2, 3]
    ex = pd.read_parquet(tmp_path / "run" / schema.EXAMPLES_FILE)
    user1 = ex[ex[schema.USER] == "1"].set_index(schema.SPLIT)
    assert user1.loc["test", schema.TARGET] == "13" and user1.loc["test", schema.HISTORY_LEN] == 3
    assert user1.loc["valid", schema.TARGET] == "12" and user1.loc["train", schema.TARGET] == "11"
    assert user1.loc["test", schema.CUTOFF_TS] == 4000
    assert list(user1.loc["test", schema.NEGATIVES]) == ["14"]  # the only item user 1 never saw
    items = pd.read_parquet(tmp_path / "run" / schema.ITEMS_FILE).set_index(schema.ITEM)
    assert items.loc["10", schema.IMAGE].endswith("10.jpg") and pd.isna(items.loc["12", schema.IMAGE])
    assert stats["users"] == 3 and stats["items"] == 5 and stats["interactions"] == 12
    assert stats["examples"] == {"train": 3, "valid": 3, "test": 3}
    assert stats["dropped"]["malformed_interaction_rows"] == 1
    assert stats["dropped"]["bad_timestamp_interaction_rows"] == 1
    assert stats["dropped"]["items_image_unreadable"] == 1
    assert stats["dropped"]["items_image_missing"] == 2
    assert stats["image_coverage"] == pytest.approx(2 / 5)


def test_require_image_drops_items_and_their_interactions(microlens_dir: Path, tmp_path: Path) -> None:
    stats = prepare(_microlens_config(microlens_dir, tmp_path / "run", require_image=True, min_history=0))
    assert stats["items"] == 2
    assert stats["dropped"]["items_without_image"] == 3
    assert stats["dropped"]["interactions_of_dropped_items"] == 6


def test_too_short_users_and_impossible_negatives_are_counted(microlens_dir: Path, tmp_path: Path) -> None:
    stats = prepare(_microlens_config(microlens_dir, tmp_path / "run", min_history=3, negatives_test=2))
    assert stats["dropped"]["users_too_short_to_split"] == 3
    stats = prepare(_microlens_config(microlens_dir, tmp_path / "run2", negatives_test=2))
    assert stats["dropped"]["examples_without_enough_negatives"] == 3
    assert stats["examples"]["test"] == 0


def test_same_seed_same_bytes_and_resume(microlens_dir: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(_microlens_config(microlens_dir, a, seed=3))
    prepare(_microlens_config(microlens_dir, b, seed=3))
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    before = (a / schema.EXAMPLES_FILE).stat().st_mtime_ns
    prepare(_microlens_config(microlens_dir, a, seed=3))
    assert (a / schema.EXAMPLES_FILE).stat().st_mtime_ns == before  # current: skipped
    prepare(_microlens_config(microlens_dir, a, seed=3, min_history=2))
    assert (a / schema.EXAMPLES_FILE).stat().st_mtime_ns != before  # config changed: re-run
    manifest = json.loads((a / schema.MANIFEST_FILE).read_text())
    assert manifest["stages"]["data.prepare"]["config"]["min_history"] == 2


def test_empty_after_filtering_is_a_clear_error(microlens_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no interactions left"):
        prepare(_microlens_config(microlens_dir, tmp_path / "run", user_min=50))


logs = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 11), st.integers(0, 15)), min_size=1, max_size=120)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=logs, user_min=st.integers(1, 4), item_min=st.integers(1, 3), train=st.integers(-1, 3),
       seed=st.integers(0, 3))
def test_no_example_sees_its_target_or_the_future(log, user_min, item_min, train, seed) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pq.write_table(pa.table({"user": [f"u{u}" for u, _, _ in log], "item": [f"i{i}" for _, i, _ in log],
                                 "timestamp": [t for _, _, t in log]}), root / "inter.parquet")
        write_jsonl(root / "items.jsonl", [{"id": f"i{i}", "title": f"item {i}"} for i in range(12)])
        cfg = PrepareConfig(run_dir=str(root / "run"), interactions=str(root / "inter.parquet"),
                            items=str(root / "items.jsonl"), format="generic", user_min=user_min,
                            item_min=item_min, train_targets_per_user=train, negatives_test=3, seed=seed)
        try:
            prepare(cfg)
        except ValueError as err:
            assert "no interactions left" in str(err)
            return
        inter = pd.read_parquet(root / "run" / schema.INTERACTIONS_FILE)
        examples = pd.read_parquet(root / "run" / schema.EXAMPLES_FILE)
    raw = pd.DataFrame(log, columns=["u", "i", "t"])
    sequences = {u: g.sort_values(schema.POSITION) for u, g in inter.groupby(schema.USER)}
    for u, seq in sequences.items():
        assert seq[schema.TIMESTAMP].is_monotonic_increasing
        assert seq[schema.ITEM].is_unique
    for ex in examples.itertuples(index=False):
        seq = sequences[ex.user_id]
        history, target = seq.iloc[: ex.history_len], seq.iloc[ex.history_len]
        assert target[schema.ITEM] == ex.target_item_id and target[schema.TIMESTAMP] == ex.cutoff_ts
        assert ex.target_item_id not in set(history[schema.ITEM])
        assert (history[schema.TIMESTAMP] <= ex.cutoff_ts).all()
        ever = {f"i{i}" for i in raw[raw.u == int(ex.user_id[1:])].i}
        negatives = list(ex.negatives)
        assert len(set(negatives)) == len(negatives) == {"train": 1, "valid": 1, "test": 3}[ex.split]
        assert not set(negatives) & ever
        assert set(negatives) <= set(inter[schema.ITEM])
    for u, group in examples.groupby(schema.USER):
        n = len(sequences[u])
        by_split = group.set_index(schema.SPLIT)[schema.HISTORY_LEN]
        if "test" in by_split:
            assert by_split["test"] == n - 1
        if "valid" in by_split:
            assert by_split["valid"] == n - 2
        assert (group[group[schema.SPLIT] == "train"][schema.HISTORY_LEN] < n - 2).all()
