"""`msr score`: every candidate of a split scored with training's prompt settings, resumably."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from msr import schema
from msr.data.sft import SftDataConfig, write_sft_rows
from msr.rundir import write_parquet
from msr.score_split import ScoreConfig, score_split


def write_retrieval(run: Path, file: str = "retrieval.parquet", depth: int = 5, reverse: bool = False) -> pd.DataFrame:
    """A hand-made retrieval table for the test split: per example, `depth` items outside its history in item-id
    order (reversed with `reverse`), with its target at rank 2 in every other example (examples 0, 2, 4, ...)
    and nowhere in the others."""
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    examples = examples[examples[schema.SPLIT] == schema.TEST].reset_index(drop=True)
    sequences = pd.read_parquet(run / schema.INTERACTIONS_FILE).groupby(schema.USER)[schema.ITEM].agg(list)
    catalog = sorted(pd.read_parquet(run / schema.ITEMS_FILE)[schema.ITEM], reverse=reverse)
    rows = []
    for n, e in enumerate(examples.to_dict("records")):
        seen = set(sequences[e[schema.USER]][:e[schema.HISTORY_LEN]]) | {e[schema.TARGET]}
        others = [item for item in catalog if item not in seen][:depth]
        items = [others[0], e[schema.TARGET], *others[1:depth - 1]] if n % 2 == 0 else others
        rows += [(e[schema.USER], e[schema.HISTORY_LEN], item, float(depth - r), r + 1) for r, item in enumerate(items)]
    table = pd.DataFrame(rows, columns=[schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.SCORE, schema.RANK])
    write_parquet(run / file, pa.Table.from_pandas(table, preserve_index=False))
    return table


@pytest.fixture
def scored_run(tiny_run: dict) -> dict:
    write_sft_rows(SftDataConfig(run_dir=str(tiny_run["run"]), user_summary=False, candidate_summary=False,
                                 history_titles=3, splits=["train"]))
    return tiny_run


def test_scores_every_candidate_and_resumes(scored_run: dict) -> None:
    run = Path(scored_run["run"])
    cfg = ScoreConfig(run_dir=str(run), model=scored_run["vlm"], device="cpu", dtype="float32", max_examples=3)
    assert len(score_split(cfg)) > 0
    (shard,) = run.glob("scores.*.0.jsonl")
    assert len(shard.read_text().splitlines()) == 3
    cfg.max_examples = None
    table = score_split(cfg)  # resumes: the 3 scored examples are not scored again
    keys = [json.loads(line)["key"] for line in shard.read_text().splitlines()]
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    test = examples[examples[schema.SPLIT] == "test"]
    assert len(keys) == len(set(keys)) == len(test)
    assert len(table) == sum(1 + len(n) for n in test[schema.NEGATIVES])
    per_example = table.groupby([schema.USER, schema.HISTORY_LEN])[schema.LABEL].agg(["sum", "size"])
    assert (per_example["sum"] == 1).all()
    assert table[schema.P_YES].between(0, 1).all()
    assert pd.read_parquet(run / "scores.parquet").equals(table)


def test_needs_the_sft_stage(tiny_run: dict) -> None:
    with pytest.raises(FileNotFoundError, match="msr data sft"):
        score_split(ScoreConfig(run_dir=str(tiny_run["run"]), model=tiny_run["vlm"]))


def test_a_changed_adapter_is_scored_afresh(scored_run: dict, tmp_path: Path) -> None:
    run = Path(scored_run["run"])
    cfg = ScoreConfig(run_dir=str(run), model=scored_run["vlm"], device="cpu", dtype="float32", max_examples=2)
    base = score_split(cfg)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(scored_run["vlm"])
    adapted = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    cfg.adapter = str(tmp_path / "adapter")
    changed = score_split(cfg)
    assert len(list(run.glob("scores.*.0.jsonl"))) == 2  # a second fingerprint, not the old records
    assert not np.allclose(changed[schema.P_YES], base[schema.P_YES])


def test_scores_the_retrieved_items_and_a_new_retrieval_afresh(scored_run: dict) -> None:
    run = Path(scored_run["run"])
    retrieval = write_retrieval(run)
    cfg = ScoreConfig(run_dir=str(run), model=scored_run["vlm"], device="cpu", dtype="float32",
                      candidates="retrieval.parquet", output="rerank.parquet", max_examples=6)
    table = score_split(cfg)
    assert list(table.columns) == [schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.LABEL, schema.P_YES]
    key = [schema.USER, schema.HISTORY_LEN, schema.ITEM]
    first_six = retrieval.iloc[:30][key].sort_values(key).reset_index(drop=True)  # 6 examples x 5 items
    assert table[key].sort_values(key).reset_index(drop=True).equals(first_six)
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    targets = dict(zip(zip(examples[schema.USER], examples[schema.HISTORY_LEN]), examples[schema.TARGET]))
    assert table[schema.LABEL].tolist() == [int(targets[(u, h)] == i) for u, h, i in zip(*(table[c] for c in key))]
    positives = table.groupby([schema.USER, schema.HISTORY_LEN])[schema.LABEL].sum()
    assert sorted(positives.value_counts().to_dict().items()) == [(0, 3), (1, 3)]  # half the targets retrieved
    write_retrieval(run, reverse=True)  # another retrieval: scored afresh, not served from the old records
    again = score_split(cfg)
    assert len(list(run.glob("rerank.*.0.jsonl"))) == 2
    assert set(again[schema.ITEM]) != set(table[schema.ITEM])


def test_a_retrieval_table_must_list_every_example_and_be_well_formed(scored_run: dict) -> None:
    run = Path(scored_run["run"])
    retrieval = write_retrieval(run)
    cfg = ScoreConfig(run_dir=str(run), model=scored_run["vlm"], device="cpu", candidates="retrieval.parquet")
    first_two = retrieval[schema.USER].isin(retrieval[schema.USER].unique()[:2])
    write_parquet(run / "retrieval.parquet", pa.Table.from_pandas(retrieval[~first_two], preserve_index=False))
    with pytest.raises(ValueError, match=r"retrieval.parquet: 2 of 40 examples have no retrieved items"):
        score_split(cfg)
    write_parquet(run / "retrieval.parquet", pa.Table.from_pandas(retrieval.drop(columns=schema.RANK),
                                                                  preserve_index=False))
    with pytest.raises(ValueError, match="not a retrieval table, it lacks rank"):
        score_split(cfg)
    twice = pd.concat([retrieval, retrieval.iloc[[0]].assign(**{schema.RANK: 99})])
    write_parquet(run / "retrieval.parquet", pa.Table.from_pandas(twice, preserve_index=False))
    with pytest.raises(ValueError, match=r"2 rows share their \(user_id, history_len, item_id\)"):
        score_split(cfg)


@pytest.mark.slow
def test_two_processes_share_the_examples_and_the_main_one_merges(scored_run: dict) -> None:
    run, model = Path(scored_run["run"]), scored_run["vlm"]
    # torchrun is what `accelerate launch` runs for several GPUs; on a CPU it gives the gloo path
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "msr.cli", "score", "--run_dir", str(run), "--model", model, "--device", "cpu", "--dtype", "float32",
               "--output", "two.parquet"]
    done = subprocess.run(command, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shards = [{json.loads(line)["key"] for line in path.read_text().splitlines()}
              for path in sorted(run.glob("two.*.jsonl"))]
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    assert len(shards) == 2 and shards[0] and shards[1] and not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == int((examples[schema.SPLIT] == "test").sum())
    merged = pd.read_parquet(run / "two.parquet")
    single = score_split(ScoreConfig(run_dir=str(run), model=model, device="cpu", dtype="float32", output="one.parquet"))
    assert merged[[schema.USER, schema.HISTORY_LEN, schema.ITEM]].equals(single[[schema.USER, schema.HISTORY_LEN,
                                                                                  schema.ITEM]])
    assert np.allclose(merged[schema.P_YES], single[schema.P_YES], atol=1e-5)


def test_scoring_is_bound_to_what_the_adapter_was_trained_on(scored_run: dict, tmp_path: Path) -> None:
    """`msr score --adapter` takes max_pixels from the adapter's training record, refuses a contradicting value,
    rows rebuilt with other prompt settings, and rows whose content changed since training."""
    from trl import ModelConfig, SFTConfig

    from msr.tiny import build_tiny_vlm
    from msr.train import SftScriptArguments, train

    run = Path(scored_run["run"])
    model = str(build_tiny_vlm(tmp_path / "qwen", "qwen2_5_vl", ["a red hat"]))
    pixels = 4 * 28 * 28
    adapter = train(SftScriptArguments(run_dir=str(run), eval_split=None, max_train_rows=4, max_pixels=pixels),
                    SFTConfig(output_dir=str(tmp_path / "adapter"), use_cpu=True, bf16=False, max_length=None,
                              max_steps=1, per_device_train_batch_size=4, save_strategy="no", report_to="none"),
                    ModelConfig(model_name_or_path=model, dtype="float32", use_peft=True, lora_r=4, lora_alpha=8))
    cfg = ScoreConfig(run_dir=str(run), model=model, adapter=str(adapter), device="cpu", max_examples=1)
    score_split(cfg)
    recorded = json.loads((run / schema.MANIFEST_FILE).read_text())["stages"]["score.scores.parquet"]["config"]
    assert recorded["max_pixels"] == pixels  # as trained, though not given
    with pytest.raises(ValueError, match=rf"max_pixels: 6272 contradicts the {pixels} that .* was trained with"):
        score_split(ScoreConfig(run_dir=str(run), model=model, adapter=str(adapter), max_pixels=6272))
    settings = dict(run_dir=str(run), user_summary=False, candidate_summary=False, splits=["train"])
    write_sft_rows(SftDataConfig(**settings, history_titles=5))
    with pytest.raises(ValueError, match=r"prompt settings changed since .* \(history_titles: 3 when trained, 5 now\)"):
        score_split(ScoreConfig(run_dir=str(run), model=model, adapter=str(adapter)))
    items = pd.read_parquet(run / schema.ITEMS_FILE)
    items[schema.TITLE] = items[schema.TITLE] + " (2nd edition)"
    write_parquet(run / schema.ITEMS_FILE, pa.Table.from_pandas(items, preserve_index=False))
    write_sft_rows(SftDataConfig(**settings, history_titles=3))
    with pytest.raises(ValueError, match=r"sft/train changed since .* was trained on it"):
        score_split(ScoreConfig(run_dir=str(run), model=model, adapter=str(adapter)))
