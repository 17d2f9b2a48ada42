"""`msr data images` against a real HTTP server on 127.0.0.1: formats, failures by reason, resume."""

from __future__ import annotations

import gzip
import io
import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from helpers import local_server, trickle, write_jsonl
from msr import schema
from msr.cli import main
from msr.data import download
from msr.data.download import ImagesConfig, download_images, image_url
from msr.data.images import file_stem, image_for_id
from msr.data.prepare import PrepareConfig, prepare


def _image(fmt: str, colour=(10, 120, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, format=fmt)
    return out.getvalue()


JPEG, PNG, WEBP = _image("JPEG"), _image("PNG"), _image("WEBP")


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}
    hits: dict = {}

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "image/jpeg", headers: dict | None = None,
              length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        n = self.hits[path] = self.hits.get(path, 0) + 1
        route = self.routes.get(path)
        if route is None:
            return self._send(404, b"not found", "text/plain")
        kind = route[0]
        if kind == "ok":
            return self._send(200, route[1])
        if kind == "flaky":  # 500 first, then the image
            return self._send(500, b"oops", "text/plain") if n == 1 else self._send(200, route[1])
        if kind == "busy":  # 429 with a small Retry-After first, then the image
            if n == 1:
                return self._send(429, b"slow down", "text/plain", {"Retry-After": str(route[1])})
            return self._send(200, JPEG)
        if kind == "slow":
            time.sleep(route[1])
            return self._send(200, JPEG)
        if kind == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(JPEG) + 1000))
            self.end_headers()
            self.wfile.write(JPEG[:50])
            self.wfile.flush()
            self.close_connection = True
            return None
        if kind == "huge_length":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(10 ** 12))
            self.end_headers()
            self.close_connection = True
            return None
        if kind == "redirect":
            return self._send(302, b"", "text/plain", {"Location": route[1]})
        if kind == "encoded":  # a body under Content-Encoding route[2] (msr asked for identity: a hostile server)
            return self._send(200, route[1], headers={"Content-Encoding": route[2]})
        if kind in ("trickle_body", "trickle_headers"):  # one byte per 0.1 s, each read well inside the timeout
            head = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 3000\r\n\r\n"
            data = head + JPEG * 10 if kind == "trickle_headers" else JPEG * 10
            if kind == "trickle_body":
                self.wfile.write(head)
            return trickle(self, data, 0.1)  # 10 s at most
        raise AssertionError(kind)


@pytest.fixture()
def server():
    _Handler.routes, _Handler.hits = {}, {}
    with local_server(_Handler) as base:
        yield base, _Handler


def _cfg(tmp_path: Path, meta: Path, fmt: str = "amazon2023", **kw) -> ImagesConfig:
    values = dict(items=str(meta), image_dir=str(tmp_path / "images"), format=fmt, timeout=0.5,
                  max_retries=1, backoff=0.01, concurrency=4, progress=False)
    values.update(kw)
    cfg = ImagesConfig(**values)
    cfg.validate()
    return cfg


def _meta2023(path: Path, urls: dict[str, str | None], gz: bool = True) -> Path:
    rows = [{"parent_asin": item, "title": f"t{item}",
             "images": [{"variant": "MAIN", "hi_res": url, "large": None, "thumb": None}] if url else []}
            for item, url in urls.items()]
    return write_jsonl(path, rows, gz=gz)


def _failures(path: Path) -> dict[str, dict]:
    return {r["item"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_url_choice_per_format() -> None:
    r18 = {"asin": "A", "imageURL": ["http://x/small.jpg"], "imageURLHighRes": ["", "http://x/big.jpg"]}
    assert image_url("amazon2018", r18, ["imageURLHighRes", "imageURL"]) == "http://x/big.jpg"
    assert image_url("amazon2018", {"imageURL": ["http://x/s.jpg"]}, ["imageURLHighRes", "imageURL"]) == \
        "http://x/s.jpg"
    r23 = {"images": [{"variant": "PT01", "hi_res": "http://x/pt.jpg"},
                      {"variant": "MAIN", "hi_res": None, "large": "http://x/main-large.jpg"}]}
    assert image_url("amazon2023", r23, ["hi_res", "large"]) == "http://x/main-large.jpg"
    assert image_url("amazon2023", {"images": []}, ["hi_res", "large"]) is None
    assert image_url("generic", {"image": "https://x/a.png"}, ["image"]) == "https://x/a.png"
    assert image_url("generic", {"image": "covers/a.png"}, ["image"]) is None


def test_downloads_checks_and_reports_by_reason(server, tmp_path: Path) -> None:
    base, handler = server
    big = _image("PNG", (1, 2, 3)) + b"\0" * 5000  # decodable, but over the cap below
    handler.routes.update({
        "/a.jpg": ("ok", JPEG), "/b.png": ("ok", PNG), "/c.webp": ("ok", WEBP),
        "/flaky.jpg": ("flaky", JPEG), "/slow.jpg": ("slow", 1.5), "/trunc.jpg": ("truncated",),
        "/html.jpg": ("ok", b"<html><body>not an image</body></html>"), "/big.png": ("ok", big),
        "/huge.jpg": ("huge_length",), "/redir": ("redirect", "/a.jpg"),
        "/ftp": ("redirect", "ftp://127.0.0.1/a.jpg"), "/loop": ("redirect", "/loop"),
    })
    urls = {"A": "/a.jpg", "B": "/b.png", "C": "/c.webp", "FLAKY": "/flaky.jpg", "SLOW": "/slow.jpg",
            "TRUNC": "/trunc.jpg", "HTML": "/html.jpg", "BIG": "/big.png", "HUGE": "/huge.jpg",
            "REDIR": "/redir", "FTP": "/ftp", "LOOP": "/loop", "GONE": "/missing.jpg",
            "../../evil": "/a.jpg", "a/b": "/b.png"}
    meta = _meta2023(tmp_path / "meta.jsonl.gz", {k: base + v for k, v in urls.items()} | {"NOURL": None})
    meta_rows = [json.loads(line) for line in gzip.open(meta, "rt")]
    meta_rows.append({"parent_asin": "SCHEME", "images": [{"variant": "MAIN", "hi_res": "file:///etc/passwd"}]})
    write_jsonl(meta, meta_rows, gz=True)
    cfg = _cfg(tmp_path, meta, max_bytes=4000)
    started = time.monotonic()
    summary = download_images(cfg)
    assert time.monotonic() - started < 10
    folder = tmp_path / "images"
    for item, ext in (("A", ".jpg"), ("B", ".png"), ("C", ".webp"), ("FLAKY", ".jpg"), ("REDIR", ".jpg"),
                      ("../../evil", ".jpg"), ("a/b", ".png")):
        path = image_for_id(folder, item)
        assert path is not None and path.name == file_stem(item) + ext, item
        assert path.parent == folder
        Image.open(path).load()
    assert file_stem("../../evil").startswith("sha1-") and not (tmp_path / "evil.jpg").exists()
    assert handler.hits["/flaky.jpg"] == 2
    assert summary["downloaded"] == 7 and summary["selected_items"] == 17
    fails = _failures(folder / download.FAILURES_FILE)
    assert {k: v["reason"] for k, v in fails.items()} == {
        "SLOW": "timeout", "TRUNC": "connection", "HTML": "not_an_image", "BIG": "too_large",
        "HUGE": "too_large", "FTP": "bad_scheme", "LOOP": "redirect_loop", "GONE": "http_404",
        "NOURL": "no_url", "SCHEME": "bad_scheme"}
    assert fails["GONE"]["url"] == base + "/missing.jpg"
    assert summary["failures_by_reason"] == {"bad_scheme": 2, "connection": 1, "http_404": 1, "no_url": 1,
                                             "not_an_image": 1, "redirect_loop": 1, "timeout": 1, "too_large": 2}
    assert summary["failed"] == 10 and summary["image_coverage"] == pytest.approx(7 / 17)
    assert json.loads((folder / download.SUMMARY_FILE).read_text())["downloaded"] == 7
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]

    # a re-run fetches nothing: images exist, failures are skipped (and counted) unless --retry_failed
    handler.hits.clear()
    again = download_images(cfg)
    assert again["downloaded"] == 0 and again["skipped_existing"] == 7 and again["skipped_failed"] == 9
    assert handler.hits == {}
    handler.routes["/missing.jpg"] = ("ok", JPEG)
    fixed = download_images(_cfg(tmp_path, meta, max_bytes=4000, retry_failed=True))
    assert fixed["downloaded"] == 1 and image_for_id(folder, "GONE") is not None
    assert "GONE" not in _failures(folder / download.FAILURES_FILE)


def test_retry_after_429_and_rps(server, tmp_path: Path) -> None:
    base, handler = server
    handler.routes.update({f"/{i}.jpg": ("ok", JPEG) for i in range(5)})
    handler.routes["/busy.jpg"] = ("busy", 0.3)
    urls = {str(i): f"{base}/{i}.jpg" for i in range(5)} | {"BUSY": base + "/busy.jpg"}
    meta = _meta2023(tmp_path / "meta.jsonl", urls, gz=False)
    started = time.monotonic()
    summary = download_images(_cfg(tmp_path, meta, rps=20.0))
    elapsed = time.monotonic() - started
    assert summary["downloaded"] == 6 and handler.hits["/busy.jpg"] == 2
    assert elapsed >= 0.3  # the Retry-After (0.3 s) beat the 0.01 s back-off; 7 requests at 20/s take >= 0.3 s


def test_kill_and_resume(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, handler = server
    handler.routes.update({f"/{i}.jpg": ("ok", JPEG) for i in range(10)})
    meta = _meta2023(tmp_path / "meta.jsonl.gz", {f"I{i}": f"{base}/{i}.jpg" for i in range(10)})
    real_fetch, calls = download.fetch, []

    def dying_fetch(*args, **kwargs):
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real_fetch(*args, **kwargs)

    monkeypatch.setattr(download, "fetch", dying_fetch)
    with pytest.raises(KeyboardInterrupt):
        download_images(_cfg(tmp_path, meta, concurrency=1))
    folder = tmp_path / "images"
    assert sorted(p.name for p in folder.iterdir()) == [f"I{i}.jpg" for i in range(4)]  # no partial files
    monkeypatch.setattr(download, "fetch", real_fetch)
    handler.hits.clear()
    summary = download_images(_cfg(tmp_path, meta))
    assert summary["downloaded"] == 6 and summary["skipped_existing"] == 4
    assert sorted(handler.hits) == [f"/{i}.jpg" for i in range(4, 10)]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_amazon2018_and_generic_and_cli(server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base, handler = server
    handler.routes.update({"/hi.png": ("ok", PNG), "/lo.jpg": ("ok", JPEG), "/g.webp": ("ok", WEBP)})
    meta18 = write_jsonl(tmp_path / "meta18.json.gz", [
        {"asin": "X1", "imageURL": [base + "/lo.jpg"], "imageURLHighRes": [base + "/hi.png"]},
        {"asin": "X2", "imageURL": [base + "/lo.jpg"]}], gz=True)
    assert main(["data", "images", "--format", "amazon2018", "--items", str(meta18), "--image_dir",
                 str(tmp_path / "i18"), "--timeout", "0.5", "--progress", "false"]) == 0
    assert json.loads(capsys.readouterr().out)["downloaded"] == 2
    assert (tmp_path / "i18" / "X1.png").is_file() and (tmp_path / "i18" / "X2.jpg").is_file()
    generic = write_jsonl(tmp_path / "items.jsonl", [{"id": "g", "image": base + "/g.webp"},
                                                     {"id": "local", "image": "covers/local.jpg"}])
    summary = download_images(_cfg(tmp_path, generic, "generic", image_dir=str(tmp_path / "ig")))
    assert summary["downloaded"] == 1 and summary["failures_by_reason"] == {"no_url": 1}
    assert (tmp_path / "ig" / f"{file_stem('g')}.webp").is_file()
    assert main(["data", "images", "--items", str(generic), "--image_dir", str(tmp_path), "--nope", "1"]) == 2
    assert main(["data", "images", "--items", str(generic), "--image_dir", str(tmp_path),
                 "--format", "microlens"]) == 2


def test_prepare_finds_downloaded_images_and_run_dir_selects(server, tmp_path: Path) -> None:
    base, handler = server
    items = [f"P{i}" for i in range(6)]
    handler.routes.update({f"/{i}.jpg": ("ok", JPEG) for i in items})
    meta = _meta2023(tmp_path / "meta.jsonl.gz", {i: f"{base}/{i}.jpg" for i in items} | {"UNUSED": base + "/x"})
    reviews = write_jsonl(tmp_path / "reviews.jsonl.gz", [
        {"user_id": f"u{u}", "parent_asin": items[(u + k) % 6], "timestamp": 1000 * (k + 1)}
        for u in range(4) for k in range(4)], gz=True)
    run = tmp_path / "run"
    pcfg = dict(run_dir=str(run), interactions=str(reviews), items=str(meta), format="amazon2023",
                image_dir=str(tmp_path / "images"), user_min=1, item_min=1, negatives_test=1)
    (tmp_path / "images").mkdir()
    assert prepare(PrepareConfig(**pcfg))["image_coverage"] == 0.0
    summary = download_images(_cfg(tmp_path, meta, run_dir=str(run)))
    assert summary["selected_items"] == 6 and summary["downloaded"] == 6  # UNUSED is not in the run
    assert "/x" not in handler.hits
    assert json.loads((run / download.RUN_SUMMARY_FILE).read_text())["downloaded"] == 6
    assert (run / download.FAILURES_FILE).read_text() == ""
    stats = prepare(PrepareConfig(**pcfg))
    assert stats["image_coverage"] == 1.0
    frame = pd.read_parquet(run / schema.ITEMS_FILE)
    assert frame[schema.IMAGE].notna().all()


def test_run_dir_lock_and_prefer(tmp_path: Path) -> None:
    from msr.config import parse_config
    from msr.rundir import RunDir, StageBusyError

    cfg = parse_config(ImagesConfig, ["--items", "m", "--image_dir", "d", "--prefer", "large", "hi_res",
                                      "--run_dir", str(tmp_path / "run")])
    assert cfg.prefer == ["large", "hi_res"] and cfg.fields() == ["large", "hi_res"]
    with RunDir(tmp_path / "run").lock(download.STAGE):
        with pytest.raises(StageBusyError):
            download_images(cfg)


def test_config_validation(tmp_path: Path) -> None:
    for bad in (dict(concurrency=0), dict(timeout=0), dict(max_bytes=0), dict(format="microlens"),
                dict(max_retries=-1)):
        with pytest.raises(ValueError):
            _cfg(tmp_path, tmp_path / "m", **bad)


def test_hostile_servers_are_bounded_in_time_and_memory(server, tmp_path: Path) -> None:
    import tracemalloc
    import zlib

    base, handler = server
    bomb = gzip.compress(gzip.compress(b"\0" * (64 << 20)))  # a few KB that inflate to 64 MB
    deflated = zlib.compress(PNG)
    handler.routes.update({
        "/trickle.jpg": ("trickle_body",), "/headers.jpg": ("trickle_headers",),
        "/bomb.jpg": ("encoded", bomb, "gzip, gzip"), "/ok.png": ("encoded", deflated, "deflate"),
        "/br.jpg": ("encoded", JPEG, "br"), "/a.jpg": ("ok", JPEG),
    })
    urls = {"TRICKLE": base + "/trickle.jpg", "HEADERS": base + "/headers.jpg", "BOMB": base + "/bomb.jpg",
            "DEFLATED": base + "/ok.png", "BR": base + "/br.jpg", "MALFORMED": "http://[::1/a.jpg",
            "A": base + "/a.jpg", "sha1-" + "0" * 40: base + "/a.jpg"}
    meta = _meta2023(tmp_path / "meta.jsonl", urls, gz=False)
    tracemalloc.start()
    started = time.monotonic()
    try:
        summary = download_images(_cfg(tmp_path, meta, max_bytes=4000, deadline=1.0, timeout=0.5))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 4  # each trickle would take 10 s; one read never waits 0.5 s
    assert peak < 16 << 20  # the bomb stops at max_bytes, not at 64 MB
    fails = {k: v["reason"] for k, v in _failures(tmp_path / "images" / download.FAILURES_FILE).items()}
    assert fails == {"TRICKLE": "deadline", "HEADERS": "deadline", "BOMB": "too_large", "BR": "bad_encoding",
                     "MALFORMED": "bad_url"}
    assert summary["downloaded"] == 3 and Image.open(image_for_id(tmp_path / "images", "DEFLATED")).size == (16, 16)
    # two ids, two files: the id "sha1-000..." is not stored under another id's hashed name
    assert len({p.name for p in (tmp_path / "images").iterdir() if p.suffix == ".jpg"}) == 2
