"""Published protocols end to end on a small fixture: explicit labels evaluated by AUC, history windows honoured
by the prompt and the baselines (refused where a stage reads whole histories), presets read by section, and the
verdict against published figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from msr import schema
from msr.baselines.data import history_rows
from msr.config import ConfigError, parse_config
from msr.data.prepare import PrepareConfig, prepare
from msr.data.sft import SftDataConfig, load_sft_split, write_sft_rows
from msr.evaluate import EvaluateConfig, evaluate
from msr.graph.data import load_run
from msr.published import read_published
from msr.rundir import RunDir
from msr.summarize.config import SummarizeConfig
from msr.summarize.users import summarize_users


def _raw(root: Path, users: int = 12, length: int = 14) -> tuple[Path, Path]:
    """RecBole files: user u rates 14 of 30 movies, ratings 1..5 by a fixed pattern, one row a second."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [(u, (3 * u + 2 * k) % 30, 1 + (u * 7 + k * 3) % 5, 1000 * u + k) for u in range(users) for k in
            range(length)]
    (root / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (root / "ml.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\n" + "".join(
        f"{i}\tMovie {i}\t19{50 + i}\n" for i in range(30)))
    return root / "ml.inter", root / "ml.item"


def _tallrec_like(tmp_path: Path) -> Path:
    inter, items = _raw(tmp_path / "raw")
    run = tmp_path / "run"
    prepare(PrepareConfig(run_dir=str(run), format="recbole", interactions=str(inter), items=str(items), user_min=0,
                          item_min=0, split="samples", min_history=10, history_window=10, label_threshold=3,
                          max_samples=40, negatives_train=0, negatives_valid=0, negatives_test=0))
    return run


def test_explicit_labels_are_evaluated_by_auc_with_a_verdict(tmp_path: Path) -> None:
    run = _tallrec_like(tmp_path)
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    assert examples[examples[schema.SPLIT] == "test"][schema.TARGET_LABEL].nunique() == 2
    published = tmp_path / "preset.yaml"
    published.write_text(yaml.safe_dump({"preset": "x", "published": {"source": "A paper", "rows": [
        {"method": "popularity", "metric": "auc", "value": 0.999, "test_size": 1000, "as": "Pop"},
        {"method": "llm", "metric": "auc", "value": 0.67, "test_size": 1000}]}}))
    out = evaluate(EvaluateConfig(run_dir=str(run), methods=[], baselines=["random", "popularity"], resamples=200,
                                  published=str(published)))
    eval_scores = pd.read_parquet(run / "eval_scores.parquet")
    assert out["uncertainty"]["labels"] == "explicit" and set(out["methods"]["popularity"]) >= {"auc", "ci"}
    assert out["methods"]["popularity"]["auc"] == pytest.approx(
        roc_auc_score(eval_scores[schema.LABEL], eval_scores["popularity"]))
    rows = out["published"]["rows"]
    assert [r["verdict"] for r in rows] == ["outside", "not run"] and rows[0]["our_size"] == 4
    report = (run / "report.md").read_text()
    assert "Explicit labels" in report and "| popularity (Pop) | auc |" in report and "| outside |" in report
    users = examples[examples[schema.SPLIT] == "test"][schema.USER].nunique()
    assert f"# Evaluation: test split, 4 examples of {users} users" in report  # the bootstrap's unit is the user
    inside = dict(rows[0], value=out["methods"]["popularity"]["auc"])
    published.write_text(yaml.safe_dump({"published": {"rows": [
        {k: inside[k] for k in ("method", "metric", "value", "test_size")}]}}))
    again = evaluate(EvaluateConfig(run_dir=str(run), methods=[], baselines=["popularity"], resamples=200,
                                    published=str(published)))
    assert again["published"]["rows"][0]["verdict"] == "inside"
    assert json.loads((run / "metrics.json").read_text())["published"]["rows"][0]["verdict"] == "inside"


def test_a_published_metric_we_did_not_compute_or_a_bad_row_is_refused(tmp_path: Path) -> None:
    run = _tallrec_like(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"published": {"rows": [{"method": "popularity", "metric": "hr@1", "value": 0.3,
                                                           "test_size": 95}]}}))
    with pytest.raises(ValueError, match="'hr@1' of popularity is not one this evaluation computed"):
        evaluate(EvaluateConfig(run_dir=str(run), methods=[], baselines=["popularity"], resamples=0,
                                published=str(bad)))
    bad.write_text(yaml.safe_dump({"published": {"rows": [{"method": "x", "metric": "auc", "value": "high",
                                                           "test_size": 95}]}}))
    with pytest.raises(ConfigError, match="value must be a finite number"):
        read_published(bad)


def test_the_prompt_shows_the_window_with_liked_marks(tmp_path: Path) -> None:
    run = _tallrec_like(tmp_path)
    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, history_titles=50,
                                 splits=["test"]))
    rows = load_sft_split(run, "test")
    inter = pd.read_parquet(run / schema.INTERACTIONS_FILE)
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    e = examples[examples[schema.SPLIT] == "test"].iloc[0]
    seq = inter[inter[schema.USER] == e[schema.USER]].sort_values(schema.POSITION)
    shown = seq.iloc[e[schema.HISTORY_START]:e[schema.HISTORY_LEN]]
    items = pd.read_parquet(run / schema.ITEMS_FILE).set_index(schema.ITEM)[schema.TITLE]
    expected = "; ".join(f"{items[i]} ({'liked' if liked else 'disliked'})"
                         for i, liked in zip(shown[schema.ITEM], shown[schema.LIKED]))
    text = rows[0]["prompt"][0]["content"][0]["text"]
    assert len(shown) == 10 and f"oldest first: {expected}\n" in text
    assert rows[0]["label"] == e[schema.TARGET_LABEL]


def test_baselines_see_the_window_and_whole_history_stages_refuse_it(tmp_path: Path) -> None:
    run = _tallrec_like(tmp_path)
    data = load_run(RunDir(run))
    ex = data.examples.iloc[:3]
    seqs = history_rows(data, ex["user_code"].to_numpy(), ex[schema.HISTORY_LEN].to_numpy(), 50,
                        ex[schema.HISTORY_START].to_numpy())
    assert (seqs.length == 10).all()
    assert (seqs.start == data.seq_start[ex["user_code"].to_numpy()] + ex[schema.HISTORY_START].to_numpy()).all()
    with pytest.raises(ValueError, match="history window .* msr summarize users reads whole histories"):
        summarize_users(SummarizeConfig(run_dir=str(run), item_model="none", user_model="none"))


def test_a_preset_gives_each_command_its_section(tmp_path: Path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"preset": "P", "data prepare": {"run_dir": "r", "interactions": "a",
                                                                      "items": "b", "split": "users"},
                                      "baselines": {"run_dir": "r", "max_len": 10},
                                      "published": {"rows": []}}))
    cfg = parse_config(PrepareConfig, ["--config", str(preset)], prog="msr data prepare")
    assert cfg.split == "users" and cfg.run_dir == "r"
    with pytest.raises(ConfigError, match=r"a preset without a section for `msr evaluate` \(its sections: baselines, data prepare\)"):
        parse_config(EvaluateConfig, ["--config", str(preset)], prog="msr evaluate")
    np.testing.assert_equal(parse_config(PrepareConfig, ["--config", str(preset), "--split", "samples"],
                                         prog="msr data prepare").split, "samples")


def test_spread_over_seeds_beside_the_interval_over_users(tmp_path: Path) -> None:
    from msr.spread import SpreadConfig, spread

    inter, items = _raw(tmp_path / "raw")
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({"published": {"rows": [
        {"method": "random", "metric": "auc", "value": 0.5, "test_size": 1000},
        {"method": "llm", "metric": "auc", "value": 0.67, "test_size": 1000}]}}))
    runs = []
    for seed in (0, 1, 2):
        run = tmp_path / f"s{seed}"
        prepare(PrepareConfig(run_dir=str(run), format="recbole", interactions=str(inter), items=str(items),
                              user_min=0, item_min=0, split="samples", min_history=10, label_threshold=3,
                              train_samples=5, negatives_train=0, negatives_valid=0, negatives_test=0, seed=seed))
        evaluate(EvaluateConfig(run_dir=str(run), methods=[], baselines=["random", "popularity"], resamples=100,
                                seed=seed))
        runs.append(str(run))
    out = spread(SpreadConfig(runs=runs, out_dir=str(tmp_path / "spread"), published=str(preset)))
    seeds = [json.loads((Path(r) / "metrics.json").read_text())["methods"]["random"]["auc"] for r in runs]
    random_auc = out["methods"]["random"]["auc"]
    assert random_auc["per_seed"] == seeds and random_auc["sd"] == pytest.approx(np.std(seeds, ddof=1))
    assert out["methods"]["popularity"]["auc"]["sd"] == 0  # the split does not move with the seed: only K-shot does
    assert random_auc["mean_interval_width"] > 0
    assert [r["verdicts"] for r in out["published"]][1] == ["not run"] * 3
    assert "| random | auc |" in (tmp_path / "spread" / "spread.md").read_text()
    with pytest.raises(ValueError, match="at least two run directories"):
        spread(SpreadConfig(runs=runs[:1], out_dir=str(tmp_path)))


def test_under_the_users_split_held_out_users_train_nothing(tmp_path: Path) -> None:
    inter, items = _raw(tmp_path / "raw", users=20)
    run = tmp_path / "run"
    prepare(PrepareConfig(run_dir=str(run), format="recbole", interactions=str(inter), items=str(items), user_min=0,
                          item_min=0, split="users", history_window=10, train_targets_per_user=-1, negatives_valid=3,
                          negatives_test=3))
    data = load_run(RunDir(run))
    held = data.examples[data.examples[schema.SPLIT] != "train"]["user_code"].to_numpy()
    train = np.setdiff1d(np.arange(data.n_users), held)
    assert len(held) == 4 and (data.train_len[held] == 0).all()
    assert (data.train_len[train] == data.seq_len[train]).all()
    stamps = pd.read_parquet(run / schema.INTERACTIONS_FILE)
    trained = stamps[stamps[schema.USER].isin(data.users[train])][schema.TIMESTAMP].max()
    assert trained <= data.examples.loc[data.examples[schema.SPLIT] != "train", schema.CUTOFF_TS].min()
