"""Atomic writes, the stage manifest, the append-only log that survives a kill, stage locks, content digests."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import msr.rundir
from msr import schema
from msr.rundir import DIGEST_CACHE_FILE, JsonlLog, RunDir, StageBusyError, atomic_path, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_json(target, {"b": 1, "a": 2})
    assert json.loads(target.read_text()) == {"a": 2, "b": 1}


def test_a_write_killed_before_its_rename_leaves_a_temp_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    script = (f"import os, signal, sys\nfrom msr.rundir import atomic_path\n"
              f"with atomic_path({str(target)!r}) as tmp:\n    tmp.write_text('half')\n"
              "    print('written', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.json.tmp"] and not target.exists()
    write_json(target, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert json.loads(target.read_text()) == {"a": 1}


def test_a_live_writer_keeps_its_temp(tmp_path: Path) -> None:
    """Two writers of one target at once: the second writes beside the first, and neither loses its file."""
    target = tmp_path / "out.json"
    with atomic_path(target) as first:
        first.write_text('"first"')
        write_json(target, "second")  # the temp of `first` is held: not taken over, not removed
        assert first.read_text() == '"first"' and json.loads(target.read_text()) == "second"
    assert json.loads(target.read_text()) == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_run_dir_that_is_a_file_or_below_one(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"run_dir .*file is a file, not a folder"):
        RunDir(tmp_path / "file")
    with pytest.raises(NotADirectoryError, match=r"cannot be created: .*file is a file"):
        RunDir(tmp_path / "file" / "run")


def test_require_names_the_missing_input(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="x.txt"):
        run.require("x.txt")


def test_jsonl_log_resumes_and_drops_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path, key="id")
    log.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with path.open("ab") as f:
        f.write(b'{"id": "c", "v"')  # a kill in the middle of a write
    again = JsonlLog(path, key="id")
    assert set(again.records) == {"a", "b"} and again.torn_lines == 1
    again.append([{"id": "c", "v": 3}])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]


def test_jsonl_log_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    script = (f"from msr.rundir import JsonlLog\nlog = JsonlLog({str(path)!r}, 'id')\n"
              "for i in range(1000):\n    log.append([{'id': str(i)}])\n    if i == 41: import os; os._exit(9)\n")
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    log = JsonlLog(path, key="id")
    assert len(log) == 42 and log.torn_lines == 0


def test_require_names_the_command_that_writes_a_missing_input(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"user_summaries.parquet, sft/train; .*\(`msr summarize users`, "
                                                r"`msr data sft`\)"):
        run.require(schema.USER_SUMMARIES_FILE, f"{schema.SFT_DIR}/train")


# -- JsonlLog: bad lines are skipped, torn last lines are cut --------------------------------------


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_bytes().splitlines()]


def test_jsonl_log_skips_a_bad_line_in_the_middle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"id": "a", "v": 1}\n{"id": "b", "v"\n{"id": "c", "v": 3}\n')
    with caplog.at_level(logging.WARNING, logger="msr.jsonl"):
        log = JsonlLog(path, key="id")
    assert set(log.records) == {"a", "c"} and log.get("c") == {"id": "c", "v": 3}
    assert log.bad_lines == 1 and log.bad_line_numbers == [2] and log.torn_lines == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "line 2" in warnings[0]
    log.append([{"id": "d"}])  # the bad line stays where it is; nothing is glued or lost
    again = JsonlLog(path, key="id")
    assert set(again.records) == {"a", "c", "d"} and again.bad_line_numbers == [2]


def test_jsonl_log_skips_several_kinds_of_bad_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log.jsonl"
    lines = [b'{"id": "a"}', b"not json", b"[1, 2]", b'"a string"', b'{"other": "x"}', b'{"id": "b"}',
             b"", b'{"id": ["unhashable"]}', b"{", b'{"id": "c"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="msr.jsonl"):
        log = JsonlLog(path, key="id")
    assert set(log.records) == {"a", "b", "c"}
    assert log.bad_lines == 7 and log.bad_line_numbers == [2, 3, 4, 5, 7, 8, 9] and log.torn_lines == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2, 3, 4, 5, 7, 8, 9" in warnings[0]


def test_jsonl_log_skips_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_bytes('{"id": "é"}\n'.encode() + b'{"id": "\xff\xfe"}\n' + b'{"id": "z"}\n')
    log = JsonlLog(path, key="id")
    assert set(log.records) == {"é", "z"} and log.bad_line_numbers == [2]


def test_jsonl_log_torn_last_line_then_append_then_reload(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    JsonlLog(path, key="id").append([{"id": "a"}, {"id": "b"}])
    with path.open("ab") as f:
        f.write(b'{"id": "c"}')  # even a complete object is torn without its newline (the kill came first)
    torn = JsonlLog(path, key="id")
    assert set(torn.records) == {"a", "b"} and torn.torn_lines == 1 and torn.bad_lines == 0
    torn.append([{"id": "c", "v": 3}, {"id": "d"}])
    assert _ids(path) == ["a", "b", "c", "d"]
    again = JsonlLog(path, key="id")
    assert set(again.records) == {"a", "b", "c", "d"} and again.get("c") == {"id": "c", "v": 3}
    assert again.torn_lines == 0 and again.bad_lines == 0


def test_jsonl_log_never_glues_a_record_onto_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path, key="id")
    log.append([{"id": "a"}])
    with path.open("ab") as f:  # torn after this log was loaded, and longer than one read-back chunk
        f.write(b'{"id": "x", "blob": "' + b"y" * 200_000)
    log.append([{"id": "b"}])
    assert _ids(path) == ["a", "b"] and path.read_bytes().endswith(b'{"id": "b"}\n')
    path.write_bytes(b'{"id": "only a fragm')  # a file that is nothing but a torn line
    fresh = JsonlLog(path, key="id")
    assert len(fresh) == 0 and fresh.torn_lines == 1
    fresh.append([{"id": "c"}])
    assert _ids(path) == ["c"] and JsonlLog(path, key="id").bad_lines == 0


def test_jsonl_log_duplicate_keys_last_wins(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path, key="id")
    log.append([{"id": "a", "v": 1}, {"id": "b", "v": 1}])
    log.append([{"id": "a", "v": 2}])
    assert log.get("a") == {"id": "a", "v": 2} and len(log) == 2
    again = JsonlLog(path, key="id")
    assert again.get("a") == {"id": "a", "v": 2} and len(again) == 2 and again.bad_lines == 0


def test_jsonl_log_refuses_a_record_without_its_key_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    log = JsonlLog(path, key="id")
    with pytest.raises(KeyError, match="'id'"):
        log.append([{"id": "a"}, {"v": 1}])
    assert not path.exists() and len(log) == 0


# -- RunDir.lock: one writer per stage and run directory --------------------------------------------


def test_lock_refuses_a_second_holder_at_once_and_names_it(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with run.lock("data.prepare") as lock_file:
        assert lock_file.parent == run.path(".locks") and lock_file.read_text().strip() == str(os.getpid())
        started = time.monotonic()
        with pytest.raises(StageBusyError) as busy, RunDir(run.root).lock("data.prepare"):
            pass
        assert time.monotonic() - started < 1
        message = str(busy.value)
        assert "'data.prepare'" in message and str(run.root) in message and f"pid {os.getpid()}" in message
        assert "wait" in message and "stop it" in message
        assert isinstance(busy.value, RuntimeError) and busy.value.pid == os.getpid()
        with run.lock("data.sft"), RunDir(tmp_path / "other").lock("data.prepare"):
            pass  # other stages, and the same stage elsewhere, are free
    with run.lock("data.prepare"):  # released on leaving the block, also on an exception
        pass
    with pytest.raises(ValueError), run.lock("data.prepare"):
        raise ValueError("stage failed")
    with run.lock("data.prepare"):
        pass


def test_lock_file_names_are_safe_and_distinct(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with run.lock("a/b"), run.lock("a_b"), run.lock("../up"), run.lock(""):
        names = sorted(p.name for p in run.path(".locks").iterdir())
    assert len(names) == 4 and all("/" not in n and not n.startswith(".") for n in names)
    assert list(tmp_path.parent.glob("up*.lock")) == []


def test_lock_does_not_outlive_a_killed_holder(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    script = (f"import sys, time\nfrom msr.rundir import RunDir\nwith RunDir({str(run.root)!r}).lock('score'):\n"
              "    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StageBusyError, match=f"pid {holder.pid}"), run.lock("score"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    with run.lock("score") as lock_file:  # at once: the kernel dropped the dead holder's lock
        assert lock_file.read_text().strip() == str(os.getpid())


# -- RunDir.content_digest: cached content digests ---------------------------------------------------


@pytest.fixture
def sha_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files `content_digest` actually reads, in order."""
    calls: list[Path] = []
    real = msr.rundir.file_sha256

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(msr.rundir, "file_sha256", counting)
    return calls


def test_content_digest_of_a_file_is_its_sha256_and_cached(tmp_path: Path, sha_calls: list[Path]) -> None:
    run = RunDir(tmp_path / "run")
    data = tmp_path / "weights.bin"
    data.write_bytes(os.urandom(3 << 20))
    assert run.content_digest(data) == hashlib.sha256(data.read_bytes()).hexdigest()
    assert len(sha_calls) == 1
    assert run.content_digest(str(data)) == hashlib.sha256(data.read_bytes()).hexdigest()
    assert RunDir(run.root).content_digest(data) == run.content_digest(data)  # a second RunDir agrees...
    assert len(sha_calls) == 1  # ...from the cache: an unchanged file is not read again
    cache = json.loads(run.path(DIGEST_CACHE_FILE).read_text())
    assert set(cache["files"]) == {str(data.resolve())}


def test_content_digest_sees_edits(tmp_path: Path, sha_calls: list[Path]) -> None:
    run = RunDir(tmp_path)
    data = tmp_path / "table.txt"
    data.write_text("one")
    first = run.content_digest(data)
    data.write_text("three")  # another size
    second = run.content_digest(data)
    assert second != first and second == hashlib.sha256(b"three").hexdigest()
    st = data.stat()
    data.write_text("THREE")  # same size, in place: seen through the mtime
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert run.content_digest(data) == hashlib.sha256(b"THREE").hexdigest()
    st = data.stat()
    write_json(data, 1234)  # an atomic replace (a new inode), even with the old size and mtime
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run.content_digest(data) == hashlib.sha256(b"1234\n").hexdigest()
    assert len(sha_calls) == 4


def test_content_digest_of_a_folder(tmp_path: Path, sha_calls: list[Path]) -> None:
    run = RunDir(tmp_path / "run")
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "w.bin").write_bytes(b"w" * 1000)
    base = run.content_digest(model)
    assert len(sha_calls) == 2
    assert run.content_digest(model) == base and RunDir(run.root).content_digest(model) == base
    assert len(sha_calls) == 2  # unchanged: nothing re-read
    (model / ".hidden").write_text("x")  # dot-names and temp files are not content
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("x")
    (model / "part.tmp").write_text("x")
    assert run.content_digest(model) == base and len(sha_calls) == 2

    (model / "extra.txt").write_text("new")
    added = run.content_digest(model)
    assert added != base and len(sha_calls) == 3
    (model / "extra.txt").unlink()
    assert run.content_digest(model) == base
    (model / "sub" / "w.bin").write_bytes(b"v" * 1001)
    edited = run.content_digest(model)
    assert edited != base
    (model / "sub" / "w.bin").rename(model / "w.bin")  # the same bytes under another name
    assert run.content_digest(model) not in (base, edited)
    cached = json.loads(run.path(DIGEST_CACHE_FILE).read_text())["files"]
    assert str(model.resolve() / "extra.txt") not in cached and str(model.resolve() / "w.bin") in cached


def test_content_digest_folder_follows_links_once(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "loop").symlink_to(folder)  # a loop is walked once, not forever
    (folder / "dangling").symlink_to(tmp_path / "gone")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "a.txt").write_text("a")
    assert run.content_digest(folder) == run.content_digest(alone)


def test_content_digest_rebuilds_a_corrupt_cache(tmp_path: Path, sha_calls: list[Path]) -> None:
    run = RunDir(tmp_path / "run")
    data = tmp_path / "x.txt"
    data.write_text("x")
    expected = hashlib.sha256(b"x").hexdigest()
    run.path(DIGEST_CACHE_FILE).parent.mkdir()
    for junk in (b"{ not json", b"[]", b'{"version": 1, "files": {"a": {"size": "big"}}}', b"\xff\xfe", b""):
        run.path(DIGEST_CACHE_FILE).write_bytes(junk)
        assert run.content_digest(data) == expected
    assert json.loads(run.path(DIGEST_CACHE_FILE).read_text())["files"][str(data.resolve())]["sha256"] == expected
    calls = len(sha_calls)
    assert run.content_digest(data) == expected and len(sha_calls) == calls
    assert [p for p in run.path(".msr").iterdir() if p.name != "digests.json"] == []  # no temp files left


def test_content_digest_relative_paths_and_missing_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = RunDir("run")
    Path("in.txt").write_text("in")
    assert run.content_digest("in.txt") == run.content_digest(tmp_path / "in.txt") == hashlib.sha256(b"in").hexdigest()
    with pytest.raises(FileNotFoundError, match="nope"):
        run.content_digest("nope.txt")


def test_stages_committing_at_once_keep_every_record(tmp_path: Path) -> None:
    """Two processes commit different stages side by side (each stage's own lock does not cover this): every record
    lands. Without the manifest's run-wide lock, one commit read the manifest before the other wrote it, and one
    record was lost."""
    script = ("import sys\nfrom msr.provenance import Stage\nfrom msr.rundir import RunDir\n"
              "run = RunDir(sys.argv[1])\n"
              "for k in range(40):\n"
              "    Stage(run, f'{sys.argv[2]}.{k}', {'k': k}).commit()\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), name]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    stages = RunDir(tmp_path).manifest()["stages"]
    assert sorted(stages) == sorted(f"{name}.{k}" for name in ("a", "b") for k in range(40))


def test_long_names_get_temps_and_locks_that_fit_or_one_clear_error(tmp_path: Path) -> None:
    """A 240-byte output name is legal, but `.NAME.tmp` and `.NAME.<random>.tmp` beside it were not (ENAMETOOLONG
    traceback); a stage named after a long output likewise for its lock file."""
    target = tmp_path / ("x" * 240 + ".json")
    write_json(target, {"a": 1})
    with atomic_path(target) as tmp, atomic_path(target) as other:  # the shared temp, and the unique one beside it
        assert len(tmp.name) <= 255 and len(other.name) <= 255 and tmp != other
        tmp.write_text("{}")
        other.write_text("{}")
    assert json.loads(target.read_text()) == {} and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    with pytest.raises(ValueError, match="300 bytes, more than a file system allows"):
        write_json(tmp_path / ("y" * 300), {})
    with RunDir(tmp_path).lock("score." + "z" * 300) as lock:
        assert len(lock.name) <= 255
