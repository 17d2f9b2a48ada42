"""The `msr` command lists its stages, and the quickstart runs the stages that exist, resumably."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from msr import schema
from msr.cli import COMMANDS, main


def test_help_lists_stages() -> None:
    out = subprocess.run([sys.executable, "-m", "msr.cli", "--help"], capture_output=True, text=True, check=True)
    for stage in ("quickstart", "data", "tiny"):
        assert stage in out.stdout
    out = subprocess.run([sys.executable, "-m", "msr.cli", "data", "prepare", "--help"], capture_output=True,
                         text=True, check=True)
    assert "--user_min" in out.stdout and "--config" in out.stdout


@pytest.mark.parametrize("words", [words for words, _, _ in COMMANDS], ids=" ".join)
def test_every_stage_prints_its_help(words: tuple[str, ...], capsys: pytest.CaptureFixture) -> None:
    """A help string with a bare % (argparse formats them) crashes --help: every stage's help must print."""
    with pytest.raises(SystemExit) as stop:
        main([*words, "--help"])
    assert stop.value.code == 0 and f"usage: msr {' '.join(words)}" in capsys.readouterr().out


def test_bad_key_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "prepare", "--run_dir", str(tmp_path), "--interactions", "a", "--items", "b",
                 "--user_mim", "3"]) == 2
    assert "--user_mim" in capsys.readouterr().err
    assert main(["tiny", "--out_dir", str(tmp_path), "--family", "qwen"]) == 2


@pytest.mark.parametrize("error, shown", [
    (PermissionError(13, "Permission denied", "/data/run/x.parquet"),
     "msr: error: /data/run/x.parquet: permission denied; check that path"),
    (IsADirectoryError(21, "Is a directory", "/data/out.json"), "msr: error: /data/out.json: is a directory"),
    (ValueError("split: 'dev' is not one of\ntrain, valid, test"), "msr: error: split: 'dev' is not one of train, "),
])
def test_user_errors_are_one_line_and_bugs_keep_their_traceback(error: Exception, shown: str, monkeypatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    import msr.cli

    def fail(argv):
        raise error

    def bug(argv):
        raise KeyError("a bug")

    monkeypatch.setattr(msr.cli, "COMMANDS", [(("fail",), "fails", fail), (("bug",), "a bug", bug)])
    assert main(["fail"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(shown)
    with pytest.raises(KeyError):  # not a user error: the traceback is shown
        main(["bug"])


@pytest.mark.slow
def test_quickstart_runs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """Reduced, on the recipes' default family (Qwen2.5-VL, M-RoPE, scored with prefix reuse; the full-size test
    below runs the quickstart's default, LLaVA-1.5): every stage, then a no-op re-run, then a retrain."""
    run = tmp_path / "qs"
    args = ["quickstart", "--run_dir", str(run), "--num_users", "40", "--num_items", "40", "--epochs", "2",
            "--family", "qwen2_5_vl"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert not [r for r in caplog.records if "no prefix reuse" in r.getMessage()]
    printed = capsys.readouterr().out
    assert "msr quickstart: done" in printed and "| popularity |" in printed
    assert json.loads((run / "models" / "vlm" / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert type(AutoProcessor.from_pretrained(run / "sft_model")).__name__ == "Qwen2_5_VLProcessor"
    metrics = json.loads((run / "metrics.json").read_text())["methods"]
    assert set(metrics) == {"sft", "zero_shot", "graph", "sasrec", "gru4rec", "random", "popularity", "oracle"}
    assert all(0 <= m["auc"] <= 1 for m in metrics.values())
    assert metrics["sft"]["compared_to"] in ("sasrec", "gru4rec", "popularity", "random")
    full = json.loads((run / "metrics.json").read_text())["full_ranking"]
    assert full["retriever"] == "sasrec" and set(full["methods"]) == {"sasrec", "sft"}
    assert "## Full ranking" in printed
    assert metrics["oracle"]["auc"] > 0.8
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    assert set(examples[schema.SPLIT]) == {"train", "valid", "test"}
    assert AutoModelForImageTextToText.from_pretrained(run / "models" / "vlm") is not None
    assert AutoModelForCausalLM.from_pretrained(run / "models" / "lm") is not None
    card = (run / "sft_model" / "README.md").read_text(encoding="utf-8")
    assert "## Evaluation: test split" in card and "| graph |" in card
    stamps = {name: (run / name).stat().st_mtime_ns for name in (
        "models/vlm/config.json", "sft_model/model.safetensors", "graph/model.safetensors",
        "baselines/sasrec/model.safetensors")}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert {name: (run / name).stat().st_mtime_ns for name in stamps} == stamps
    printed = capsys.readouterr().out
    assert "| graph |" in printed
    # everything current: no model is loaded and checking costs well under 5 s of pipeline time
    assert not [r for r in caplog.records if r.name == "msr.models" and "loaded" in r.getMessage()]
    assert float(re.search(r"msr quickstart: done in ([0-9.]+)s", printed).group(1)) < 5
    # other training settings retrain from scratch instead of resuming the old checkpoint
    weights = (run / "sft_model" / "model.safetensors").read_bytes()
    assert main([*args[:-3], "1", *args[-2:]]) == 0
    assert (run / "sft_model" / "model.safetensors").read_bytes() != weights


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 4 to 7 minutes on 2 cores, depending on the machine's day
def test_quickstart_models_beat_popularity(tmp_path: Path) -> None:
    """The README's claim, at the quickstart's full default size."""
    assert main(["quickstart", "--run_dir", str(tmp_path / "qs")]) == 0
    metrics = json.loads((tmp_path / "qs" / "metrics.json").read_text())["methods"]
    auc = {name: values["auc"] for name, values in metrics.items()}
    assert auc["sft"] > auc["popularity"] + 0.1 and auc["sft"] > auc["zero_shot"] + 0.1, auc
    assert auc["graph"] > auc["popularity"] + 0.1, auc
    assert metrics["sft"]["ndcg@5"] > metrics["popularity"]["ndcg@5"], metrics
