"""Opening raw data files strictly: decompression, decoding, numbered lines, and counted drops.

A reader never swallows a problem. A line it cannot use is one counted drop with a reason
(`Drops`), logged with the file and line number of its first few examples. A file it cannot read
at all (another compression format, corrupt or truncated gzip, unreadable) is a `ValueError` that
names the file, so the CLI prints one clear line instead of a traceback.
"""

from __future__ import annotations

import csv
import logging
import zlib
from collections import Counter, deque
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
CHUNK_BYTES = 1 << 22
MAX_RECORD_LINES = 5  # a quoted CSV field may span this many lines; more is a stray quote
EXAMPLES_PER_REASON = 3
_GZIP = b"\x1f\x8b"
_UNSUPPORTED = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip", b"\x28\xb5\x2f\xfd": "zstd"}


class Drops:
    """Rows skipped while reading one file: counted by reason into a shared Counter (as
    `{reason}_{what}_rows`), with the first few examples of each reason kept for one log warning."""

    def __init__(self, counts: Counter, path: Path, what: str) -> None:
        self.counts, self.path, self.what = counts, path, what
        self.examples: dict[str, list[str]] = {}
        self.added: Counter = Counter()

    def key(self, reason: str) -> str:
        """The counter key of a reason for this file's kind of rows."""
        return f"{reason}_{self.what}_rows"

    def add(self, reason: str, where: str, detail: str) -> None:
        """Count one dropped row; `where` ("line 12") and `detail` say which and why, for the log."""
        self.counts[self.key(reason)] += 1
        self.added[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES_PER_REASON:
            kept.append(f"{where}: {detail}")

    def count(self, reason: str, n: int) -> None:
        """Count `n` more dropped rows of a reason whose examples were already given to `add`."""
        if n:
            self.counts[self.key(reason)] += n
            self.added[reason] += n

    def report(self) -> None:
        """One warning per reason: how many rows of this file were dropped, and the first examples."""
        for reason, n in sorted(self.added.items()):
            log.warning("%s: dropped %d %s row(s) as %s, e.g. %s", self.path, n, self.what,
                        self.key(reason), "; ".join(self.examples[reason]))


class BrokenArchive(ValueError):
    """A gzip file that is corrupt, or that ends before its end-of-stream marker (`truncated`)."""

    def __init__(self, message: str, truncated: bool) -> None:
        super().__init__(message)
        self.truncated = truncated


def chunks(path: Path) -> Iterator[bytes]:
    """The bytes of a file, gunzipped when its content starts with the gzip magic (not by extension).

    Other compression formats are refused by name; a corrupt or truncated gzip raises BrokenArchive
    after every byte before the damage has been yielded."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            for magic, name in _UNSUPPORTED.items():
                if head.startswith(magic):
                    raise ValueError(f"{path}: the file is {name}-compressed; msr reads plain or gzip "
                                     f"files, so decompress it first")
            f.seek(0)
            if head.startswith(_GZIP):
                yield from _gunzip(f, path)
            else:
                while block := f.read(CHUNK_BYTES):
                    yield block
    except OSError as err:
        raise ValueError(f"{path}: cannot read the file: {err.strerror or err}") from None


def _gunzip(f, path: Path) -> Iterator[bytes]:
    """Decompress a (possibly multi-member) gzip stream, keeping every byte before any damage."""
    d = zlib.decompressobj(wbits=31)
    while raw := f.read(CHUNK_BYTES):
        while raw:
            if d.eof:
                if not raw.strip(b"\x00"):
                    break  # zero padding after the last member
                d = zlib.decompressobj(wbits=31)  # the next member
            try:
                out = d.decompress(raw)
            except zlib.error as err:
                raise BrokenArchive(f"{path}: corrupt gzip data ({err})", truncated=False) from None
            if out:
                yield out
            raw = d.unused_data if d.eof else b""
    if not d.eof:
        raise BrokenArchive(f"{path}: the gzip stream ends before its end marker (a truncated file?)",
                            truncated=True)


def _broken(err: BrokenArchive, drops: Drops, allow_truncated: bool, lines: int) -> None:
    """Keep what was read from a truncated archive if the user asked for it (counted), else raise."""
    if err.truncated and allow_truncated:
        drops.counts[f"truncated_{drops.what}_files"] += 1
        log.warning("%s; keeping the %d complete lines before the cut (allow_truncated)", err, lines)
        return
    hint = "; re-download it, or set allow_truncated: true to keep them" if err.truncated else ""
    raise ValueError(f"{err}, after {lines} complete lines{hint}") from None


def read_bytes(path: Path, drops: Drops, allow_truncated: bool) -> bytes:
    """The whole (decompressed) content of a file, BOM removed; a truncated gzip is cut at its last
    complete line if `allow_truncated`, else an error."""
    parts: list[bytes] = []
    try:
        for block in chunks(path):
            parts.append(block)
    except BrokenArchive as err:
        data = b"".join(parts)
        data = data[: data.rfind(b"\n") + 1]
        _broken(err, drops, allow_truncated, data.count(b"\n"))
        parts = [data]
    data = b"".join(parts)
    return data[len(BOM):] if data.startswith(BOM) else data


def is_utf8(data: bytes | memoryview) -> bool:
    """Whether `data` is valid UTF-8, checked by arrow without copying or decoding it."""
    offsets = pa.py_buffer(np.array([0, len(data)], np.int64))
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _bad_spans(data: bytes, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Byte spans of the lines of data[start:end] (whole lines) that are not UTF-8, found by halving
    at line ends: only the halves that fail arrow's check are looked into, line by line when small."""
    if is_utf8(memoryview(data)[start:end]):
        return
    middle = data.find(b"\n", (start + end) // 2, end - 1) + 1
    if end - start > 1 << 12 and middle > start:
        yield from _bad_spans(data, start, middle)
        yield from _bad_spans(data, middle, end)
        return
    while start < end:
        stop = data.find(b"\n", start, end) + 1 or end
        try:
            data[start:stop].decode("utf-8")
        except UnicodeDecodeError:
            yield start, stop
        start = stop


def blank_bad_lines(data: bytes, drops: Drops, first: int = 1) -> bytes:
    """`data` with every line from line `first` on that is not UTF-8 emptied (a counted
    `bad_encoding` drop), so line numbers are kept and the rest of the file parses as usual."""
    if is_utf8(data):
        return data
    out, line, counted, pos = [], 1, 0, 0
    for start, stop in _bad_spans(data, 0, len(data)):
        line += data.count(b"\n", counted, start)
        counted = start
        if line < first:
            continue
        drops.add("bad_encoding", f"line {line}", f"{data[start:min(stop, start + 40)]!r} is not UTF-8")
        out += [data[pos:start], b"\n" if data[stop - 1:stop] == b"\n" else b""]
        pos = stop
    out.append(data[pos:])
    return b"".join(out)


def numbered_lines(path: Path, drops: Drops, allow_truncated: bool = False,
                   encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line, decoded strictly as `encoding` (UTF-8 unless a
    format says otherwise; a BOM and a trailing CR removed). A line that does not decode is a counted drop
    (`bad_encoding`), not an error."""
    carry, n = b"", 0
    try:
        for block in chunks(path):
            lines = (carry + block).split(b"\n")
            carry = lines.pop()
            for raw in lines:
                n += 1
                text = _decode(raw, n, drops, encoding)
                if text is not None:
                    yield n, text
        if carry:
            n += 1
            text = _decode(carry, n, drops, encoding)
            if text is not None:
                yield n, text
    except BrokenArchive as err:
        _broken(err, drops, allow_truncated, n)


def _decode(raw: bytes, n: int, drops: Drops, encoding: str = "utf-8") -> str | None:
    """A line as text, or None for a blank line or one that does not decode (counted)."""
    if n == 1 and raw.startswith(BOM) and encoding == "utf-8":
        raw = raw[len(BOM):]
    try:
        text = raw.decode(encoding).rstrip("\r")
    except UnicodeDecodeError as err:
        drops.add("bad_encoding", f"line {n}", f"byte {err.start} is not {encoding.upper()}")
        return None
    return text if text.strip() else None


def csv_records(lines: Iterable[tuple[int, str]], drops: Drops) -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each CSV record, parsed strictly.

    A quoted field may span up to MAX_RECORD_LINES lines. A line that does not start a valid record
    within that many lines (a stray quote) is one `malformed` drop, and the lines after it are parsed
    again, so one bad quote can never swallow the rest of the file."""
    source, pending = iter(lines), deque()

    def pull() -> tuple[int, str] | None:
        return pending.popleft() if pending else next(source, None)

    while (first := pull()) is not None:
        record = [first]
        while (fields := _csv_fields(record)) is None:
            more = pull() if len(record) < MAX_RECORD_LINES else None
            if more is None:
                drops.add("malformed", f"line {first[0]}", f"no CSV record ends within {len(record)} "
                                                            f"line(s) (a stray quote?): {first[1][:60]!r}")
                pending.extendleft(reversed(record[1:]))
                break
            record.append(more)
        if fields is not None:
            yield first[0], fields


def _csv_fields(record: list[tuple[int, str]]) -> list[str] | None:
    """The fields of the lines of `record` read as exactly one strict CSV record, else None."""
    try:
        rows = list(csv.reader(["\n".join(text for _, text in record)], strict=True))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else None
