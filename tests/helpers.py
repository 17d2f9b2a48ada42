"""Helpers the tests import (a plain module: `from conftest import` would resolve to whichever of
the several conftest.py files pytest loaded last)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from msr.cli import main


def write_jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), colour).save(path, format="JPEG")


def write_jsonl(path: Path, rows: list, gz: bool = False, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


NO_SUMMARIES = ["--user_summary", "false", "--candidate_summary", "false"]


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, *named: str) -> str:
    """Exit 2, exactly one `msr: error:` line naming each of `named`, and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("msr: error:")]
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err, err
    for name in named:
        assert name in lines[0], lines[0]
    return lines[0]


@contextmanager
def local_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 running `handler`, for the block; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def trickle(handler: BaseHTTPRequestHandler, data: bytes, pause: float, most: int = 100) -> None:
    """Send `data` a byte at a time, `pause` seconds apart (each read well inside a client's timeout), at most `most`
    bytes whatever the client does, then close: a server only a deadline on the whole request can stop."""
    try:
        for k in range(min(most, len(data))):
            handler.wfile.write(data[k:k + 1])
            handler.wfile.flush()
            time.sleep(pause)
    except OSError:  # the client gave up
        pass
    handler.close_connection = True
