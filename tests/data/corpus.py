"""The bad-input corpus's shared parts: one dataset layout per reader format, and the two classes a
case can end in (`Kept`: read, n interactions kept with exactly these drop counts; `Fails`: a ValueError
naming the file, matching a pattern)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from msr import schema
from msr.data.loaders import read_dataset
from msr.data.prepare import PrepareConfig, prepare

GOOD = [("u1", "10", 1000), ("u1", "11", 2000), ("u2", "12", 3000)]
TEXT_FORMATS = ("microlens", "amazon2018", "amazon2023", "generic_csv")
CSV_FORMATS = ("microlens", "generic_csv")
JSON_FORMATS = ("amazon2018", "amazon2023")
REVIEW_KEYS = {"amazon2018": ("reviewerID", "asin", "unixReviewTime"),
               "amazon2023": ("user_id", "parent_asin", "timestamp")}
META_KEY = {"amazon2018": "asin", "amazon2023": "parent_asin", "generic_csv": "id", "generic_parquet": "id"}


@dataclass(frozen=True)
class Kept:
    n: int
    counts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Fails:
    pattern: str


# ---------------------------------------------------------------------------------------------
# writing a dataset in each format


def _cell(value) -> str:
    return "" if value is None else str(value)


def render(fmt: str, rows: list[tuple]) -> bytes:
    """Interaction rows (user, item, timestamp as Python values) in a format's text layout."""
    if fmt in CSV_FORMATS:
        header = "user,item,timestamp\n"
        return (header + "".join(",".join(map(_cell, r)) + "\n" for r in rows)).encode()
    user, item, ts = REVIEW_KEYS[fmt]
    return "".join(json.dumps({user: u, item: i, ts: t, "rating": 5}, ensure_ascii=False) + "\n" for u, i, t in rows).encode()


def items_file(fmt: str, root: Path, ids=("10", "11", "12"), titled: bool = True) -> Path:
    """A good items file for a format (titles blank unless `titled`)."""
    title = "Title {}" if titled else " "
    if fmt == "microlens":
        path = root / "titles.csv"
        path.write_text("".join(f"{i},{title.format(i)}\n" for i in ids))
    else:
        path = root / "items.jsonl"
        path.write_text("".join(json.dumps({META_KEY[fmt]: i, "title": title.format(i)}) + "\n" for i in ids))
    return path


def read(fmt: str, interactions: Path, items: Path, image_dir: Path | None = None, **kw):
    return read_dataset("generic" if fmt.startswith("generic") else fmt, interactions, items, image_dir, **kw)


def check(fmt: str, interactions: Path, items: Path, expect, **kw):
    """Read and assert the expected class; return the RawData when kept."""
    if isinstance(expect, Fails):
        with pytest.raises(ValueError) as err:
            read(fmt, interactions, items, **kw)
        assert str(interactions) in str(err.value) or str(items) in str(err.value), err.value
        assert re.search(expect.pattern, str(err.value)), err.value
        return None
    raw = read(fmt, interactions, items, **kw)
    assert len(raw.interactions) == expect.n
    reader_counts = {k: v for k, v in raw.counts.items() if v and k != "duplicate_item_rows"}
    assert reader_counts == expect.counts
    assert raw.interactions[schema.TIMESTAMP].dtype == "int64"
    return raw


def write_case(tmp_path: Path, fmt: str, data: bytes) -> tuple[Path, Path]:
    """The interactions file with these bytes, and a good items file beside it."""
    path = tmp_path / {"microlens": "pairs.csv", "generic_csv": "inter.csv"}.get(fmt, "reviews.jsonl")
    path.write_bytes(data)
    return path, items_file(fmt, tmp_path)


def prepare_case(tmp_path: Path, fmt: str, inter: Path, items: Path, **overrides) -> dict:
    values = dict(run_dir=str(tmp_path / "run"), interactions=str(inter), items=str(items),
                  format="generic" if fmt.startswith("generic") else fmt, user_min=1, item_min=1, negatives_test=1)
    return prepare(PrepareConfig(**(values | overrides)))
