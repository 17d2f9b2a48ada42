"""Append-only JSON-lines logs (`JsonlLog`): how resumable stages keep one record per finished unit of work.

Each append is flushed and fsynced, so a killed stage resumes from its last record. A torn last line
(a kill mid-write) is ignored on read and cut off before the next append, so a new record is never glued
onto it; any other bad line (invalid JSON or UTF-8, not an object, no key) is skipped, counted in
`bad_lines` and logged once as a warning, and the records after it are kept.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable
from pathlib import Path

log = logging.getLogger(__name__)


class JsonlLog:
    """An append-only JSON-lines file of records keyed by a string, for resumable stages.

    A record is on disk (flushed and fsynced) before `append` returns. A torn last line (no final
    newline: a kill mid-write) is ignored on read (`torn_lines`) and truncated before the next
    append, so a record is never glued onto it. Any other bad line (not UTF-8, not JSON, not an
    object, or without the key field) is skipped and counted in `bad_lines` (its 1-based number in
    `bad_line_numbers`, all logged in one warning); the records after it are kept. When a key
    occurs more than once, its last record wins.
    """

    def __init__(self, path: str | Path, key: str):
        self.path = Path(path)
        self.key = key
        self.records: dict[str, dict] = {}
        self.torn_lines = 0
        self.bad_lines = 0
        self.bad_line_numbers: list[int] = []
        self._load()

    def _parse(self, line: bytes) -> dict | None:
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
            return None
        if not isinstance(record, dict) or not isinstance(record.get(self.key), Hashable):
            return None
        return record if self.key in record else None

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.endswith(b"\n"):  # only the last line can lack its newline
                    self.torn_lines += 1
                    break
                record = self._parse(line)
                if record is None:
                    self.bad_line_numbers.append(number)
                    continue
                self.records[record[self.key]] = record
        self.bad_lines = len(self.bad_line_numbers)
        if self.bad_lines:
            shown = ", ".join(map(str, self.bad_line_numbers[:50]))
            more = f" and {self.bad_lines - 50} more" if self.bad_lines > 50 else ""
            log.warning("%s: skipped %d bad line(s) (not a JSON object with %r): line %s%s", self.path,
                        self.bad_lines, self.key, shown, more)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    @staticmethod
    def _cut_torn_tail(f) -> None:
        """Truncate an open (a+b) file after its last newline, if it does not end with one."""
        size = f.seek(0, os.SEEK_END)
        if not size:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            f.seek(start)
            newline = f.read(end - start).rfind(b"\n")
            if newline >= 0:
                f.truncate(start + newline + 1)
                return
            end = start
        f.truncate(0)

    def append(self, records: list[dict]) -> None:
        """Persist `records`; each must carry the key field."""
        if not records:
            return
        missing = [r for r in records if self.key not in r]
        if missing:
            raise KeyError(f"{self.path}: a record has no {self.key!r} field: {missing[0]!r}")
        data = b"".join((json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode()
                        for record in records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            self._cut_torn_tail(f)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for record in records:
            self.records[record[self.key]] = record
