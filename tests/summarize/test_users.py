"""Recurrent user summarizer: block states are reused, never see the cutoff, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from msr import schema
from msr.summarize.backends import TransformersBackend
from msr.summarize.config import SummarizeConfig
from msr.summarize.items import summarize_items
from msr.summarize.users import format_items, plan_states, summarize_users


def _config(tiny_run: dict, **overrides) -> SummarizeConfig:
    values = dict(run_dir=str(tiny_run["run"]), item_model=tiny_run["vlm"], user_model=tiny_run["lm"],
                  max_new_tokens=6, batch_size=16)
    values.update(overrides)
    return SummarizeConfig(**values)


def test_plan_reuses_blocks_and_appending_a_block_adds_one_state() -> None:
    seq = {"u": [f"i{k}" for k in range(12)]}
    keys = {f"i{k}": f"k{k}" for k in range(12)}
    plan = plan_states(seq, {"u": [4, 7, 8]}, keys, "root", 3, "recurrent")
    assert sorted(p for _, p in plan) == [3, 4, 6, 7, 8]
    parent = {p: (s.prev.prefix_len if s.prev else 0) for (_, p), s in plan.items()}
    assert parent == {3: 0, 4: 3, 6: 3, 7: 6, 8: 6}
    assert plan[("u", 8)].block == ("i6", "i7")
    grown = plan_states(seq, {"u": [4, 7, 8, 9]}, keys, "root", 3, "recurrent")
    assert set(grown) - set(plan) == {("u", 9)}
    assert all(grown[k].key == plan[k].key for k in plan)
    # a changed summary of item i4 (in block 3..6) changes the states downstream of it, only those
    changed = plan_states(seq, {"u": [4, 7, 8]}, {**keys, "i4": "new"}, "root", 3, "recurrent")
    assert {p for (_, p), s in changed.items() if s.key != plan[("u", p)].key} == {6, 7, 8}
    direct = plan_states(seq, {"u": [4, 7]}, keys, "root", 3, "direct")
    assert {p: s.block for (_, p), s in direct.items()} == {4: tuple(seq["u"][:4]), 7: tuple(seq["u"][:7])}


def test_format_items_numbers_by_history_position() -> None:
    text = format_items(("a", "b"), {"a": "Mug", "b": "Hat"}, {"a": "a red mug", "b": ""}, start=4)
    assert text == "4. Mug: a red mug\n5. Hat"


def test_every_example_summarized_from_its_past_only(tiny_run: dict) -> None:
    cfg = _config(tiny_run)
    summarize_items(cfg)
    backend = TransformersBackend(cfg.user_model, batch_size=16)
    stats = summarize_users(cfg, backend)
    assert stats["generated"] == backend.calls == stats["states"] > 0
    run = Path(cfg.run_dir)
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    summaries = pd.read_parquet(run / schema.USER_SUMMARIES_FILE)
    merged = examples.merge(summaries, on=[schema.USER, schema.HISTORY_LEN], how="left")
    assert merged[schema.SUMMARY].notna().all()
    inter = pd.read_parquet(run / schema.INTERACTIONS_FILE)
    sequences = inter.groupby(schema.USER)[schema.ITEM].agg(list).to_dict()
    states = {r["key"]: r for r in map(json.loads, (run / schema.USER_STATES_FILE).read_text().splitlines())}
    by_cutoff = {(r[schema.USER], r["prefix_len"]): r for r in states.values()}
    for ex in examples.itertuples(index=False):
        record, seen = by_cutoff[(ex.user_id, ex.history_len)], []
        while record is not None:  # walk the chain back to the first block
            seen = record["block"] + seen
            record = states.get(record["prev_key"])
        assert seen == sequences[ex.user_id][: ex.history_len]  # exactly the past, in order
        assert ex.target_item_id not in seen
    again = TransformersBackend(cfg.user_model, batch_size=16)
    assert summarize_users(cfg, again)["generated"] == 0 and again.calls == 0


def test_direct_mode_one_call_per_cutoff(tiny_run: dict) -> None:
    cfg = _config(tiny_run, mode="direct")
    summarize_items(cfg)
    stats = summarize_users(cfg)
    examples = pd.read_parquet(Path(cfg.run_dir) / schema.EXAMPLES_FILE)
    assert stats["states"] == len(examples.drop_duplicates([schema.USER, schema.HISTORY_LEN]))


def _generated(stats: dict) -> int:
    return stats["generated"]


def _keep_users(run: Path, n: int) -> None:
    """Cut this test's private copy of the run to the examples of its first `n` users (fewer states to generate)."""
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    keep = examples[schema.USER].drop_duplicates().head(n)
    examples[examples[schema.USER].isin(keep)].to_parquet(run / schema.EXAMPLES_FILE, index=False)


def test_rebuilt_models_regenerate_exactly_what_depends_on_them(tiny_run: dict, tmp_path: Path) -> None:
    """A model rebuilt in the same folder with other weights is another model: the item VLM's summaries and every
    state built on them are regenerated; the user LM's only its states. A no-op re-run loads no model."""
    from msr.tiny import build_tiny_lm, build_tiny_vlm

    _keep_users(tiny_run["run"], 8)
    titles = pd.read_parquet(tiny_run["run"] / schema.ITEMS_FILE)[schema.TITLE].tolist()
    vlm, lm = tmp_path / "vlm", tmp_path / "lm"
    build_tiny_vlm(vlm, "llava", titles)
    build_tiny_lm(lm, titles)
    cfg = _config(tiny_run, item_model=str(vlm), user_model=str(lm), max_new_tokens=3)
    items = summarize_items(cfg)
    users = summarize_users(cfg)
    assert _generated(items) == items["items"] and _generated(users) == users["states"] > 0

    build_tiny_lm(lm, titles, seed=1)  # only the user LM changes
    assert _generated(summarize_items(cfg)) == 0
    assert _generated(summarize_users(cfg)) == users["states"]

    build_tiny_vlm(vlm, "llava", titles, seed=1)  # the item VLM changes: its summaries, and every state on them
    assert _generated(summarize_items(cfg)) == items["items"]
    assert _generated(summarize_users(cfg)) == users["states"]


def test_a_no_op_rerun_loads_no_model(tiny_run: dict, monkeypatch) -> None:
    import msr.summarize.backends

    _keep_users(tiny_run["run"], 8)
    cfg = _config(tiny_run, max_new_tokens=3)
    summarize_items(cfg)
    summarize_users(cfg)

    def no_load(*args, **kwargs):
        raise AssertionError("a fully cached re-run loaded a model")

    monkeypatch.setattr(msr.summarize.backends, "load_model", no_load)
    again = TransformersBackend.__new__(TransformersBackend)  # a backend that was never loaded, counting calls
    assert _generated(summarize_items(cfg)) == 0 and _generated(summarize_users(cfg)) == 0
    assert _generated(summarize_items(cfg, again)) == 0 and _generated(summarize_users(cfg, again)) == 0
    assert again.calls == 0
    # the same holds with dtype spelled as what "auto" resolves to here
    import torch

    if not torch.cuda.is_available():
        spelled = _config(tiny_run, max_new_tokens=3, dtype="float32")
        assert _generated(summarize_items(spelled)) == 0 and _generated(summarize_users(spelled)) == 0
