"""Every figure `msr evaluate` reports comes from the files the run holds now: scores of a model or adapter changed
since are refused, a target tied at a retrieval list's cut is not retrieved, negatives are never the user's own items
(also under a length cap), training refuses stale rows, `--eval_split null` means none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from trl import ModelConfig, SFTConfig, TrlParser

from msr import schema
from msr.baselines.config import BaselineConfig
from msr.baselines.pipeline import evaluate_baseline
from msr.data.prepare import PrepareConfig, prepare
from msr.data.sft import SftDataConfig, write_sft_rows
from msr.data.synthetic import COVERS_DIR, PAIRS_FILE, TITLES_FILE, SynthConfig, generate
from msr.evaluate import EvaluateConfig, evaluate
from msr.graph.ranking import rank_all
from msr.score_split import ScoreConfig, score_split
from msr.tiny import build_tiny_vlm
from msr.train import SftScriptArguments, build_trainer, train

ROWS = dict(user_summary=False, candidate_summary=False, history_titles=3)


def _titles(run: Path) -> list[str]:
    return pd.read_parquet(run / schema.ITEMS_FILE)[schema.TITLE].tolist()


def test_scores_of_a_model_rebuilt_in_place_are_refused(tiny_run: dict, tmp_path: Path) -> None:
    run = Path(tiny_run["run"])
    write_sft_rows(SftDataConfig(run_dir=str(run), splits=["train"], **ROWS))
    model = shutil.copytree(tiny_run["vlm"], tmp_path / "vlm")
    score_split(ScoreConfig(run_dir=str(run), model=str(model), device="cpu"))
    check = EvaluateConfig(run_dir=str(run), methods=["zero_shot=scores.parquet"], resamples=0)
    evaluate(check)
    (model / "README.md").write_text("# a model card, edited beside the weights")  # not part of the model
    evaluate(check)
    build_tiny_vlm(model, "llava", _titles(run), seed=5)  # other weights, the same folder
    with pytest.raises(ValueError, match=r"input model \(.*vlm\) changed.*msr score --output scores\.parquet"):
        evaluate(check)


def test_scores_of_an_adapter_retrained_in_place_are_refused(tiny_run: dict, tmp_path: Path) -> None:
    run = Path(tiny_run["run"])
    write_sft_rows(SftDataConfig(run_dir=str(run), splits=["train"], **ROWS))

    def fit(learning_rate: float) -> Path:
        return train(SftScriptArguments(run_dir=str(run), eval_split=None, max_train_rows=8),
                     SFTConfig(output_dir=str(tmp_path / "adapter"), use_cpu=True, bf16=False, max_length=None,
                               max_steps=1, per_device_train_batch_size=8, learning_rate=learning_rate,
                               save_strategy="no", report_to="none"),
                     ModelConfig(model_name_or_path=tiny_run["vlm"], dtype="float32", use_peft=True, lora_r=4,
                                 lora_alpha=8), restart_if_changed=True)

    adapter = fit(1e-2)
    score_split(ScoreConfig(run_dir=str(run), model=tiny_run["vlm"], adapter=str(adapter), device="cpu"))
    check = EvaluateConfig(run_dir=str(run), methods=["sft=scores.parquet"], resamples=0, model_card=str(adapter))
    evaluate(check)
    evaluate(check)  # the model card that evaluate wrote into the adapter folder changes nothing
    fit(5e-3)  # the everyday case: retrained into the same output_dir
    with pytest.raises(ValueError, match=r"input adapter \(.*adapter\) changed"):
        evaluate(check)


def test_a_tie_across_the_cut_is_counted_left_out() -> None:
    import scipy.sparse as sp

    scores = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    top = rank_all(lambda lo, hi: scores[lo:hi], sp.csr_matrix((3, 5)), k=2).top
    assert top.items.tolist() == [0, 1, 0, 1, 0, 1]  # the lower codes fill a tied cut, deterministically
    assert top.tied_out.tolist() == [2, 2, 0, 0, 3, 3]  # and the list says how many tied items it left out


def test_a_target_tied_at_the_retrieval_cut_is_not_retrieved(tiny_run: dict) -> None:
    """Popularity (integer counts, many ties): its full-ranking recall at K = depth, as `msr evaluate` computes it
    from the retrieval list, equals popularity's own ranking over the whole catalog, where a tied target ranks
    below every item it ties with."""
    run = Path(tiny_run["run"])
    depth = 5
    evaluate_baseline(BaselineConfig(run_dir=str(run), model="popularity", ks=[depth], retrieve_k=depth))
    listed = pd.read_parquet(run / "popularity_retrieval.parquet")
    assert (listed[schema.TIED_OUT] > 0).any()  # the case at hand: ties cross the cut
    full = evaluate(EvaluateConfig(run_dir=str(run), methods=["popularity_model=popularity_scores.parquet"],
                                   retrieval="popularity=popularity_retrieval.parquet", full_ks=[depth],
                                   resamples=0))["full_ranking"]
    own = json.loads((run / "baselines" / "popularity" / "metrics.json").read_text())
    expected = own["test"][f"recall@{depth}"]
    assert full["methods"]["popularity"][f"recall@{depth}"] == pytest.approx(expected)
    assert full["target_retrieved"] == pytest.approx(expected)


def test_negatives_are_never_items_consumed_before_the_length_cap(tmp_path: Path) -> None:
    raw = generate(SynthConfig(out_dir=str(tmp_path / "raw"), num_users=40, num_items=60, seed=2, min_seq_len=25,
                               max_seq_len=40))
    run = tmp_path / "run"
    prepare(PrepareConfig(run_dir=str(run), interactions=str(raw / PAIRS_FILE), items=str(raw / TITLES_FILE),
                          image_dir=str(raw / COVERS_DIR), max_seq_len=8, negatives_valid=5, negatives_test=20,
                          train_targets_per_user=2))
    pairs = pd.read_csv(raw / PAIRS_FILE, dtype=str)
    consumed = pairs.groupby("user")["item"].agg(set).to_dict()
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    capped = pd.read_parquet(run / schema.INTERACTIONS_FILE).groupby(schema.USER).size()
    assert (capped == 8).all() and (pairs.groupby("user").size() > 8).all()  # the cap cut every sequence
    clashes = sum(len(set(e[schema.NEGATIVES]) & consumed[e[schema.USER]]) for e in examples.to_dict("records"))
    assert clashes == 0


def test_training_refuses_rows_older_than_what_they_were_made_from(tiny_run: dict, tmp_path: Path) -> None:
    run = Path(tiny_run["run"])
    write_sft_rows(SftDataConfig(run_dir=str(run), splits=["train"], **ROWS))
    items = pd.read_parquet(run / schema.ITEMS_FILE)
    items[schema.TITLE] = items[schema.TITLE] + " (new edition)"
    items.to_parquet(run / schema.ITEMS_FILE, index=False)
    args = (SftScriptArguments(run_dir=str(run), eval_split=None),
            SFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, max_length=None, report_to="none"),
            ModelConfig(model_name_or_path=tiny_run["vlm"], dtype="float32"))
    with pytest.raises(ValueError, match=r"data\.sft is not current \(input items .* changed\); re-run `msr data sft"):
        build_trainer(*args)


def test_eval_split_null_on_the_command_line_means_none(tmp_path: Path) -> None:
    parser = TrlParser((SftScriptArguments, SFTConfig, ModelConfig))
    script, _, _ = parser.parse_args_and_config(args=[
        "--run_dir", str(tmp_path), "--eval_split", "null", "--output_dir", str(tmp_path / "out"),
        "--model_name_or_path", "x", "--use_cpu", "true", "--bf16", "false"])
    assert script.eval_split is None
    assert SftScriptArguments(run_dir=".", eval_split="valid").eval_split == "valid"
