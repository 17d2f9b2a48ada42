"""Atomic writes, the stage manifest, and the append-only log that survives a kill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from msr import schema
from msr.rundir import JsonlLog, RunDir, atomic_path, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_json(target, {"b": 1, "a": 2})
    assert json.loads(target.read_text()) == {"a": 2, "b": 1}


def test_manifest_current_only_with_same_hash_and_outputs(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (run.path("x.txt")).write_text("x")
    assert not run.is_current("s", "h1")
    run.record("s", "h1", {"k": 1}, ["x.txt"])
    assert run.is_current("s", "h1") and not run.is_current("s", "h2")
    run.path("x.txt").unlink()
    assert not run.is_current("s", "h1")
    with pytest.raises(FileNotFoundError, match="x.txt"):
        run.require("x.txt")


def test_jsonl_log_resumes_and_drops_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path, key="id")
    log.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with path.open("ab") as f:
        f.write(b'{"id": "c", "v"')  # a kill in the middle of a write
    again = JsonlLog(path, key="id")
    assert set(again.records) == {"a", "b"} and again.torn_lines == 1
    again.append([{"id": "c", "v": 3}])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]


def test_jsonl_log_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    script = (f"from msr.rundir import JsonlLog\nlog = JsonlLog({str(path)!r}, 'id')\n"
              "for i in range(1000):\n    log.append([{'id': str(i)}])\n    if i == 41: import os; os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    log = JsonlLog(path, key="id")
    assert len(log) == 42 and log.torn_lines == 0


def test_require_names_the_command_that_writes_a_missing_input(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"user_summaries.parquet, sft/train; .*\(`msr summarize users`, "
                                                r"`msr data sft`\)"):
        run.require(schema.USER_SUMMARIES_FILE, f"{schema.SFT_DIR}/train")
