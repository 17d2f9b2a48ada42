"""Item summarizer: every item once, cached, resumable after a kill, invalidated by its prompt."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from msr import schema
from msr.prompts import PROMPT_DIR
from msr.rundir import RunDir
from msr.summarize.backends import TransformersBackend
from msr.summarize.config import SummarizeConfig
from msr.summarize.items import load_item_summaries, summarize_items


def _config(tiny_run: dict, **overrides) -> SummarizeConfig:
    values = dict(run_dir=str(tiny_run["run"]), item_model=tiny_run["vlm"], max_new_tokens=6, batch_size=8)
    values.update(overrides)
    return SummarizeConfig(**values)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / schema.ITEM_SUMMARIES_FILE).read_text().splitlines()]


def test_summarizes_every_item_then_rerun_makes_no_calls(tiny_run: dict) -> None:
    cfg = _config(tiny_run)
    backend = TransformersBackend(cfg.item_model, batch_size=8)
    stats = summarize_items(cfg, backend)
    items = pd.read_parquet(tiny_run["run"] / schema.ITEMS_FILE)
    assert stats["generated"] == backend.calls == len(items)
    no_image = int(items[schema.IMAGE].isna().sum())
    assert no_image > 0 and stats["text_only"] == no_image
    records = _records(tiny_run["run"])
    assert sum(not r["has_image"] for r in records) == no_image
    assert {r["prompt"] for r in records if not r["has_image"]} == {"item_summary_text_only"}
    again = TransformersBackend(cfg.item_model, batch_size=8)
    assert summarize_items(cfg, again)["generated"] == 0 and again.calls == 0
    summaries = load_item_summaries(RunDir(cfg.run_dir), cfg)
    assert set(summaries) == set(items[schema.ITEM])


def test_changed_prompt_regenerates_exactly_its_items(tiny_run: dict, tmp_path: Path) -> None:
    summarize_items(_config(tiny_run))
    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPT_DIR, prompts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (prompts / "item_summary.txt").write_text("Describe the picture of {title}.{description}")
    stats = summarize_items(_config(tiny_run, prompt_dir=str(prompts)))
    with_image = int(pd.read_parquet(tiny_run["run"] / schema.ITEMS_FILE)[schema.IMAGE].notna().sum())
    assert stats["generated"] == with_image and stats["cached"] == stats["items"] - with_image
    assert summarize_items(_config(tiny_run, max_new_tokens=7))["generated"] == stats["items"]


def test_missing_summaries_are_a_clear_error(tiny_run: dict) -> None:
    cfg = _config(tiny_run)
    with pytest.raises(FileNotFoundError, match="run `msr summarize items`"):
        load_item_summaries(RunDir(cfg.run_dir), cfg)


def test_kill_and_resume_loses_and_duplicates_nothing(tiny_run: dict) -> None:
    run = tiny_run["run"]
    cache = run / schema.ITEM_SUMMARIES_FILE
    cmd = [sys.executable, "-m", "msr.cli", "summarize", "items", "--run_dir", str(run), "--item_model",
           tiny_run["vlm"], "--max_new_tokens", "6", "--batch_size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(_records(run))
    n_items = len(pd.read_parquet(run / schema.ITEMS_FILE))
    assert 5 <= done_before < n_items
    cfg = _config(tiny_run, batch_size=1)
    backend = TransformersBackend(cfg.item_model, batch_size=4)
    stats = summarize_items(cfg, backend)
    assert backend.calls == n_items - done_before == stats["generated"]
    keys = [r["key"] for r in _records(run)]
    assert len(keys) == len(set(keys)) == n_items


def test_keys_cover_dtype_4bit_and_max_pixels_and_the_openai_server(tiny_run: dict) -> None:
    import torch

    from msr.summarize.items import item_keys

    run = RunDir(tiny_run["run"])
    items = pd.read_parquet(tiny_run["run"] / schema.ITEMS_FILE)
    with_image = set(items.loc[items[schema.IMAGE].notna(), schema.ITEM])
    base = item_keys(run, _config(tiny_run))
    if not torch.cuda.is_available():  # "auto" is keyed as what it resolves to: float32 on a CPU
        assert item_keys(run, _config(tiny_run, dtype="float32")) == base
    for change in ({"dtype": "bfloat16"}, {"dtype": "float16"}, {"load_in_4bit": True}):
        changed = item_keys(run, _config(tiny_run, **change))
        assert all(changed[i] != base[i] for i in base), change
    capped = item_keys(run, _config(tiny_run, max_pixels=4 * 28 * 28))
    assert {i for i in base if capped[i] != base[i]} == with_image  # the image cap does not touch text-only prompts
    # the HTTP backend: the server's model name and api_base (its weights are remote; nothing is read locally)
    remote = item_keys(run, _config(tiny_run, backend="openai", item_model="org/no-such-local-model",
                                    api_base="http://127.0.0.1:8000/v1"))
    elsewhere = item_keys(run, _config(tiny_run, backend="openai", item_model="org/no-such-local-model",
                                       api_base="http://10.0.0.1:8000/v1"))
    assert all(remote[i] != elsewhere[i] and remote[i] != base[i] for i in base)


def test_max_pixels_regenerates_the_image_items_of_a_qwen_model(tiny_run: dict, tmp_path: Path) -> None:
    from msr.tiny import build_tiny_vlm

    items = pd.read_parquet(tiny_run["run"] / schema.ITEMS_FILE)
    with_image = int(items[schema.IMAGE].notna().sum())
    qwen = str(build_tiny_vlm(tmp_path / "qwen", "qwen2_5_vl", items[schema.TITLE].tolist()))
    cfg = _config(tiny_run, item_model=qwen, max_new_tokens=3, batch_size=16)
    assert summarize_items(cfg)["generated"] == len(items)
    capped = _config(tiny_run, item_model=qwen, max_new_tokens=3, batch_size=16, max_pixels=4 * 28 * 28)
    stats = summarize_items(capped)
    assert stats["generated"] == with_image and stats["cached"] == len(items) - with_image
    assert summarize_items(cfg)["generated"] == 0 == summarize_items(capped)["generated"]
