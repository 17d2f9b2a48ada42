"""The run directory: where every stage reads its inputs and writes its outputs.

Writes are atomic (temp file + rename), so an interrupted stage never leaves a half-written table
that a later stage would trust. The manifest (`manifest.json`) holds, per stage, what
`msr.provenance.Stage` recorded: its config and the digests of what it read and wrote.

Append-only JSONL logs (`JsonlLog`) are flushed and fsynced per append, so a killed stage resumes
from its last record. A torn last line (a kill mid-write) is ignored on read and cut off before
the next append, so a new record is never glued onto it; any other bad line (invalid JSON or
UTF-8, not an object, no key) is skipped, counted in `bad_lines` and logged once as a warning,
and the records after it are kept.

`RunDir.lock(stage)` makes a stage the only writer of its outputs in a run directory: a second
run of the same stage on the same run directory fails at once with `StageBusyError`, naming the
pid that holds it. The lock is a POSIX `fcntl.flock` on `.locks/<stage>.lock`, which the kernel
drops when its holder exits or is killed, so it never goes stale (Windows is not supported).

`RunDir.content_digest(path)` is the sha256 of a file's bytes (or a digest over a folder's
files), cached in `.msr/digests.json` by (size, mtime_ns, inode), so checking an unchanged input
reads only its metadata. As with make, an edit that keeps a file's size, mtime and inode is not
seen; msr's own table writes replace the file (a new inode) and its logs grow, so those are.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from msr import schema

try:
    import fcntl
except ImportError:  # not POSIX (Windows): everything but `RunDir.lock` still works
    fcntl = None

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
DIGEST_CACHE_FILE = ".msr/digests.json"
_DIGEST_CACHE_VERSION = 1


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


class StageBusyError(RuntimeError):
    """Another process (or another `RunDir.lock` in this one) is running the stage in this run directory."""

    def __init__(self, stage: str, run_dir: Path, pid: int | None, lock_file: Path):
        self.stage, self.run_dir, self.pid, self.lock_file = stage, run_dir, pid, lock_file
        holder = f"pid {pid}" if pid else "a process whose pid is not yet written"
        stop = f" (kill {pid})" if pid else ""
        super().__init__(f"stage {stage!r} is already running in {run_dir} ({holder}, lock {lock_file}); wait "
                         f"for it to finish or stop it{stop}, then run again")


def _safe_name(stage: str) -> str:
    """A file name for `stage`: itself when it is plain, else a readable form plus a short hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stage).lstrip(".")
    return safe if safe == stage and safe else f"{safe or 'stage'}-{digest(stage)[:8]}"


def _read_pid(fd: int) -> int | None:
    for _ in range(5):  # the holder writes its pid just after it gets the lock
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            return None
        time.sleep(0.01)
    return None


class RunDir:
    """A run directory, its manifest of completed stages, its stage locks and its digest cache."""

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

    @contextmanager
    def lock(self, stage: str) -> Iterator[Path]:
        """Hold the lock of `stage` in this run directory for the block; yield the lock file.

        Fails at once with `StageBusyError` when another process, or another `lock` in this process,
        holds it. An advisory POSIX `fcntl.flock`: the kernel releases it when the holder exits or is
        killed, so there is never a stale lock to clean up. Different stages, or the same stage in
        different run directories, do not block each other. (On network file systems flock may not
        be shared between machines; Windows is not supported.)
        """
        if fcntl is None:
            raise NotImplementedError("RunDir.lock needs POSIX fcntl.flock (Linux, macOS); Windows is not supported")
        lock_file = self.path(LOCK_DIR) / f"{_safe_name(stage)}.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise StageBusyError(stage, self.root, _read_pid(fd), lock_file) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield lock_file
            finally:
                os.ftruncate(fd, 0)  # still held: nobody reads a pid that is gone
        finally:
            os.close(fd)  # releases the flock

    # -- content digests ---------------------------------------------------------------------------

    def _load_digest_cache(self, quiet: bool = False) -> dict[str, dict]:
        path = self.path(DIGEST_CACHE_FILE)
        try:
            stat = path.stat()
            memo = _PARSED_CACHES.get(str(path))
            if memo and memo[0] == (stat.st_size, stat.st_mtime_ns, stat.st_ino):
                return dict(memo[1])  # parsed once per change of the file, not once per digest
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict) or data.get("version") != _DIGEST_CACHE_VERSION \
                or not isinstance(data.get("files"), dict):
            if not quiet:
                log.warning("%s: unreadable digest cache, rebuilding it", path)
            return {}
        files = {name: entry for name, entry in data["files"].items() if _valid_entry(entry)}
        _PARSED_CACHES[str(path)] = ((stat.st_size, stat.st_mtime_ns, stat.st_ino), files)
        return dict(files)

    def _save_digest_cache(self, changed: dict[str, dict | None]) -> None:
        """Merge `changed` (None: forget) into the cache as it is on disk now, and write it atomically."""
        files = self._load_digest_cache(quiet=True)
        for name, entry in changed.items():
            if entry is None:
                files.pop(name, None)
            else:
                files[name] = entry
        try:
            write_json(self.path(DIGEST_CACHE_FILE), {"version": _DIGEST_CACHE_VERSION, "files": files})
        except OSError as e:  # a cache: a read-only run directory still gets correct digests
            log.warning("%s: cannot write the digest cache (%s)", self.path(DIGEST_CACHE_FILE), e)

    def content_digest(self, path: str | Path) -> str:
        """The sha256 (hex) of a file's bytes, or for a folder a digest over its files.

        A folder's digest covers each file's relative (posix) name and sha256, in sorted order,
        skipping names that start with '.' (at any depth) and '*.tmp' files (atomic writes in
        progress). Relative paths are relative to the working directory, as for `open`. Each file's
        sha256 is cached in `.msr/digests.json` under its resolved path with its size, mtime_ns
        and inode, and re-hashed only when one of them changed (an in-place edit that keeps all
        three is not seen, as with make). A corrupt cache file is ignored and rebuilt.
        """
        target = Path(path).resolve()
        if not target.exists():
            raise FileNotFoundError(f"{path}: no such file or folder to digest")
        cache = self._load_digest_cache()
        changed: dict[str, dict | None] = {}
        if target.is_dir():
            files = _folder_files(target)
            sha = hashlib.sha256(b"msr folder digest v1\n")
            for rel in files:
                sha.update(f"{rel}\0{_cached_sha256(target / rel, cache, changed)}\n".encode())
            present = {str(target / rel) for rel in files}
            prefix = str(target) + os.sep
            changed.update({name: None for name in cache if name.startswith(prefix) and name not in present
                            and not os.path.exists(name)})
            result = sha.hexdigest()
        else:
            result = _cached_sha256(target, cache, changed)
        if changed:
            self._save_digest_cache(changed)
        return result


# digest cache files as last parsed in this process, by path: (size, mtime_ns, inode) -> entries
_PARSED_CACHES: dict[str, tuple[tuple[int, int, int], dict[str, dict]]] = {}


def _valid_entry(entry: object) -> bool:
    return isinstance(entry, dict) and all(isinstance(entry.get(k), int) for k in ("size", "mtime_ns", "inode")) \
        and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _cached_sha256(path: Path, cache: dict[str, dict], changed: dict[str, dict | None]) -> str:
    """`path`'s sha256 from `cache` when its stat matches, else hashed (and put in `changed`)."""
    name = str(path)
    before = _stat_key(path)
    entry = cache.get(name)
    if entry is not None and all(entry[k] == v for k, v in before.items()):
        return entry["sha256"]
    sha = file_sha256(path)
    if _stat_key(path) == before:  # not written to while it was read: safe to trust later
        cache[name] = changed[name] = {**before, "sha256": sha}
    return sha


def _folder_files(root: Path) -> list[str]:
    """The relative posix names of the regular files under `root` (following links, each real folder
    once), sorted, without dot-names and *.tmp; dangling links, sockets and fifos are left out."""
    found, seen = [], {os.path.realpath(root)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(folder, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
        rel = Path(folder).relative_to(root)
        found += [(rel / f).as_posix() for f in files if not f.startswith(".") and not f.endswith(".tmp")
                  and os.path.isfile(os.path.join(folder, f))]
    return sorted(found)
