"""`msr baselines train|evaluate` on run directories: what they learn and write, skipping, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msr import schema
from msr.baselines.pipeline import evaluate_baseline, train_baseline
from msr.cli import main
from msr.evaluate import EvaluateConfig, candidate_table, evaluate
from msr.graph.data import load_run
from msr.rundir import RunDir
from tests.baselines.conftest import small_config


@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_both_learn_a_fixed_cycle_and_rank_the_true_next_item_first(cycle_run: Path, model: str) -> None:
    cfg = small_config(cycle_run, model)
    record = train_baseline(cfg)
    assert record["best"] == 1.0 and record["epoch"] == record["best_epoch"] + cfg.patience
    metrics = evaluate_baseline(cfg)
    assert metrics["valid"]["recall@1"] == metrics["test"]["recall@1"] == 1.0
    assert json.loads((cycle_run / "baselines" / model / "metrics.json").read_text()) == metrics


def _history_sets(run: Path) -> dict[tuple[str, int], set[str]]:
    inter = pd.read_parquet(run / schema.INTERACTIONS_FILE)
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    seqs = inter.groupby(schema.USER)[schema.ITEM].apply(list).to_dict()
    return {(u, h): set(seqs[u][:h]) for u, h in zip(examples[schema.USER], examples[schema.HISTORY_LEN])}


def test_outputs_match_the_candidates_and_msr_evaluate_reads_them(tiny_run: dict) -> None:
    run = Path(tiny_run["run"])
    cfg = small_config(run, max_epochs=3, ks=[5, 10], max_len=50)
    train_baseline(cfg)
    metrics = evaluate_baseline(cfg)

    scores = pd.read_parquet(run / "sasrec_scores.parquet")
    assert list(scores.columns) == [schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.LABEL, schema.SCORE]
    expected = pd.concat([candidate_table(RunDir(run), s) for s in (schema.VALID, schema.TEST)], ignore_index=True)
    pd.testing.assert_frame_equal(scores.drop(columns=[schema.SCORE]), expected.drop(columns=[schema.CUTOFF_TS]))
    assert np.isfinite(scores[schema.SCORE]).all()
    result = evaluate(EvaluateConfig(run_dir=str(run), methods=["sasrec=sasrec_scores.parquet"], baselines=["random"]))
    assert list(result["methods"]) == ["sasrec", "random"]

    retrieved = pd.read_parquet(run / "sasrec_retrieval.parquet")
    assert list(retrieved.columns) == [schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.SCORE, schema.RANK,
                                        schema.TIED_OUT]
    histories = _history_sets(run)
    data = load_run(RunDir(run))
    held_out = data.examples[data.examples[schema.SPLIT] != schema.TRAIN]
    hits = {split: [] for split in (schema.VALID, schema.TEST)}
    for example in held_out.itertuples():
        key = (getattr(example, schema.USER), getattr(example, schema.HISTORY_LEN))
        rows = retrieved[(retrieved[schema.USER] == key[0]) & (retrieved[schema.HISTORY_LEN] == key[1])]
        assert rows[schema.RANK].tolist() == [1, 2, 3, 4, 5]  # K rows, in rank order ...
        assert rows[schema.SCORE].is_monotonic_decreasing  # ... which is score order
        assert not set(rows[schema.ITEM]) & histories[key]
        hits[getattr(example, schema.SPLIT)].append(getattr(example, schema.TARGET) in set(rows[schema.ITEM]))
    for split, found in hits.items():  # the lists agree with the full ranking: a target is in iff rank <= 5
        assert np.mean(found) == pytest.approx(metrics[split]["recall@5"])


def _stamps(run: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.suffix in (".json", ".parquet",
                                                                                           ".safetensors")}


def test_rerun_is_a_no_op_and_a_changed_setting_retrains(cycle_run: Path) -> None:
    cfg = small_config(cycle_run, "gru4rec", max_epochs=2)
    train_baseline(cfg)
    evaluate_baseline(cfg)
    stamps = _stamps(cycle_run)
    assert train_baseline(cfg)["epoch"] == 2 and evaluate_baseline(cfg)["test"]["examples"] == 24
    assert _stamps(cycle_run) == stamps

    changed = small_config(cycle_run, "gru4rec", max_epochs=2, hidden_size=16)
    with pytest.raises(FileNotFoundError, match="msr baselines train"):
        evaluate_baseline(changed)  # the saved model was trained with other settings
    train_baseline(changed)
    state = cycle_run / "baselines" / "gru4rec" / "state.json"
    assert state.stat().st_mtime_ns != stamps[state]
    evaluate_baseline(changed)
    assert (cycle_run / "gru4rec_scores.parquet").stat().st_mtime_ns != stamps[cycle_run / "gru4rec_scores.parquet"]


def test_cli_train_then_evaluate(cycle_run: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--run_dir", str(cycle_run), "--model", "gru4rec", "--max_epochs", "1", "--hidden_size", "8",
            "--output", "gru_scores.parquet"]
    assert main(["baselines", "evaluate", *args]) == 2
    assert "msr baselines train" in capsys.readouterr().err
    assert main(["baselines", "train", *args]) == 0
    assert main(["baselines", "evaluate", *args]) == 0
    assert '"test"' in capsys.readouterr().out
    assert (cycle_run / "gru_scores.parquet").is_file() and (cycle_run / "gru_retrieval.parquet").is_file()
    assert (cycle_run / "baselines" / "gru" / "model.safetensors").is_file()
    assert main(["baselines", "train", *args, "--loss", "hinge"]) == 2
