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
from msr.provenance import Stage
from msr.rundir import RunDir, write_parquet
from msr.score_split import ScoreConfig, score_split
from test_score_split import write_retrieval

KEY = [schema.USER, schema.HISTORY_LEN, schema.ITEM]


def _write(run: Path, file: str, table: pd.DataFrame) -> None:
    write_parquet(run / file, pa.Table.from_pandas(table, preserve_index=False))


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
    # the truth of another dataset of the same size (the same ids) would give a silently wrong oracle
    from msr.data.synthetic import SynthConfig, generate

    other = generate(SynthConfig(out_dir=str(run.parent / "other"), num_users=40, num_items=40, seed=2))
    with pytest.raises(ValueError, match="is not the truth of the data this run was prepared from"):
        evaluate(EvaluateConfig(run_dir=str(run), methods=["zero_shot=scores.parquet"],
                                truth=str(other / "truth.json")))


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


def test_intervals_and_p_values_against_the_best_baseline(tiny_run: dict) -> None:
    run = Path(tiny_run["run"])
    table = candidate_table(RunDir(run), "test")
    popular = table[KEY].assign(**{schema.SCORE: popularity_before(RunDir(run), table)})
    _write(run, "same.parquet", popular)  # popularity's very scores under another name
    _write(run, "best.parquet", table[KEY].assign(**{schema.SCORE: table[schema.LABEL] + 0.0}))  # target first
    cfg = EvaluateConfig(run_dir=str(run), methods=["same=same.parquet", "best=best.parquet"], resamples=200,
                         baselines=["random", "popularity"])
    out = evaluate(cfg)
    how, methods = out["uncertainty"], out["methods"]
    assert how["reference_among"] == ["random", "popularity"] and how["reference_metric"] == "auc"
    assert how["reference"] == max(["random", "popularity"], key=lambda n: methods[n]["auc"])
    for name, figures in methods.items():
        assert set(figures["ci"]) == set(figures) - {"users", "ci", "compared_to", "p_value"}
        assert all(lo <= figures[m] <= hi for m, (lo, hi) in figures["ci"].items())
    other = "random" if how["reference"] == "popularity" else "popularity"
    assert methods["best"]["compared_to"] == how["reference"] and methods["best"]["p_value"]["auc"] == 1 / 201
    assert "p_value" not in methods[how["reference"]]
    report = (run / "report.md").read_text()
    assert f"### p-values against {how['reference']}" in report and "<= 0.005" in report
    assert other in methods and "p_value" in methods[other]
    cfg.baselines = ["popularity"]  # the one baseline, so the reference: its copy is identical on every user
    assert set(evaluate(cfg)["methods"]["same"]["p_value"].values()) == {1.0}
    cfg.baselines = ["random", "popularity"]
    cfg.compare_to, cfg.compare_metric = ["best"], "ndcg@10"  # a listed method that beats both baselines
    assert evaluate(cfg)["uncertainty"]["reference"] == "best"
    cfg.resamples = 0
    out = evaluate(cfg)
    assert all("ci" not in figures and "p_value" not in figures for figures in out["methods"].values())
    assert "No intervals or p-values (resamples 0)." in (run / "report.md").read_text()


@pytest.mark.parametrize(("changes", "message"), [
    ({"compare_to": ["nobody"]}, "compare_to: .* not among the methods"),
    ({"compare_metric": "ndcg@7"}, "compare_metric: 'ndcg@7' is not one of"),
    ({"resamples": -1}, "resamples must be >= 0"),
    ({"rerank_methods": ["sft=r.parquet"]}, "name the retrieval table"),
    ({"retrieval": "pop=r.parquet", "rerank_methods": ["pop=s.parquet"]}, "names the retriever"),
    ({"retrieval": "r.parquet"}, "not name=file"),
])
def test_options_naming_nothing_evaluated_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvaluateConfig(run_dir="unused", **changes).validate()


def test_full_ranking_of_a_retriever_and_its_rerankers(tiny_run: dict) -> None:
    run = Path(tiny_run["run"])
    retrieval = write_retrieval(run)  # depth 5; the target at rank 2 in half the examples, absent in the others
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    target = retrieval.merge(examples, on=[schema.USER, schema.HISTORY_LEN])[schema.TARGET] == retrieval[schema.ITEM]
    _write(run, "perfect.parquet", retrieval[KEY].assign(**{schema.SCORE: target.astype(float)}))  # target first
    _write(run, "constant.parquet", retrieval[KEY].assign(**{schema.P_YES: 0.5}))  # ties: the target ranks last
    out = evaluate(EvaluateConfig(run_dir=str(run), methods=[], baselines=["popularity"], retrieval="pop=retrieval.parquet",
                                  rerank_methods=["perfect=perfect.parquet", "constant=constant.parquet"],
                                  full_ks=[1, 5], resamples=200))
    full = out["full_ranking"]
    assert (full["retriever"], full["depth"], full["examples"], full["target_retrieved"]) == ("pop", 5, 40, 0.5)
    pop, perfect, constant = (full["methods"][n] for n in ("pop", "perfect", "constant"))
    assert (pop["recall@1"], pop["recall@5"]) == (0, 0.5) and pop["ndcg@5"] == pytest.approx(0.5 / np.log2(3))
    assert perfect["recall@1"] == perfect["recall@5"] == perfect["ndcg@5"] == 0.5  # the share retrieved, exactly
    assert (constant["recall@1"], constant["recall@5"]) == (0, 0.5) and constant["ndcg@5"] == pytest.approx(0.5 / np.log2(6))
    assert perfect["compared_to"] == "pop" and perfect["p_value"]["recall@1"] == 1 / 201 and "p_value" not in pop
    assert perfect["ci"]["recall@5"][0] < 0.5 < perfect["ci"]["recall@5"][1]
    assert json.loads((run / "metrics.json").read_text())["full_ranking"] == full
    report = (run / "report.md").read_text()
    sampled, full_section = report.split("## Full ranking")
    assert "## Sampled candidates: 1 positive + 5 negatives per example" in sampled and "| popularity |" in sampled
    assert "pop's top 5, reranked" in full_section and "a miss at every K" in full_section
    assert "| pop (retriever) | 0.0000 [0.0000, 0.0000] |" in full_section and "| perfect |" in full_section
    assert "### p-values against pop" in full_section


def test_a_retriever_tied_with_its_target_ranks_it_below_the_ties(tiny_run: dict) -> None:
    """The retriever is ranked by its own scores, ties against the target as for rerankers, not by its RANK
    column (which breaks ties by item code): popularity's integer counts tie all the time."""
    run = Path(tiny_run["run"])
    retrieval = write_retrieval(run)  # the target at rank 2 in every other example
    tied = retrieval.assign(**{schema.SCORE: retrieval[schema.SCORE].where(retrieval[schema.RANK] > 2, 9.0)})
    _write(run, "retrieval.parquet", tied)  # rank 1 and the target at rank 2 score the same
    out = evaluate(EvaluateConfig(run_dir=str(run), methods=[], baselines=["random"], retrieval="pop=retrieval.parquet",
                                  full_ks=[1, 2], resamples=0))
    pop = out["full_ranking"]["methods"]["pop"]
    assert (pop["recall@1"], pop["recall@2"]) == (0, 0.5)


def test_full_ranking_refuses_what_it_cannot_rank(tiny_run: dict) -> None:
    run = Path(tiny_run["run"])
    retrieval = write_retrieval(run)
    _write(run, "rerank.parquet", retrieval[KEY].iloc[1:].assign(**{schema.SCORE: 1.0}))
    cfg = EvaluateConfig(run_dir=str(run), methods=[], baselines=["random"], retrieval="pop=retrieval.parquet",
                         rerank_methods=["r=rerank.parquet"], full_ks=[5], resamples=0)
    with pytest.raises(ValueError, match=r"rerank.parquet \(r\) lacks scores for 1 of 200 retrieved items"):
        evaluate(cfg)
    cfg.rerank_methods, cfg.full_ks = [], [10]
    with pytest.raises(ValueError, match=r"full_ks: \[10\] exceed the retrieval depth 5 of retrieval.parquet"):
        evaluate(cfg)
    cfg.full_ks = [5]
    _write(run, "retrieval.parquet", retrieval.iloc[5:])  # the first example's list is gone
    with pytest.raises(ValueError, match="retrieval.parquet: 1 of 40 examples have no retrieved items"):
        evaluate(cfg)
    _write(run, "retrieval.parquet", retrieval)
    Stage(RunDir(run), "baselines.popularity", {}, outputs=["retrieval.parquet"]).commit()
    _write(run, "retrieval.parquet", retrieval.iloc[::-1])  # edited after its stage wrote it
    with pytest.raises(ValueError, match=r"baselines.popularity is not current .* `msr baselines evaluate"):
        evaluate(cfg)


def test_a_reranker_scored_by_msr_score_is_stale_when_the_retrieval_changes(tiny_run: dict) -> None:
    run = Path(tiny_run["run"])
    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, splits=["train"]))
    write_retrieval(run)
    score_split(ScoreConfig(run_dir=str(run), model=tiny_run["vlm"], device="cpu", dtype="float32",
                            candidates="retrieval.parquet", output="rerank.parquet"))
    cfg = EvaluateConfig(run_dir=str(run), methods=[], baselines=["random"], retrieval="pop=retrieval.parquet",
                         rerank_methods=["sft=rerank.parquet"], full_ks=[1, 5], resamples=50)
    full = evaluate(cfg)["full_ranking"]
    assert 0 <= full["methods"]["sft"]["recall@1"] <= full["methods"]["sft"]["recall@5"] == 0.5
    write_retrieval(run, reverse=True)
    with pytest.raises(ValueError, match=r"score.rerank.parquet is not current \(input candidates .* changed\); "
                                         r"re-run `msr score --output rerank.parquet --candidates retrieval.parquet"):
        evaluate(cfg)
