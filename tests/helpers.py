"""Helpers the tests import (a plain module: `from conftest import` would resolve to whichever of
the several conftest.py files pytest loaded last)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from PIL import Image


def write_jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path, format="JPEG")


def write_jsonl(path: Path, rows: list, gz: bool = False, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path
