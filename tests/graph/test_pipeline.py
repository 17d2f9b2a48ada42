"""`msr graph train|evaluate` on the embedded dataset: outputs, side-by-side evaluation, skipping, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from msr import schema
from msr.cli import main
from msr.evaluate import EvaluateConfig, candidate_table, evaluate
from msr.graph import encode, model
from msr.graph.config import GraphConfig
from msr.graph.pipeline import (
    GRAPH_FILE,
    METRICS_FILE,
    evaluate_graph,
    run_graph,
    train_graph,
)
from msr.rundir import RunDir, write_parquet
from tests.graph.conftest import write_run


def _config(run: Path, encoder: str, **overrides: object) -> GraphConfig:
    settings = {"history_titles": 3, "batch_size": 32, "max_epochs": 4, **overrides}
    return GraphConfig(run_dir=str(run), encoder=encoder, **settings)


def test_graph_stage_writes_metrics_and_scores_for_msr_evaluate(graph_run: Path, tiny_encoder: str) -> None:
    out = run_graph(_config(graph_run, tiny_encoder))
    metrics = json.loads((graph_run / METRICS_FILE).read_text())
    assert metrics == out["metrics"] and out["train"]["epoch"] >= 1
    examples = pd.read_parquet(graph_run / schema.EXAMPLES_FILE)
    for split in (schema.VALID, schema.TEST):
        assert metrics[split]["examples"] == int((examples[schema.SPLIT] == split).sum())
        assert 0 <= metrics[split]["ndcg@20"] <= metrics[split]["recall@20"] <= 1
        assert metrics[split]["recall@10"] <= metrics[split]["recall@20"]
    assert (graph_run / "graph" / "model.safetensors").is_file() and (graph_run / GRAPH_FILE).is_file()

    scores = pd.read_parquet(graph_run / "graph_scores.parquet")
    assert list(scores.columns) == [schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.LABEL, schema.SCORE]
    run = RunDir(graph_run)
    expected = pd.concat([candidate_table(run, s) for s in (schema.VALID, schema.TEST)])
    assert len(scores) == len(expected) and scores[schema.SCORE].notna().all()

    # the graph as a retriever: its top retrieve_k items of every valid and test example, the history masked
    retrieved = pd.read_parquet(graph_run / "graph_retrieval.parquet")
    assert list(retrieved.columns) == [schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.SCORE, schema.RANK,
                                        schema.TIED_OUT]
    per_example = retrieved.groupby([schema.USER, schema.HISTORY_LEN])
    assert per_example.ngroups == len(expected.drop_duplicates([schema.USER, schema.HISTORY_LEN]))
    assert (per_example[schema.RANK].apply(list) == per_example[schema.RANK].size().map(lambda n: list(range(1, n + 1)))).all()
    assert (per_example[schema.SCORE].apply(lambda s: s.is_monotonic_decreasing)).all()
    inter = pd.read_parquet(graph_run / schema.INTERACTIONS_FILE)
    sequences = inter.groupby(schema.USER)[schema.ITEM].apply(list)
    assert not any(item in sequences[user][:h] for user, h, item in
                   zip(retrieved[schema.USER], retrieved[schema.HISTORY_LEN], retrieved[schema.ITEM]))
    n_items = len(pd.read_parquet(graph_run / schema.ITEMS_FILE))  # 40 < retrieve_k 50: every item left is listed
    assert per_example.size().to_dict() == {(u, h): n_items - len(set(sequences[u][:h])) for u, h in per_example.groups}

    # beside a `msr score` table (p_yes) and the baselines, on the very same candidates
    sft = candidate_table(run, schema.TEST)[[schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.LABEL]]
    sft["p_yes"] = np.random.default_rng(0).random(len(sft))
    write_parquet(graph_run / "scores.parquet", pa.Table.from_pandas(sft, preserve_index=False))
    result = evaluate(EvaluateConfig(run_dir=str(graph_run), methods=["sft=scores.parquet", "graph=graph_scores.parquet"]))
    assert list(result["methods"]) == ["sft", "graph", "random", "popularity"]
    assert "| graph |" in (graph_run / "report.md").read_text()


def test_rerun_skips_and_a_changed_user_text_encodes_only_users(graph_run: Path, tiny_encoder: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run_graph(_config(graph_run, tiny_encoder))
    stamps = {p: p.stat().st_mtime_ns for p in (graph_run / "graph").rglob("*") if p.is_file()}
    monkeypatch.setattr(encode, "load_encoder", lambda *a, **k: pytest.fail("nothing to encode on a re-run"))
    run_graph(_config(graph_run, tiny_encoder))
    assert stamps == {p: p.stat().st_mtime_ns for p in (graph_run / "graph").rglob("*") if p.is_file()}

    monkeypatch.undo()
    texts: list[str] = []
    real = encode.load_encoder

    def recording(*args: object, **kwargs: object):
        model = real(*args, **kwargs)
        inner = model.encode
        model.encode = lambda batch, **kw: (texts.extend(batch), inner(batch, **kw))[1]
        return model

    monkeypatch.setattr(encode, "load_encoder", recording)
    run_graph(_config(graph_run, tiny_encoder, history_titles=1))
    assert texts and all("Recent items" in t and "Title:" not in t for t in texts)
    assert (graph_run / "graph" / "state.json").stat().st_mtime_ns != stamps[graph_run / "graph" / "state.json"]


def test_cli_train_then_evaluate(graph_run: Path, tiny_encoder: str, capsys: pytest.CaptureFixture) -> None:
    args = ["--run_dir", str(graph_run), "--encoder", tiny_encoder, "--max_epochs", "2", "--history_titles", "2"]
    assert main(["graph", "evaluate", *args]) == 2
    assert "msr graph train" in capsys.readouterr().err
    assert main(["graph", "train", *args]) == 0
    assert main(["graph", "evaluate", *args]) == 0
    assert '"test"' in capsys.readouterr().out
    (graph_run / schema.USER_SUMMARIES_FILE).unlink()
    assert main(["graph", "train", *args]) == 2
    assert "msr summarize users" in capsys.readouterr().err


def _hand_run(tmp_path: Path) -> Path:
    """Three users of five items (write_run), no summaries needed."""
    return write_run(tmp_path / "run", {"a": ["i0", "i1", "i2", "i3", "i4"], "b": ["i1", "i2", "i3", "i0", "i5"],
                                        "c": ["i5", "i4", "i3", "i2", "i1"]})


def _hand_config(run: Path, encoder: str, **overrides: object) -> GraphConfig:
    settings = {"user_summary": False, "item_summary": False, "history_titles": 2, "knn_k": 3, "knn_jac": 3,
                "batch_size": 2, "max_epochs": 3, **overrides}
    return GraphConfig(run_dir=str(run), encoder=encoder, **settings)


def _rewrite_examples(run: Path, examples: pd.DataFrame) -> None:
    write_parquet(run / schema.EXAMPLES_FILE, pa.Table.from_pandas(examples, preserve_index=False))


def test_no_validation_examples_is_an_error_not_a_silent_stop(tmp_path: Path, tiny_encoder: str) -> None:
    run = _hand_run(tmp_path)
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    _rewrite_examples(run, examples[examples[schema.SPLIT] != schema.VALID])
    with pytest.raises(ValueError, match="no validation examples"):
        train_graph(_hand_config(run, tiny_encoder))


def test_a_negative_seed_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="seed must be >= 0"):  # SeedSequence would fail after encoding
        GraphConfig(run_dir="unused", seed=-1).validate()


def test_a_candidate_missing_from_the_items_is_an_error(tmp_path: Path, tiny_encoder: str) -> None:
    run = _hand_run(tmp_path)
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    examples[schema.NEGATIVES] = [["i9"] if split == schema.TEST else n
                                  for split, n in zip(examples[schema.SPLIT], examples[schema.NEGATIVES])]
    _rewrite_examples(run, examples)
    train_graph(_hand_config(run, tiny_encoder))  # training never reads the negatives
    with pytest.raises(ValueError, match=r"3 candidates not found in items.parquet.*item i9.*msr data prepare"):
        evaluate_graph(_hand_config(run, tiny_encoder))


def test_force_restarts_an_interrupted_training(tmp_path: Path, tiny_encoder: str, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    run = _hand_run(tmp_path)
    real_write_json = model.write_json
    writes = iter(range(100))

    def killed_on_the_second(path: Path, value: dict) -> None:
        if next(writes) == 1:
            raise KeyboardInterrupt
        real_write_json(path, value)

    monkeypatch.setattr(model, "write_json", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        train_graph(_hand_config(run, tiny_encoder))
    monkeypatch.undo()
    with caplog.at_level("INFO"):
        forced = train_graph(_hand_config(run, tiny_encoder, force=True))
    assert "resuming" not in caplog.text and forced["epoch"] == 3
    assert [h["epoch"] for h in forced["history"]] == [1, 2, 3]
    assert not (run / "graph" / model.LAST_FILE).exists()


@pytest.mark.slow
def test_graph_beats_popularity_with_the_packaged_minilm(tmp_path: Path) -> None:
    """On the embedded dataset, the recommender learns the users' categories from their recent titles."""
    from msr.data.prepare import PrepareConfig, prepare
    from msr.data.synthetic import (
        COVERS_DIR,
        PAIRS_FILE,
        TITLES_FILE,
        SynthConfig,
        generate,
    )

    raw = generate(SynthConfig(out_dir=str(tmp_path / "raw"), num_users=200, num_items=160, seed=0))
    run = tmp_path / "run"
    prepare(PrepareConfig(run_dir=str(run), interactions=str(raw / PAIRS_FILE), items=str(raw / TITLES_FILE),
                          image_dir=str(raw / COVERS_DIR), train_targets_per_user=3, verify_images=False))
    run_graph(GraphConfig(run_dir=str(run), user_summary=False, item_summary=False, history_titles=5, batch_size=128))
    methods = evaluate(EvaluateConfig(run_dir=str(run), methods=["graph=graph_scores.parquet"],
                                      baselines=["popularity"]))["methods"]
    assert methods["graph"]["auc"] > methods["popularity"]["auc"] + 0.05
    assert methods["graph"]["ndcg@5"] > methods["popularity"]["ndcg@5"]
