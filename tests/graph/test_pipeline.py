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
from msr.graph import encode
from msr.graph.config import GraphConfig
from msr.graph.pipeline import GRAPH_FILE, METRICS_FILE, run_graph
from msr.rundir import RunDir, write_parquet


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
