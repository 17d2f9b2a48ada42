"""`msr score`: every candidate of a split scored with training's prompt settings, resumably."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msr import schema
from msr.data.sft import SftDataConfig, write_sft_rows
from msr.score_split import ScoreConfig, score_split


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
