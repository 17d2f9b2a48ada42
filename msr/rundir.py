"""The run directory: where every stage reads its inputs and writes its outputs.

Writes are atomic (temp file + rename), so an interrupted stage never leaves a half-written table
that a later stage would trust. The temp of `NAME` is `.NAME.tmp`, flocked while in use: a writer
killed between write and rename leaves it unheld, and the next write of `NAME` takes it over.
The manifest (`manifest.json`) holds, per stage, what `msr.provenance.Stage` recorded: its config
and the digests of what it read and wrote. Append-only JSONL logs live in `msr.jsonl`
(`JsonlLog`, re-exported here).

A stage that writes opens its run directory with `RunDir(...)` and holds `RunDir.lock(stage)`: the
first fails at once when `run_dir` is a file, the second when the folder is not writable, so a
wrong `--run_dir` is refused before any work, not after it.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from msr import schema
from msr.jsonl import JsonlLog

try:
    import fcntl
except ImportError:  # not POSIX (Windows): everything but `RunDir.lock` still works
    fcntl = None

__all__ = ["DIGEST_CACHE_FILE", "JsonlLog", "LOCK_DIR", "RunDir", "StageBusyError", "atomic_path", "digest",
           "file_sha256", "write_json", "write_parquet"]

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
NAME_MAX = 255  # bytes in one file name (Linux, macOS)
MANIFEST_WAIT = 60.0
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
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    The temp is `.NAME.tmp`, held under an exclusive `flock` while in use: a temp that nobody holds was
    left by a writer killed before its rename, and this write takes it over (truncated), so kills leave
    at most one temp per target and the next write of the target removes it. While another process
    writes the same target, this one writes beside it under a unique `.NAME.<random>.tmp`."""
    path = Path(path)
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise ValueError(f"{path}: its name is {len(os.fsencode(path.name))} bytes, more than a file system allows "
                         f"({NAME_MAX}); choose a shorter name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _claim_temp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _discard_temp(tmp, fd)  # while still holding it: nobody else can have claimed that name
        raise
    finally:
        if fd is not None:
            os.close(fd)  # releases the flock


def _claim_temp(path: Path) -> tuple[Path, int | None]:
    """The temp path for a write of `path` and the descriptor holding its flock (None: a unique temp)."""
    stem = _short(path.name, NAME_MAX - 32)  # room for the dots, `.tmp` and mkstemp's random part
    shared = path.with_name(f".{stem}.tmp")
    while fcntl is not None:
        fd = os.open(shared, os.O_RDWR | os.O_CREAT, 0o666)  # as open() would: the umask decides
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            break  # a live writer of the same target holds it
        try:
            current = os.stat(shared).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:  # still the file at that name, not one renamed away meanwhile
            os.ftruncate(fd, 0)
            return shared, fd
        os.close(fd)
    fd, unique = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(unique), None


def _discard_temp(tmp: Path, fd: int | None) -> None:
    """Remove the temp of a failed write: a unique one, or the shared one if it is still the file we hold."""
    try:
        if fd is None or os.stat(tmp).st_ino == os.fstat(fd).st_ino:
            os.unlink(tmp)
    except FileNotFoundError:  # the block removed or renamed it itself
        pass


def write_json(path: str | Path, data: Any) -> None:
    """Write pretty, key-sorted JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def write_parquet(path: str | Path, table: pa.Table) -> None:
    """Write a parquet table atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class StageBusyError(RuntimeError):
    """Another process (or another `RunDir.lock` in this one) is running the stage in this run directory."""

    def __init__(self, stage: str, run_dir: Path, pid: int | None, lock_file: Path):
        self.stage, self.run_dir, self.pid, self.lock_file = stage, run_dir, pid, lock_file
        holder = f"pid {pid}" if pid else "a process whose pid is not yet written"
        stop = f" (kill {pid})" if pid else ""
        super().__init__(f"stage {stage!r} is already running in {run_dir} ({holder}, lock {lock_file}); wait "
                         f"for it to finish or stop it{stop}, then run again")


def _safe_name(stage: str) -> str:
    """A file name for `stage`: itself when it is plain, else a readable form plus a short hash; never longer than a
    file system allows (with `.lock` added)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stage).lstrip(".")
    name = safe if safe == stage and safe else f"{safe or 'stage'}-{digest(stage)[:8]}"
    return _short(name, NAME_MAX - 8)


def _short(name: str, limit: int) -> str:
    """`name` if it fits in `limit` bytes, else its start and a hash of the whole (the same name gives the same)."""
    if len(os.fsencode(name)) <= limit:
        return name
    head = os.fsencode(name)[:limit - 17].decode("utf-8", "ignore")
    return f"{head}-{digest(name)[:16]}"


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
        """Open (creating it when missing) the run directory `root`; a file there is a clear error."""
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"run_dir {self.root} is a file, not a folder: pass a folder (one that does "
                                     "not exist yet is created)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a folder above it is a file
            blocker = next((p for p in reversed(self.root.parents) if p.exists() and not p.is_dir()), self.root)
            raise NotADirectoryError(f"run_dir {self.root} cannot be created: {blocker} is a file, not a "
                                     "folder; pass another run_dir") from None
        except PermissionError as e:
            raise PermissionError(f"run_dir {self.root} cannot be created ({e.strerror}: {e.filename}); pass a "
                                  "run_dir in a folder you can write to") from None

    def check_writable(self) -> None:
        """Fail at once, naming the folder, when files cannot be created in the run directory: a stage
        that writes checks this before its work, not when it saves its first output."""
        try:
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as e:
            raise PermissionError(f"run_dir {self.root} is not writable ({e.strerror or e}): fix its permissions "
                                  "or pass another run_dir") from None

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
        """The record of completed stages (`{"stages": {name: entry}}`); one that is not valid JSON of that
        shape (hand-edited, or not msr's) is a ValueError naming it and the fix."""
        path = self.path(schema.MANIFEST_FILE)
        if not path.exists():
            return {"stages": {}}
        fix = "restore it, or delete it (every stage then runs again)"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not valid JSON ({e}); {fix}") from None
        stages = data.get("stages") if isinstance(data, dict) else None
        if not isinstance(stages, dict) or not all(isinstance(entry, dict) for entry in stages.values()):
            raise ValueError(f"{path}: not an msr manifest (expected {{\"stages\": {{name: {{...}}}}}}); {fix}")
        return data

    def record(self, stage: str, entry: dict) -> None:
        """Put one stage's record into the manifest: read, change and write it under a run-wide lock (waiting up to
        `MANIFEST_WAIT` seconds for another stage's commit), so that stages committing at once never drop each
        other's records. (Each stage's own lock does not cover this: different stages run side by side.)"""
        lock_file = self.path(LOCK_DIR) / "manifest.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waited_until = time.monotonic() + MANIFEST_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > waited_until:
                        raise TimeoutError(f"{lock_file}: another process has held the manifest's lock for "
                                           f"{MANIFEST_WAIT:g} s; the outputs of {stage} are written, run it "
                                           "again to record them") from None
                    time.sleep(0.02)
            manifest = self.manifest()
            manifest["stages"][stage] = entry
            write_json(self.path(schema.MANIFEST_FILE), manifest)
        finally:
            os.close(fd)  # releases the flock

    @contextmanager
    def lock(self, stage: str) -> Iterator[Path]:
        """Hold the lock of `stage` in this run directory for the block; yield the lock file.

        Fails at once with PermissionError when the run directory is not writable (`check_writable`), and
        with `StageBusyError` when another process, or another `lock` in this process, holds it. An
        advisory POSIX `fcntl.flock`: the kernel releases it when the holder exits or is killed, so
        there is never a stale lock to clean up. Different stages, or the same stage in
        different run directories, do not block each other. (On network file systems flock may not
        be shared between machines; Windows is not supported.)
        """
        if fcntl is None:
            raise NotImplementedError("RunDir.lock needs POSIX fcntl.flock (Linux, macOS); Windows is not supported")
        self.check_writable()  # every stage that writes holds its lock: a read-only run_dir fails before any work
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
