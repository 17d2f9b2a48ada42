"""Interaction tables (user, item, timestamp) read strictly and vectorised: CSV through pyarrow, or parquet.

A CSV is parsed with quoting off, so every physical line is exactly one row and a stray quote can
spoil only its own line; properly quoted cells are unquoted afterwards, and a line whose quoted
cells hold commas is re-read alone with the csv module. The parsed row count is checked against
the file's line count. Every row is then kept, or dropped for the first reason that applies and
counted through `textio.Drops` with its line number:

- `bad_encoding`: the line is not UTF-8;
- `malformed`: a wrong number of fields, or a cell with a stray quote;
- `missing_id`: a user or item id that is null, NaN, empty, whitespace, a null token (`nan`,
  `null`, `None`; see NULL_IDS), or not a string or an integer;
- `bad_timestamp`: a timestamp that is missing, not a plain integer (`1e3`, `5.0`, `+5` are not),
  negative, or above `max_ts` (MAX_TS_MS, or MAX_TS_S for a format in seconds).
"""

from __future__ import annotations

import bisect
import csv
import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from msr import schema
from msr.data.textio import EXAMPLES_PER_REASON, Drops, blank_bad_lines, is_utf8, read_bytes

COLUMNS = ("user", "item", "timestamp")
MAX_TS_MS = 10**13  # 2286-11-20 in milliseconds (MicroLens, Amazon 2023, generic)
MAX_TS_S = 10**10  # 2286-11-20 in seconds (Amazon 2018)
NULL_IDS = ("", "nan", "NaN", "NAN", "null", "NULL", "Null", "None", "NONE", "none")  # what writers print for a missing value
_NULL_TOKENS = pa.array(NULL_IDS)
_BLANK = re.compile(rb"\n(?=\r?\n)")
_BLANK_START = re.compile(rb"\r?\n")


def read_csv_interactions(path: Path, drops: Drops, allow_truncated: bool, max_ts: int) -> pd.DataFrame:
    """Interactions from a CSV with columns user,item,timestamp (header optional, extra columns ignored)."""
    data = read_bytes(path, drops, allow_truncated)
    if not data.strip():
        raise ValueError(f"{path}: the file is empty")
    header = _header(data, path)
    data = blank_bad_lines(data, drops, first=2 if header else 1)
    lines = _CsvLines(data, header or list(COLUMNS), header is not None)
    table = _parse(data, lines, path)
    lines.check(table.num_rows, path)
    lines.report_invalid(drops)
    columns, stray = {}, np.zeros(table.num_rows, bool)
    for name in COLUMNS:
        columns[name], bad = _unquote(table.column(name))
        stray |= bad
    if lines.recovered:
        for i, name in enumerate(COLUMNS):
            extra = pa.array([fields[i] for fields in lines.recovered_fields], pa.string())
            columns[name] = pa.chunked_array(columns[name].chunks + [extra], pa.string())
        stray = np.concatenate([stray, np.zeros(len(lines.recovered), bool)])
    return clean_interactions(columns, drops, lambda i: f"line {lines.line(i)}", max_ts, {"malformed": stray})


def read_parquet_interactions(path: Path, drops: Drops, max_ts: int) -> pd.DataFrame:
    """Interactions from a parquet file with columns user, item, timestamp (extra columns ignored)."""
    try:
        names = pq.read_schema(path).names
        missing = sorted(set(COLUMNS) - set(names))
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the file has {names}")
        table = pq.read_table(path, columns=list(COLUMNS))
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable parquet file ({err})") from None
    columns = {name: table.column(name) for name in COLUMNS}
    return clean_interactions(columns, drops, lambda i: f"row {i + 1}", max_ts, {}, path)


def clean_interactions(columns: dict[str, pa.ChunkedArray], drops: Drops, where: Callable[[int], str],
                       max_ts: int, flagged: dict[str, np.ndarray], path: Path | None = None) -> pd.DataFrame:
    """Typed interactions from raw user/item/timestamp columns; every unusable row dropped once, by
    the first reason that applies (`flagged` ones first), and counted with examples."""
    users, user_ok = _ids(columns["user"], path, "user")
    items, item_ok = _ids(columns["item"], path, "item")
    stamps, ts_ok = _timestamps(columns["timestamp"], max_ts, path)
    reasons = dict(flagged, missing_id=~(user_ok & item_ok), bad_timestamp=~ts_ok)
    dropped = np.zeros(len(stamps), bool)
    for reason, mask in reasons.items():
        rows = np.flatnonzero(mask & ~dropped)
        for i in rows[:EXAMPLES_PER_REASON]:
            drops.add(reason, where(int(i)), _describe(columns, int(i)))
        drops.count(reason, max(0, len(rows) - EXAMPLES_PER_REASON))
        dropped[rows] = True
    keep = pa.array(~dropped)
    return pd.DataFrame({schema.USER: users.filter(keep).to_pandas(),
                         schema.ITEM: items.filter(keep).to_pandas(),
                         schema.TIMESTAMP: stamps[~dropped]})


def _describe(columns: dict[str, pa.ChunkedArray], i: int) -> str:
    """A row's raw cells, for a log line."""
    return ", ".join(f"{name}={columns[name][i].as_py()!r}" for name in COLUMNS)


# ---------------------------------------------------------------------------------------------
# CSV parsing


def _header(data: bytes, path: Path) -> list[str] | None:
    """The header's column names, or None when the first field of line 1 is an integer (no header)."""
    first = data[: data.find(b"\n")] if b"\n" in data else data
    fields = next(csv.reader([first.decode("utf-8", "replace").rstrip("\r")]), [""])
    if fields and fields[0].strip().lstrip("-").isdigit():
        return None
    if not is_utf8(first):
        raise ValueError(f"{path}: line 1 is not UTF-8, so it cannot be told from a header")
    names = [f.strip() for f in fields]
    missing = [n for n in COLUMNS if n not in names]
    if missing:
        sep = next((f" (it looks {name}-separated: msr reads comma-separated files, so convert it)"
                    for char, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe"))
                    if len(names) == 1 and char in names[0]), "")
        raise ValueError(f"{path}: expected columns {list(COLUMNS)}, header has {names}{sep}")
    twice = sorted({n for n in COLUMNS if names.count(n) > 1})
    if twice:
        raise ValueError(f"{path}: the header names column(s) {twice} more than once, so which one holds "
                         "the data is ambiguous; rename or remove the extra column(s)")
    return names


class _CsvLines:
    """Which physical line each parsed row came from, for messages and the row-count check.

    pyarrow numbers rows by line, header included, but skips blank lines without numbering them.
    A row it cannot split into the header's fields goes to `handle`: re-read alone if it is quoted
    (`recovered`, appended after the parsed rows), else a malformed line (`invalid`)."""

    def __init__(self, data: bytes, names: list[str], header: bool) -> None:
        self.data, self.names, self.header = data, names, int(header)
        self.invalid: list[int] = []
        self.recovered: list[int] = []
        self.recovered_fields: list[list[str]] = []
        self.examples: list[tuple[int, str]] = []
        self.parsed = 0
        self._skipped: list[int] = []
        self._blank: list[int] | None = None

    def handle(self, row: pacsv.InvalidRow) -> str:
        """pyarrow's invalid-row handler: keep a quoted line that splits right, count the rest."""
        fields = _quoted_fields(row.text) if '"' in row.text else None
        if fields is not None and len(fields) == len(self.names):
            self.recovered.append(row.number)
            self.recovered_fields.append([fields[self.names.index(n)] for n in COLUMNS])
        else:
            self.invalid.append(row.number)
            if len(self.examples) < EXAMPLES_PER_REASON:
                self.examples.append((row.number, f"{row.actual_columns} field(s), expected "
                                                  f"{row.expected_columns}: {row.text[:60]!r}"))
        return "skip"

    def report_invalid(self, drops: Drops) -> None:
        """Count the lines that did not split into the header's fields as `malformed`."""
        for number, detail in self.examples:
            drops.add("malformed", f"line {_nth(number, self.blank_lines())}", detail)
        drops.count("malformed", len(self.invalid) - len(self.examples))

    def check(self, parsed: int, path: Path) -> None:
        """Every non-blank line is the header, a parsed row, or a handled one; else raise."""
        self.parsed = parsed
        self._skipped = sorted(self.invalid + self.recovered)
        n_lines = self.data.count(b"\n") + (not self.data.endswith(b"\n"))
        seen = self.header + parsed + len(self._skipped)
        if seen != n_lines and seen != n_lines - len(self.blank_lines()):
            raise ValueError(f"{path}: parsed {seen} of {n_lines} lines; the file is not one record per line")

    def blank_lines(self) -> list[int]:
        """Physical numbers of the blank lines, found once, when first needed."""
        if self._blank is None:
            starts = [0] if _BLANK_START.match(self.data) else []
            starts += [m.start() + 1 for m in _BLANK.finditer(self.data)]
            self._blank, line, pos = [], 1, 0
            for start in starts:
                line += self.data.count(b"\n", pos, start)
                pos = start
                self._blank.append(line)
        return self._blank

    def line(self, i: int) -> int:
        """The physical line number of row `i` (parsed rows first, then recovered ones)."""
        if i >= self.parsed:
            number = self.recovered[i - self.parsed]
        else:
            number = _nth(self.header + i + 1, self._skipped)
        return _nth(number, self.blank_lines())


def _nth(n: int, skipped: list[int]) -> int:
    """The n-th positive integer that is not in the sorted list `skipped`."""
    k = n
    while (nxt := n + bisect.bisect_right(skipped, k)) != k:
        k = nxt
    return k


def _quoted_fields(text: str) -> list[str] | None:
    """The fields of one line read as strict CSV (quoted commas allowed), or None."""
    try:
        rows = list(csv.reader([text], strict=True))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None


def _parse(data: bytes, lines: _CsvLines, path: Path) -> pa.Table:
    """The user/item/timestamp cells of every line as text, quoting off: one row per line."""
    read = pacsv.ReadOptions(column_names=lines.names, skip_rows=lines.header, use_threads=False,
                             block_size=1 << 24)
    parse = pacsv.ParseOptions(quote_char=False, newlines_in_values=False, ignore_empty_lines=True,
                               invalid_row_handler=lines.handle)
    convert = pacsv.ConvertOptions(include_columns=list(COLUMNS), strings_can_be_null=False,
                                   column_types={n: pa.string() for n in COLUMNS})
    try:
        return pacsv.read_csv(pa.BufferReader(data), read_options=read, parse_options=parse,
                              convert_options=convert)
    except pa.ArrowInvalid as err:
        raise ValueError(f"{path}: cannot parse as CSV ({err})") from None


def _unquote(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Cells with their CSV quotes removed (`"a""b"` -> `a"b`); a cell with any other quote is
    flagged. Only the cells that hold a quote are looked at."""
    has_quote = _mask(pc.match_substring(col, '"'))
    if not has_quote.any():
        return col, has_quote
    cells = col.take(pa.array(np.flatnonzero(has_quote))).combine_chunks()
    inner = pc.utf8_slice_codeunits(cells, 1, -1)
    wrapped = _mask(pc.and_(pc.and_(pc.starts_with(cells, '"'), pc.ends_with(cells, '"')),
                            pc.greater_equal(pc.utf8_length(cells), 2)))
    quoted = wrapped & ~_mask(pc.match_substring(pc.replace_substring(inner, '""', ""), '"'))
    fixed = pc.if_else(pa.array(quoted), pc.replace_substring(inner, '""', '"'), cells)
    text = pc.replace_with_mask(col.combine_chunks(), pa.array(has_quote), fixed)
    stray = has_quote.copy()
    stray[has_quote] = ~quoted
    return pa.chunked_array([text]), stray


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean arrow array as numpy, nulls false."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


# ---------------------------------------------------------------------------------------------
# typed columns


def _as_text(col: pa.ChunkedArray, path: Path | None, name: str) -> pa.ChunkedArray:
    """A binary column as text; bytes that are not UTF-8 are a clear error naming the column."""
    try:
        return col.cast(pa.string())
    except pa.ArrowInvalid:
        raise ValueError(f"{path}: column {name!r} holds bytes that are not UTF-8") from None


def _ids(col: pa.ChunkedArray, path: Path | None, name: str) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Ids as trimmed strings and a mask of the usable ones (integers and integral floats as digits)."""
    kind = col.type
    if pa.types.is_dictionary(kind):
        col, kind = col.cast(kind.value_type), kind.value_type
    if pa.types.is_floating(kind):
        values = col.to_numpy()
        ok = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**53)
        col = pa.chunked_array([pa.array(np.where(ok, values, 0).astype(np.int64))]).cast(pa.string())
        return col, ok
    if pa.types.is_integer(kind):
        return col.cast(pa.string()), ~_mask(pc.is_null(col))
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return _ids(_as_text(col, path, name), path, name)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        if pa.types.is_boolean(kind) or pa.types.is_null(kind):
            return col.cast(pa.string()), np.zeros(len(col), bool)
        raise ValueError(f"{path}: column {name!r} has type {kind}; ids must be strings or integers")
    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    ok = ~_mask(pc.is_in(pc.fill_null(text, ""), value_set=_NULL_TOKENS))
    return text, ok


def _timestamps(col: pa.ChunkedArray, max_ts: int, path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps as int64 and a mask of the usable ones: integers in [0, max_ts]."""
    kind = col.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        col, kind = _as_text(col, path, "timestamp"), pa.string()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pc.utf8_trim_whitespace(col)
        try:
            col = text.cast(pa.int64())
        except pa.ArrowInvalid:  # some cell is not an integer: parse only the well-formed ones
            digits = pc.and_(pc.ascii_is_decimal(text), pc.less_equal(pc.binary_length(text), 15))
            col = pc.if_else(digits, text, pa.scalar(None, pa.string())).cast(pa.int64())
        kind = col.type
    if pa.types.is_integer(kind):
        values = pc.fill_null(col, 0).to_numpy()
        ok = ~_mask(pc.is_null(col)) & (values >= 0) & (values <= max_ts)
        return np.where(ok, values, 0).astype(np.int64), ok
    if pa.types.is_floating(kind):
        values = col.to_numpy()
        ok = np.isfinite(values) & (values == np.round(values)) & (values >= 0) & (values <= max_ts)
        return np.where(ok, values, 0).astype(np.int64), ok
    if pa.types.is_boolean(kind) or pa.types.is_null(kind):
        return np.zeros(len(col), np.int64), np.zeros(len(col), bool)
    raise ValueError(f"{path}: column 'timestamp' has type {kind}; store integers (seconds or milliseconds)")
