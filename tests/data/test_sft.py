"""SFT rows: one row per (example, candidate), built by the one prompt function, from the past only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from msr import schema
from msr.data.sft import CandidatePrompts, SftDataConfig, candidates, load_sft_split, write_sft_rows
from msr.rundir import RunDir
from msr.summarize.config import SummarizeConfig
from msr.summarize.items import summarize_items
from msr.summarize.users import summarize_users


def test_rows_match_examples_and_the_shared_prompt(tiny_run: dict) -> None:
    summarize = SummarizeConfig(run_dir=str(tiny_run["run"]), item_model=tiny_run["vlm"],
                                user_model=tiny_run["lm"], max_new_tokens=4, batch_size=32)
    summarize_items(summarize)
    summarize_users(summarize)
    cfg = SftDataConfig(run_dir=str(tiny_run["run"]), history_titles=2)
    counts = write_sft_rows(cfg)
    run = RunDir(cfg.run_dir)
    examples = pd.read_parquet(run.path(schema.EXAMPLES_FILE))
    prompts = CandidatePrompts(run, cfg)
    inter = pd.read_parquet(run.path(schema.INTERACTIONS_FILE))
    for split in ("train", "valid"):
        rows = load_sft_split(cfg.run_dir, split)
        chosen = examples[examples[schema.SPLIT] == split].to_dict("records")
        expected = [(e, item, label) for e in chosen for item, label in candidates(e)]
        assert counts[split] == len(rows) == len(expected)
        for row, (example, item, label) in zip(rows, expected):
            assert (row[schema.USER], row[schema.ITEM], row[schema.LABEL]) == (example[schema.USER], item, label)
            assert row["completion"][0]["content"][0]["text"] == ("Yes" if label else "No")
            messages, image = prompts.messages(example[schema.USER], example[schema.HISTORY_LEN], item)
            stored = [{k: v for k, v in part.items() if v is not None} for part in row["prompt"][0]["content"]]
            assert stored == messages[0]["content"]
            assert len(row["images"]) == (1 if image else 0)
            assert [p["type"] for p in stored] == ["text", "image", "text"] if image else ["text", "text"]
        # the history titles shown are exactly the two interactions before the cutoff
        example = chosen[0]
        seq = inter[inter[schema.USER] == example[schema.USER]].sort_values(schema.POSITION)
        h = example[schema.HISTORY_LEN]
        titles = [prompts.titles[i] for i in seq[schema.ITEM].iloc[h - 2:h]]
        user_part = rows[0]["prompt"][0]["content"][0]["text"]
        assert user_part.endswith(f"oldest first: {'; '.join(titles)}\n")
    assert write_sft_rows(cfg) == counts  # current: skipped


def test_without_summaries_and_clear_errors(tiny_run: dict) -> None:
    cfg = SftDataConfig(run_dir=str(tiny_run["run"]), user_summary=False, candidate_summary=False, splits=["test"])
    counts = write_sft_rows(cfg)
    examples = pd.read_parquet(Path(cfg.run_dir) / schema.EXAMPLES_FILE)
    test = examples[examples[schema.SPLIT] == "test"]
    assert counts["test"] == sum(1 + len(n) for n in test[schema.NEGATIVES])
    content = load_sft_split(cfg.run_dir, "test")[0]["prompt"][0]["content"]
    assert [p["type"] for p in content][-1] == "text" and content[0]["type"] != "text"  # no user part at all
    assert "Description:" not in content[-1]["text"]
    with pytest.raises(FileNotFoundError, match="user_summaries.parquet"):
        write_sft_rows(SftDataConfig(run_dir=str(tiny_run["run"]), candidate_summary=False))
    with pytest.raises(ValueError, match="splits"):
        write_sft_rows(SftDataConfig(run_dir=str(tiny_run["run"]), splits=["dev"]))
