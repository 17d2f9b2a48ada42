"""The run directory: where every stage reads its inputs and writes its outputs.

Writes are atomic (temp file + rename), so an interrupted stage never leaves a half-written table
that a later stage would trust. The manifest records, per stage, the hash of the config that
produced its outputs: a re-run with the same config is skipped, a changed config re-runs.
Append-only JSONL files are flushed per record, so a killed stage resumes from its last record.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from msr import __version__, schema


def digest(*parts: object) -> str:
    """A stable hash of JSON-serialisable parts: the cache and stage key of every stage."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in chunks (weights and tables can be large)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, data: Any) -> None:
    """Write pretty, key-sorted JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def write_parquet(path: str | Path, table: pa.Table) -> None:
    """Write a parquet table atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class JsonlLog:
    """An append-only JSON-lines file of records keyed by a string, for resumable stages.

    A record is on disk (flushed and fsynced) before `append` returns. A torn last line, left by
    a kill mid-write, is ignored on read and truncated before the next append.
    """

    def __init__(self, path: str | Path, key: str):
        self.path = Path(path)
        self.key = key
        self.records: dict[str, dict] = {}
        self.torn_lines = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good_bytes = 0
        with self.path.open("rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    if not line.endswith(b"\n"):
                        raise ValueError("unterminated")
                except ValueError:
                    self.torn_lines += 1
                    break
                self.records[record[self.key]] = record
                good_bytes += len(line)
        if self.torn_lines:
            with self.path.open("r+b") as f:
                f.truncate(good_bytes)

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def append(self, records: list[dict]) -> None:
        """Persist `records`; each must carry the key field."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            for record in records:
                f.write((json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        for record in records:
            self.records[record[self.key]] = record


class RunDir:
    """A run directory and its manifest of completed stages."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def require(self, *names: str) -> None:
        """Fail clearly when a stage's inputs are missing, naming the command that writes them."""
        missing = [n for n in names if not self.path(n).exists()]
        if missing:
            tops = (name.split("/")[0] for name in missing)
            known = dict.fromkeys(schema.PRODUCED_BY[top] for top in tops if top in schema.PRODUCED_BY)
            hint = ", ".join(f"`{command}`" for command in known) or "e.g. `msr data prepare`"
            raise FileNotFoundError(f"{self.root}: missing {', '.join(missing)}; run the stage that produces it "
                                    f"first ({hint})")

    def manifest(self) -> dict:
        path = self.path(schema.MANIFEST_FILE)
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"stages": {}}

    def is_current(self, stage: str, config_hash: str) -> bool:
        """True when `stage` completed with this config hash and all its outputs still exist."""
        entry = self.manifest()["stages"].get(stage)
        return bool(entry) and entry["config_hash"] == config_hash and all(
            self.path(o).exists() for o in entry["outputs"]
        )

    def record(self, stage: str, config_hash: str, config: dict, outputs: list[str]) -> None:
        """Mark `stage` complete; call only after all its outputs are written."""
        manifest = self.manifest()
        manifest["stages"][stage] = {
            "config_hash": config_hash,
            "config": config,
            "outputs": outputs,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "msr_version": __version__,
        }
        write_json(self.path(schema.MANIFEST_FILE), manifest)
