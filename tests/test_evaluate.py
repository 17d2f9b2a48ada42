"""`msr evaluate`: baselines on the same candidates, popularity strictly before the cutoff, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve

from msr import schema
from msr.data.sft import SftDataConfig, write_sft_rows
from msr.evaluate import (
    EvaluateConfig,
    candidate_table,
    evaluate,
    popularity_before,
    update_model_card,
)
from msr.metrics import roc_curve
from msr.rundir import RunDir, write_parquet
from msr.score_split import ScoreConfig, score_split


def test_popularity_counts_only_the_past(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    write_parquet(run.path(schema.INTERACTIONS_FILE), pa.table({
        schema.USER: ["a", "b", "c", "d"], schema.ITEM: ["x", "x", "x", "y"],
        schema.TIMESTAMP: [10, 20, 30, 5], schema.POSITION: [0, 0, 0, 0]}))
    table = pd.DataFrame({schema.ITEM: ["x", "x", "x", "y", "z"], schema.CUTOFF_TS: [20, 21, 100, 5, 50]})
    # at ts 20 only the interaction at 10 counts: the one at 20 is not strictly before
    assert popularity_before(run, table).tolist() == [1, 2, 3, 0, 0]


def test_roc_curve_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 6, 200).astype(float), rng.integers(0, 2, 200)
    fpr, tpr = roc_curve(scores, labels)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)


def test_evaluate_writes_every_method_side_by_side(tiny_run: dict) -> None:
    run = Path(tiny_run["run"])
    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, history_titles=3,
                                 splits=["train"]))
    score_split(ScoreConfig(run_dir=str(run), model=tiny_run["vlm"], device="cpu", dtype="float32"))
    truth = Path(tiny_run["raw"]) / "truth.json"
    out = evaluate(EvaluateConfig(run_dir=str(run), methods=["zero_shot=scores.parquet"], truth=str(truth)))
    methods = out["methods"]
    assert list(methods) == ["zero_shot", "random", "popularity", "oracle"]
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    assert all(m["users"] == int((examples[schema.SPLIT] == "test").sum()) for m in methods.values())
    assert methods["oracle"]["auc"] > 0.8 > methods["random"]["auc"]
    assert json.loads((run / "metrics.json").read_text()) == out
    report = (run / "report.md").read_text()
    assert all(f"| {name} |" in report for name in methods)
    assert (run / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_parquet(run / "eval_scores.parquet")
    assert {"zero_shot", "random", "popularity", "oracle"} <= set(table.columns)


def test_partial_scores_are_refused(tiny_run: dict) -> None:
    run = Path(tiny_run["run"])
    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, splits=["train"]))
    score_split(ScoreConfig(run_dir=str(run), model=tiny_run["vlm"], device="cpu", dtype="float32", max_examples=2))
    with pytest.raises(ValueError, match="lacks scores"):
        evaluate(EvaluateConfig(run_dir=str(run), baselines=["random"]))


def test_a_generic_score_column_sits_beside_p_yes(tiny_run: dict) -> None:
    run = Path(tiny_run["run"])
    table = candidate_table(RunDir(run), "test")[[schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.LABEL]]
    rng = np.random.default_rng(0)
    for file, column in (("scores.parquet", "p_yes"), ("other.parquet", schema.SCORE)):
        write_parquet(run / file, pa.Table.from_pandas(table.assign(**{column: rng.random(len(table))}),
                                                       preserve_index=False))
    out = evaluate(EvaluateConfig(run_dir=str(run), methods=["sft=scores.parquet", "other=other.parquet"],
                                  baselines=["popularity"]))
    assert list(out["methods"]) == ["sft", "other", "popularity"]
    both = table.assign(p_yes=0.5, **{schema.SCORE: 0.5})
    write_parquet(run / "both.parquet", pa.Table.from_pandas(both, preserve_index=False))
    with pytest.raises(ValueError, match="one score column"):
        evaluate(EvaluateConfig(run_dir=str(run), methods=["x=both.parquet"], baselines=[]))


@pytest.mark.parametrize(("methods", "message"), [
    (["random=a.parquet"], "taken by a baseline"),
    (["label=a.parquet"], "taken by a baseline or a column"),
    (["item_id=a.parquet"], "taken by a baseline or a column"),
    (["sft=a.parquet", "sft=b.parquet"], "given twice"),
    (["=a.parquet"], "not name=file"),
])
def test_method_names_that_would_collide_are_refused(methods: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvaluateConfig(run_dir="unused", methods=methods).validate()


def test_duplicate_keys_in_a_scored_file_are_refused(tiny_run: dict) -> None:
    run = Path(tiny_run["run"])
    table = candidate_table(RunDir(run), "test")[[schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.LABEL]]
    table[schema.SCORE] = np.arange(len(table), dtype=float)
    twice = pd.concat([table, table.iloc[[3]]])  # would give row 3's example an extra candidate
    write_parquet(run / "dup.parquet", pa.Table.from_pandas(twice, preserve_index=False))
    with pytest.raises(ValueError, match=r"dup.parquet: 2 rows share their \(user_id, history_len, item_id\)"):
        evaluate(EvaluateConfig(run_dir=str(run), methods=["x=dup.parquet"], baselines=[]))


def test_the_model_card_gets_the_table_once(tmp_path: Path) -> None:
    card = tmp_path / "README.md"
    card.write_text("# msr recommender\n\n## Training metrics\n", encoding="utf-8")
    metrics = {"split": "test", "methods": {"sft": {"users": 2, "auc": 0.75, "user_auc": 0.5, **{
        f"{m}@1": 0.5 for m in ("hr", "ndcg", "mrr")}}}}
    update_model_card(tmp_path, metrics, [1])
    metrics["methods"]["sft"]["auc"] = 0.8
    update_model_card(tmp_path, metrics, [1])
    text = card.read_text(encoding="utf-8")
    assert text.startswith("# msr recommender\n\n## Training metrics\n")
    assert text.count("## Evaluation: test split") == 1 and "| sft | 0.8000 |" in text and "0.7500" not in text
    with pytest.raises(FileNotFoundError, match="recipes/sft.py"):
        update_model_card(tmp_path / "missing", metrics, [1])
    card.write_text(text.replace("<!-- msr evaluate test -->", ""), encoding="utf-8")  # a hand-broken card
    with pytest.raises(ValueError, match="incomplete or out of order"):
        update_model_card(tmp_path, metrics, [1])
