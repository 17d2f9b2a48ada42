"""Protocol options of `msr data prepare`: ratio splits of users or of a sample list, history windows, explicit
labels and K-shot subsets, each checked by hand and all of them together by the leakage audit."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msr import schema
from msr.data import splits
from msr.data.prepare import PrepareConfig, prepare


def _write(root: Path, log: list[tuple[int, int, int, int]]) -> tuple[Path, Path]:
    """RecBole atomic files of (user, item, rating, time) rows in this order, items 0..19."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"u{u}\ti{i}\t{r}\t{t}\n" for u, i, r, t in log))
    (root / "ml.item").write_text("item_id:token\tmovie_title:token_seq\n" + "".join(
        f"i{i}\tMovie {i}\n" for i in range(20)))
    return root / "ml.inter", root / "ml.item"


def _config(root: Path, **overrides) -> PrepareConfig:
    inter, items = root / "raw" / "ml.inter", root / "raw" / "ml.item"
    values = dict(run_dir=str(root / "run"), format="recbole", interactions=str(inter), items=str(items), user_min=1,
                  item_min=1, negatives_train=1, negatives_valid=2, negatives_test=2)
    values.update(overrides)
    return PrepareConfig(**values)


def _tables(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (pd.read_parquet(root / "run" / schema.INTERACTIONS_FILE),
            pd.read_parquet(root / "run" / schema.EXAMPLES_FILE))


def _log(users: int, length: int, first_time: dict[int, int] | None = None) -> list[tuple[int, int, int, int]]:
    """User u rates items u, u+1, ... (mod 20) at times start_u + 0, 1, ..., ratings cycling 1..5."""
    return [(u, (u + k) % 20, 1 + (u + k) % 5, (first_time or {}).get(u, 100 * u) + k)
            for u in range(users) for k in range(length)]


def test_ratio_split_of_users_in_chronological_order(tmp_path: Path) -> None:
    # 10 users, 6 items each; user 0 is the latest (its last interaction after everyone's)
    _write(tmp_path / "raw", _log(10, 6, {0: 5000}))
    prepare(_config(tmp_path, split="users", split_ratio="8:1:1", train_targets_per_user=-1, history_window=3))
    inter, examples = _tables(tmp_path)
    held = examples[examples[schema.SPLIT] != "train"].set_index(schema.USER)
    assert held.loc["u0", schema.SPLIT] == "test" and held.loc["u9", schema.SPLIT] == "valid"
    assert len(held) == 2 and (held[schema.HISTORY_LEN] == 5).all()
    train = examples[examples[schema.SPLIT] == "train"]
    assert set(train[schema.USER]) == {f"u{u}" for u in range(1, 9)} and len(train) == 8 * 5  # positions 1..5
    # nothing a model trains on is later than a held-out target
    train_users = inter[inter[schema.USER].isin(set(train[schema.USER]))]
    assert train_users[schema.TIMESTAMP].max() <= held[schema.CUTOFF_TS].min()
    assert (examples[schema.HISTORY_START] == np.maximum(examples[schema.HISTORY_LEN] - 3, 0)).all()


def test_ratio_cuts_follow_llara_counts() -> None:
    assert splits._ratio_cuts(943, (8, 1, 1)) == (754, 848)  # 754 | 94 | 95
    with pytest.raises(ValueError, match="split_ratio"):
        splits.parse_ratio("8:1")


def test_sample_list_explicit_labels_and_k_shot(tmp_path: Path) -> None:
    # file order: u2's rows come first, then u0, then u1
    log = _log(3, 8)
    _write(tmp_path / "raw", [r for r in log if r[0] == 2] + [r for r in log if r[0] != 2])
    cfg = _config(tmp_path, split="samples", split_ratio="8:1:1", min_history=3, max_samples=12, history_window=3,
                  label_threshold=3, train_samples=4, negatives_train=0, negatives_valid=0, negatives_test=0, seed=5)
    stats = prepare(cfg)
    inter, examples = _tables(tmp_path)
    # 5 samples per user (positions 3..7), listed u2, u0, u1: the last 12 drop u2's first 3
    assert stats["protocol"]["samples_beyond_max_samples"] == 3
    listed = examples.assign(order=examples[schema.USER].map({"u2": 0, "u0": 1, "u1": 2})).sort_values(
        ["order", schema.HISTORY_LEN])
    assert listed[schema.SPLIT].tolist()[-3:] == ["valid", "test", "test"]  # 12: 9 | 1 | 2, in list order
    assert stats["protocol"]["train_examples_beyond_train_samples"] == 9 - 4
    assert (examples[schema.SPLIT] == "train").sum() == 4 and examples[schema.NEGATIVES].map(len).eq(0).all()
    rated = inter.set_index([schema.USER, schema.POSITION])[schema.RATING]
    for e in examples.itertuples(index=False):
        assert e.target_label == int(rated[(e.user_id, e.history_len)] > 3)
        assert e.history_start == e.history_len - 3
    assert (inter[schema.LIKED] == (inter[schema.RATING] > 3)).all()
    again = tmp_path / "again"
    prepare(_config(tmp_path, **{**cfg.__dict__, "run_dir": str(again / "run")}))
    assert (again / "run" / schema.EXAMPLES_FILE).read_bytes() == (tmp_path / "run" / schema.EXAMPLES_FILE).read_bytes()


def test_explicit_labels_need_ratings_and_no_negatives(tmp_path: Path) -> None:
    _write(tmp_path / "raw", _log(3, 5))
    with pytest.raises(ValueError, match="negatives_train, negatives_valid, negatives_test to 0"):
        _config(tmp_path, label_threshold=3).validate()
    (tmp_path / "raw" / "ml.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t5\n")
    with pytest.raises(ValueError, match="has no ratings"):
        prepare(_config(tmp_path, label_threshold=3, negatives_train=0, negatives_valid=0, negatives_test=0))


logs = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 11), st.integers(1, 5), st.integers(0, 15)),
                min_size=1, max_size=100)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=logs, split=st.sampled_from(["leave_last_out", "users", "samples"]), window=st.integers(0, 3),
       explicit=st.booleans(), k=st.integers(0, 3), train=st.integers(-1, 2), seed=st.integers(0, 3))
def test_leakage_audit_holds_for_every_protocol(log, split, window, explicit, k, train, seed) -> None:
    negatives = {"negatives_train": 0, "negatives_valid": 0, "negatives_test": 0} if explicit else {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root / "raw", log)
        cfg = _config(root, split=split, history_window=window, train_samples=k, train_targets_per_user=train,
                      seed=seed, label_threshold=3 if explicit else None, **negatives)
        try:
            prepare(cfg)
        except ValueError as err:
            assert "no interactions left" in str(err)
            return
        inter, examples = _tables(root)
    sequences = {u: g.sort_values(schema.POSITION) for u, g in inter.groupby(schema.USER)}
    consumed = {}
    for u, i, _, _ in log:
        consumed.setdefault(f"u{u}", set()).add(f"i{i}")
    for e in examples.itertuples(index=False):
        seq = sequences[e.user_id]
        history, target = seq.iloc[: e.history_len], seq.iloc[e.history_len]
        assert target[schema.ITEM] == e.target_item_id and target[schema.TIMESTAMP] == e.cutoff_ts
        assert e.target_item_id not in set(history[schema.ITEM]) and (history[schema.TIMESTAMP] <= e.cutoff_ts).all()
        assert e.history_start == (max(0, e.history_len - window) if window else 0)
        assert not set(e.negatives) & consumed[e.user_id]
        assert e.target_label == (int(target[schema.RATING] > 3) if explicit else 1)
    assert (examples[schema.SPLIT] == "train").sum() <= (k or len(examples))
    if split == "users":  # one held-out example per held-out user, none of them also a training user
        held = examples[examples[schema.SPLIT] != "train"]
        assert held[schema.USER].is_unique and not set(held[schema.USER]) & set(
            examples[examples[schema.SPLIT] == "train"][schema.USER])
