"""Helpers the tests import (a plain module: `from conftest import` would resolve to whichever of
the several conftest.py files pytest loaded last)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from PIL import Image

from msr.cli import main


def write_jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path, format="JPEG")


def write_jsonl(path: Path, rows: list, gz: bool = False, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


NO_SUMMARIES = ["--user_summary", "false", "--candidate_summary", "false"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *named: str) -> str:
    """Exit 2, exactly one `msr: error:` line naming each of `named`, and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("msr: error:")]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err, err
    for name in named:
        assert name in lines[0], lines[0]
    return lines[0]
