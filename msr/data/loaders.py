"""Readers for raw recommendation datasets, one per format, all producing the same two tables.

Every reader returns `RawData`: items (id, title, description, brand, categories, image candidate)
and interactions (user, item, integer timestamp), ids as strings. Malformed rows are skipped and
counted by reason in `RawData.counts`; nothing here filters by quality (that is `prepare`'s job).
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msr import schema
from msr.data import images

FORMATS = ("microlens", "amazon2018", "amazon2023", "generic")


@dataclass
class RawData:
    """What a reader found: items, interactions, and counts of rows it had to skip."""

    items: pd.DataFrame
    interactions: pd.DataFrame
    counts: Counter = field(default_factory=Counter)


def read_dataset(fmt: str, interactions: str, items: str, image_dir: str | None) -> RawData:
    """Read a dataset in format `fmt` (one of FORMATS)."""
    readers: dict[str, Callable[[Path, Path, str | None], RawData]] = {
        "microlens": read_microlens,
        "amazon2018": read_amazon2018,
        "amazon2023": read_amazon2023,
        "generic": read_generic,
    }
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for label, path in (("interactions", interactions), ("items", items)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{label} file not found: {path}")
    if image_dir is not None and not Path(image_dir).is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    return readers[fmt](Path(interactions), Path(items), image_dir)


# ---------------------------------------------------------------------------------------------
# shared helpers


def _open_text(path: Path):
    """Open a text file, gunzipping by content (magic bytes), not by extension."""
    with path.open("rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gz else path.open(encoding="utf-8")


def _text(value: Any) -> str:
    """A clean one-line string from a scalar or a list of strings (Amazon stores text as lists)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value if v)
    return " ".join(str(value).split())


def _json_lines(path: Path, counts: Counter, what: str) -> Iterator[dict]:
    """Parsed JSON objects of a JSON-lines file; bad lines are counted, not raised."""
    with _open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                counts[f"malformed_{what}_rows"] += 1
                continue
            if isinstance(record, dict):
                yield record
            else:
                counts[f"malformed_{what}_rows"] += 1


def _texts(values: Any) -> list[str]:
    """The non-empty clean strings of a list field (None -> [])."""
    return [t for t in (_text(v) for v in (values or [])) if t]


def _review_interactions(path: Path, counts: Counter, user_key: str, item_key: str, ts_key: str) -> pd.DataFrame:
    """Interactions from review JSON lines; a row without user, item or integer time is counted."""
    users, items, stamps = [], [], []
    for r in _json_lines(path, counts, "interaction"):
        user, item, ts = r.get(user_key), r.get(item_key), r.get(ts_key)
        if not user or not item or not isinstance(ts, int) or isinstance(ts, bool):
            counts["malformed_interaction_rows"] += 1
            continue
        users.append(str(user))
        items.append(str(item))
        stamps.append(ts)
    return pd.DataFrame({schema.USER: pd.array(users, dtype="str"),
                         schema.ITEM: pd.array(items, dtype="str"),
                         schema.TIMESTAMP: pd.array(stamps, dtype="int64")})


def _items_frame(rows: list[dict], image_dir: str | None, counts: Counter,
                 relative_paths: list[str | None] | None = None) -> pd.DataFrame:
    """Items table from reader rows: first row per id wins (duplicates counted)."""
    frame = pd.DataFrame(rows, columns=[schema.ITEM, schema.TITLE, schema.DESCRIPTION,
                                        schema.BRAND, schema.CATEGORIES])
    if relative_paths is not None:
        frame["_rel"] = relative_paths
    duplicated = frame[schema.ITEM].duplicated(keep="first")
    counts["duplicate_item_rows"] += int(duplicated.sum())
    frame = frame[~duplicated].reset_index(drop=True)
    rel = frame.pop("_rel").tolist() if relative_paths is not None else None
    paths, unsafe = images.locate(image_dir, frame[schema.ITEM].tolist(), rel)
    counts["unsafe_image_paths"] += unsafe
    frame[schema.IMAGE] = paths
    return frame


def _coerce_interactions(table: pa.Table, user: str, item: str, ts: str, counts: Counter,
                         ts_scale: int = 1) -> pd.DataFrame:
    """Typed interactions from a table of (user, item, timestamp) columns; bad rows counted."""
    frame = pd.DataFrame({
        schema.USER: table.column(user).cast(pa.string()).to_pandas(),
        schema.ITEM: table.column(item).cast(pa.string()).to_pandas(),
        schema.TIMESTAMP: pd.to_numeric(table.column(ts).to_pandas(), errors="coerce"),
    })
    bad = (frame[schema.TIMESTAMP].isna() | frame[schema.USER].isna() | frame[schema.ITEM].isna()
           | (frame[schema.USER].str.strip() == "") | (frame[schema.ITEM].str.strip() == ""))
    counts["malformed_interaction_rows"] += int(bad.sum())
    frame = frame[~bad]
    ts_values = frame[schema.TIMESTAMP].to_numpy()
    if (ts_values != ts_values.round()).any():
        raise ValueError("timestamps must be integers (seconds or milliseconds since the epoch)")
    frame[schema.TIMESTAMP] = (ts_values * ts_scale).astype("int64")
    return frame.reset_index(drop=True)


def _read_csv(path: Path, names: list[str], counts: Counter, what: str) -> pa.Table:
    """A CSV as strings, header detected (a first field that is not an integer), bad rows counted."""
    with _open_text(path) as f:
        first = f.readline().split(",")[0].strip().strip('"')
    has_header = not first.lstrip("-").isdigit()

    def skip(row: pacsv.InvalidRow) -> str:
        counts[f"malformed_{what}_rows"] += 1
        return "skip"

    read = pacsv.ReadOptions(column_names=None if has_header else names, block_size=1 << 24)
    parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=skip)
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True)
    table = pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    missing = [n for n in names if n not in table.column_names]
    if missing:
        raise ValueError(f"{path}: expected columns {names}, header has {table.column_names}")
    return table


# ---------------------------------------------------------------------------------------------
# readers


def read_microlens(pairs: Path, titles: Path, image_dir: str | None) -> RawData:
    """MicroLens: `user,item,timestamp` pairs (ms), `item,title` titles, covers `{item}.jpg`."""
    counts: Counter = Counter()
    interactions = _coerce_interactions(_read_csv(pairs, ["user", "item", "timestamp"], counts,
                                                  "interaction"), "user", "item", "timestamp", counts)
    rows = []
    with _open_text(titles) as f:
        reader = csv.reader(f)
        for n, row in enumerate(reader):
            if n == 0 and row and not row[0].strip().isdigit():
                continue  # header
            if len(row) < 2 or not row[0].strip():
                counts["malformed_item_rows"] += 1
                continue
            rows.append({schema.ITEM: row[0].strip(), schema.TITLE: _text(",".join(row[1:])),
                         schema.DESCRIPTION: "", schema.BRAND: "", schema.CATEGORIES: []})
    return RawData(_items_frame(rows, image_dir, counts), interactions, counts)


def read_amazon2018(reviews: Path, meta: Path, image_dir: str | None) -> RawData:
    """Amazon Reviews 2018: reviews (reviewerID, asin, unixReviewTime in s) + metadata by asin."""
    counts: Counter = Counter()
    interactions = _review_interactions(reviews, counts, "reviewerID", "asin", "unixReviewTime")
    rows = []
    for m in _json_lines(meta, counts, "item"):
        if not m.get("asin"):
            counts["malformed_item_rows"] += 1
            continue
        rows.append({schema.ITEM: str(m["asin"]), schema.TITLE: _text(m.get("title")),
                     schema.DESCRIPTION: _text(m.get("description")), schema.BRAND: _text(m.get("brand")),
                     schema.CATEGORIES: _texts(m.get("category"))})
    return RawData(_items_frame(rows, image_dir, counts), interactions, counts)


def read_amazon2023(reviews: Path, meta: Path, image_dir: str | None) -> RawData:
    """Amazon Reviews 2023: reviews (user_id, parent_asin, timestamp in ms) + metadata by parent_asin."""
    counts: Counter = Counter()
    interactions = _review_interactions(reviews, counts, "user_id", "parent_asin", "timestamp")
    rows = []
    for m in _json_lines(meta, counts, "item"):
        if not m.get("parent_asin"):
            counts["malformed_item_rows"] += 1
            continue
        description = _text(m.get("description")) or _text(m.get("features"))
        categories = _texts(m.get("categories"))
        if not categories and m.get("main_category"):
            categories = [_text(m["main_category"])]
        rows.append({schema.ITEM: str(m["parent_asin"]), schema.TITLE: _text(m.get("title")),
                     schema.DESCRIPTION: description, schema.BRAND: _text(m.get("store")),
                     schema.CATEGORIES: categories})
    return RawData(_items_frame(rows, image_dir, counts), interactions, counts)


def read_generic(interactions: Path, items: Path, image_dir: str | None) -> RawData:
    """Generic: interactions csv/parquet (user, item, timestamp) + items jsonl (id, title,
    description, image: a path relative to the image folder)."""
    counts: Counter = Counter()
    if interactions.suffix == ".parquet":
        table = pq.read_table(interactions)
        missing = {"user", "item", "timestamp"} - set(table.column_names)
        if missing:
            raise ValueError(f"{interactions}: missing column(s) {sorted(missing)}")
    else:
        table = _read_csv(interactions, ["user", "item", "timestamp"], counts, "interaction")
    frame = _coerce_interactions(table, "user", "item", "timestamp", counts)
    rows, relative = [], []
    for m in _json_lines(items, counts, "item"):
        if m.get("id") in (None, ""):
            counts["malformed_item_rows"] += 1
            continue
        rows.append({schema.ITEM: str(m["id"]), schema.TITLE: _text(m.get("title")),
                     schema.DESCRIPTION: _text(m.get("description")), schema.BRAND: _text(m.get("brand")),
                     schema.CATEGORIES: _texts(m.get("categories"))})
        relative.append(str(m["image"]) if m.get("image") else None)
    return RawData(_items_frame(rows, image_dir, counts, relative), frame, counts)
