"""Fixtures that write small raw datasets in each real format (malformed rows included)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from PIL import Image


def write_jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path, format="JPEG")


def write_jsonl(path: Path, rows: list, gz: bool = False, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


@pytest.fixture
def microlens_dir(tmp_path: Path) -> Path:
    """MicroLens layout: 3 users x 4 of 5 items, a timestamp tie (user 2), a malformed pair row, a
    bad timestamp, a title with a comma and a newline, a corrupt cover (12), missing covers (13, 14)."""
    root = tmp_path / "microlens"
    root.mkdir()
    (root / "pairs.csv").write_text(
        "user,item,timestamp\n"
        "1,10,1000\n1,11,2000\n1,12,3000\n1,13,4000\n"
        "2,10,1500\n2,12,2500\n2,13,2500\n2,11,3500\n"
        "3,11,1000\n3,10,1100\n3,13,1200\n3,14,1300\n"
        "3,12\n"            # too few fields
        "4,10,yesterday\n"  # not a timestamp
    )
    (root / "titles.csv").write_text(
        'item,title\n10,"Red, shiny mug"\n11,"Lamp\nwith two lines"\n12,Poster\n13,Hat\n14,Scarf\n')
    covers = root / "covers"
    write_jpeg(covers / "10.jpg")
    write_jpeg(covers / "11.jpg", (0, 0, 255))
    (covers / "12.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root
