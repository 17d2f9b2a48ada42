"""Readers for raw recommendation datasets, one per format, all producing the same two tables.

Every reader returns `RawData`: items (id, title, description, brand, categories, image candidate)
and interactions (user, item, integer timestamp, and the rating where the format has one), ids as strings. Parsing is strict: a line or row
that cannot be used is skipped and counted by reason in `RawData.counts` as `{reason}_{what}_rows`
(reasons: `malformed`, `bad_encoding`, `missing_id`, `bad_timestamp`, `duplicate`; see `tabular`),
with its file and line in the log; a file that cannot be read at all is a ValueError naming it.
Nothing here filters by quality (that is `prepare`'s job).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from msr import schema
from msr.data import images
from msr.data.tabular import (
    MAX_TS_MS,
    MAX_TS_S,
    NULL_IDS,
    read_csv_interactions,
    read_parquet_interactions,
)
from msr.data.textio import Drops, csv_records, numbered_lines

FORMATS = ("microlens", "amazon2018", "amazon2023", "generic", "movielens", "recbole")


@dataclass
class RawData:
    """What a reader found: items, interactions, and counts of rows it had to skip."""

    items: pd.DataFrame
    interactions: pd.DataFrame
    counts: Counter = field(default_factory=Counter)


def read_dataset(fmt: str, interactions: str | Path, items: str | Path, image_dir: str | Path | None,
                 allow_truncated: bool = False) -> RawData:
    """Read a dataset in format `fmt` (one of FORMATS). `allow_truncated` keeps the complete lines of
    a truncated gzip file (counted as `truncated_{what}_files`) instead of refusing it."""
    from msr.data.movielens import read_grouplens, read_recbole

    readers: dict[str, Callable[[Path, Path, str | None, bool], RawData]] = {
        "microlens": read_microlens,
        "amazon2018": read_amazon2018,
        "amazon2023": read_amazon2023,
        "generic": read_generic,
        "movielens": read_grouplens,
        "recbole": read_recbole,
    }
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for label, path in (("interactions", interactions), ("items", items)):
        if Path(path).is_dir():
            raise IsADirectoryError(f"{label}: {path} is a folder; pass the {label} file inside it")
        if Path(path).exists() and not Path(path).is_file():
            raise ValueError(f"{label}: {path} is not a regular file (a pipe or a device); save the data to "
                             "a file and pass that")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{label} file not found: {path}")
    if image_dir is not None and not Path(image_dir).is_dir():
        what = "is a file, not a folder" if Path(image_dir).exists() else "not found"
        raise FileNotFoundError(f"image folder {what}: {image_dir}")
    return readers[fmt](Path(interactions), Path(items), image_dir, allow_truncated)


# ---------------------------------------------------------------------------------------------
# shared helpers


@contextmanager
def _drops(counts: Counter, path: Path, what: str) -> Iterator[Drops]:
    """Count one file's dropped rows into `counts`; log them by reason when the file is read."""
    drops = Drops(counts, path, what)
    yield drops
    drops.report()


def clean_id(value: Any) -> str | None:
    """An id as a trimmed string, or None when it is missing: null, NaN, empty, whitespace, a null
    token (`nan`, `null`, `None`...), or not a string or an integer (a bool, a list, an object)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        ok = math.isfinite(value) and value.is_integer() and abs(value) < 2**53
        return str(int(value)) if ok else None
    if isinstance(value, str):
        text = value.strip()
        return None if text in NULL_IDS else text
    return None


def _text(value: Any) -> str:
    """A clean one-line string from a scalar or a list of strings (Amazon stores text as lists)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value if v)
    return " ".join(str(value).split())


def _texts(values: Any) -> list[str]:
    """The non-empty clean strings of a list field (a lone string is a list of one; None -> [])."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        return []
    return [t for t in (_text(v) for v in values) if t]


def _json_records(path: Path, drops: Drops, allow_truncated: bool) -> Iterator[tuple[int, dict]]:
    """(line number, object) of a JSON-lines file; a line that is not a JSON object is `malformed`."""
    first, objects = None, 0
    for n, text in numbered_lines(path, drops, allow_truncated):
        first = text.lstrip() if first is None else first
        try:
            record = json.loads(text)
        except (ValueError, RecursionError) as err:
            drops.add("malformed", f"line {n}", f"not JSON ({str(err)[:80]})")
            continue
        if isinstance(record, dict):
            objects += 1
            yield n, record
        else:
            drops.add("malformed", f"line {n}", f"a JSON {type(record).__name__}, not an object")
    if not objects and first is not None and first.startswith("["):
        raise ValueError(f"{path}: the file is one JSON array, not JSON lines (one object per line); "
                         "convert it, e.g. `jq -c '.[]' FILE > FILE.jsonl`")


def _json_lines(path: Path, counts: Counter, what: str) -> Iterator[dict]:
    """The JSON objects of a JSON-lines file (for `msr data images`); bad lines counted by reason."""
    with _drops(counts, path, what) as drops:
        for _, record in _json_records(path, drops, False):
            yield record


def _review_interactions(path: Path, counts: Counter, keys: tuple[str, str, str], max_ts: int,
                         allow_truncated: bool) -> pd.DataFrame:
    """Interactions from review JSON lines: (user, item, time) under `keys`; time a JSON integer in
    [0, max_ts]. A row without usable ids is `missing_id`, one without a usable time `bad_timestamp`."""
    user_key, item_key, ts_key = keys
    users, items, stamps = [], [], []
    with _drops(counts, path, "interaction") as drops:
        for n, r in _json_records(path, drops, allow_truncated):
            user, item, ts = clean_id(r.get(user_key)), clean_id(r.get(item_key)), r.get(ts_key)
            if user is None or item is None:
                drops.add("missing_id", f"line {n}", f"{user_key}={r.get(user_key)!r}, "
                                                     f"{item_key}={r.get(item_key)!r}")
            elif type(ts) is not int or not 0 <= ts <= max_ts:
                drops.add("bad_timestamp", f"line {n}", f"{ts_key}={ts!r}")
            else:
                users.append(user)
                items.append(item)
                stamps.append(ts)
    return pd.DataFrame({schema.USER: pd.array(users, dtype="str"),
                         schema.ITEM: pd.array(items, dtype="str"),
                         schema.TIMESTAMP: pd.array(stamps, dtype="int64")})


def _items_frame(rows: list[dict], image_dir: str | None, counts: Counter,
                 relative_paths: list[str | None] | None = None) -> pd.DataFrame:
    """Items table from reader rows: first row per id wins (duplicates counted); each item gets its
    candidate image path (checked and confined to the image folder later, by `images.verify_images`)."""
    frame = pd.DataFrame(rows, columns=[schema.ITEM, schema.TITLE, schema.DESCRIPTION,
                                        schema.BRAND, schema.CATEGORIES])
    if relative_paths is not None:
        frame["_rel"] = relative_paths
    duplicated = frame[schema.ITEM].duplicated(keep="first")
    counts["duplicate_item_rows"] += int(duplicated.sum())
    frame = frame[~duplicated].reset_index(drop=True)
    rel = frame.pop("_rel").tolist() if relative_paths is not None else None
    frame[schema.IMAGE] = images.locate(image_dir, frame[schema.ITEM].tolist(), rel)
    return frame


def _item_row(item: str, title: Any, description: Any = "", brand: Any = "",
              categories: list[str] | None = None) -> dict:
    """One items-table row, text fields cleaned."""
    return {schema.ITEM: item, schema.TITLE: _text(title), schema.DESCRIPTION: _text(description),
            schema.BRAND: _text(brand), schema.CATEGORIES: categories or []}


def _metadata_rows(path: Path, counts: Counter, key: str, allow_truncated: bool,
                   make: Callable[[str, dict], dict]) -> list[dict]:
    """Item rows from metadata JSON lines with the id under `key` (no usable id: `missing_id`)."""
    rows = []
    with _drops(counts, path, "item") as drops:
        for n, m in _json_records(path, drops, allow_truncated):
            item = clean_id(m.get(key))
            if item is None:
                drops.add("missing_id", f"line {n}", f"{key}={m.get(key)!r}")
            else:
                rows.append(make(item, m))
    return rows


# ---------------------------------------------------------------------------------------------
# readers


def read_microlens(pairs: Path, titles: Path, image_dir: str | None, allow_truncated: bool = False) -> RawData:
    """MicroLens: `user,item,timestamp` pairs (ms), `item,title` titles, covers `{item}.jpg`."""
    counts: Counter = Counter()
    with _drops(counts, pairs, "interaction") as drops:
        interactions = read_csv_interactions(pairs, drops, allow_truncated, MAX_TS_MS)
    rows = []
    with _drops(counts, titles, "item") as drops:
        for k, (n, fields) in enumerate(csv_records(numbered_lines(titles, drops, allow_truncated), drops)):
            if k == 0 and not fields[0].strip().isdigit():
                header = [f.strip().lower() for f in fields]
                if "user" in header and "timestamp" in header:
                    raise ValueError(f"{titles}: its header {fields} is an interactions (pairs) header, not "
                                     "item,title: pass the titles csv as items")
                continue  # header
            item = clean_id(fields[0])
            if len(fields) < 2:
                drops.add("malformed", f"line {n}", f"{len(fields)} field(s), expected item,title")
            elif item is None:
                drops.add("missing_id", f"line {n}", f"item={fields[0]!r}")
            else:
                rows.append(_item_row(item, ",".join(fields[1:])))
    return RawData(_items_frame(rows, image_dir, counts), interactions, counts)


def read_amazon2018(reviews: Path, meta: Path, image_dir: str | None, allow_truncated: bool = False) -> RawData:
    """Amazon Reviews 2018: reviews (reviewerID, asin, unixReviewTime in s) + metadata by asin."""
    counts: Counter = Counter()
    interactions = _review_interactions(reviews, counts, ("reviewerID", "asin", "unixReviewTime"),
                                        MAX_TS_S, allow_truncated)
    rows = _metadata_rows(meta, counts, "asin", allow_truncated, lambda item, m: _item_row(
        item, m.get("title"), m.get("description"), m.get("brand"), _texts(m.get("category"))))
    return RawData(_items_frame(rows, image_dir, counts), interactions, counts)


def _amazon2023_row(item: str, m: dict) -> dict:
    """An item row from Amazon 2023 metadata: description falls back to features, categories to
    the main category, the store is the brand."""
    categories = _texts(m.get("categories")) or ([_text(m["main_category"])] if m.get("main_category") else [])
    return _item_row(item, m.get("title"), _text(m.get("description")) or _text(m.get("features")),
                     m.get("store"), categories)


def read_amazon2023(reviews: Path, meta: Path, image_dir: str | None, allow_truncated: bool = False) -> RawData:
    """Amazon Reviews 2023: reviews (user_id, parent_asin, timestamp in ms) + metadata by parent_asin."""
    counts: Counter = Counter()
    interactions = _review_interactions(reviews, counts, ("user_id", "parent_asin", "timestamp"),
                                        MAX_TS_MS, allow_truncated)
    rows = _metadata_rows(meta, counts, "parent_asin", allow_truncated, _amazon2023_row)
    return RawData(_items_frame(rows, image_dir, counts), interactions, counts)


def _is_parquet(path: Path) -> bool:
    """A `.parquet` name, or parquet's magic bytes whatever the name."""
    if path.suffix == ".parquet":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == b"PAR1"
    except OSError as err:
        raise ValueError(f"{path}: cannot read the file: {err.strerror or err}") from None


def read_generic(interactions: Path, items: Path, image_dir: str | None, allow_truncated: bool = False) -> RawData:
    """Generic: interactions csv/parquet (user, item, timestamp) + items jsonl (id, title,
    description, image: a path relative to the image folder)."""
    counts: Counter = Counter()
    with _drops(counts, interactions, "interaction") as drops:
        if _is_parquet(interactions):
            frame = read_parquet_interactions(interactions, drops, MAX_TS_MS)
        else:
            frame = read_csv_interactions(interactions, drops, allow_truncated, MAX_TS_MS)
    relative: list[str | None] = []

    def make(item: str, m: dict) -> dict:
        relative.append(None if m.get("image") in (None, "") else str(m["image"]))
        return _item_row(item, m.get("title"), m.get("description"), m.get("brand"), _texts(m.get("categories")))

    rows = _metadata_rows(items, counts, "id", allow_truncated, make)
    return RawData(_items_frame(rows, image_dir, counts, relative), frame, counts)
