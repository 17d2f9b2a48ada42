"""`msr data images`: download one image per catalog item into the folder `msr data prepare` reads.

Each image is stored as `file_stem(item_id)` + the extension of its decoded format (`.jpg`, `.png`,
`.webp`; any other decodable format is re-encoded as PNG), exactly where
`msr.data.images.image_for_id` looks; an item id is never used as a path. The run is:

* bounded: one `httpx.Client` (connection limits = `concurrency`) shared by a thread pool of
  `concurrency` workers, a per-operation `timeout` and a `deadline` for each image as a whole (connecting,
  redirects, headers, body and retries: a server that trickles bytes is cut off there, `msr.deadline`), an
  optional global `rps` limit, a body cap `max_bytes` enforced while streaming on the bytes as decoded (a
  compressed body is inflated in bounded steps, so a small gzip bomb stops at `max_bytes`; a huge Content-Length
  is refused before reading);
* checked: http(s) only, redirects followed by hand and only to http(s) (at most 5), every body
  decoded by PIL (`verify()`, then a full `load()`; PIL's decompression-bomb pixel guard is kept);
* resumable: each image is written atomically (`msr.rundir.atomic_path`), an item whose image is
  already in the folder is skipped, failures are logged per item in `failures.jsonl` and skipped on
  a re-run unless `--retry_failed`.

Retries (`max_retries`, exponential back-off from `backoff` seconds; a Retry-After of at most
`max_retry_after` seconds is honoured) happen on 429, 5xx, timeouts and connection errors.
The stage lock (`data.images`) is held only when `run_dir` is given (`one_writer`); without it two
processes on the same folder cannot corrupt an image (atomic writes) but may fetch the same one twice.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from msr import __version__, schema
from msr.data import images
from msr.data.loaders import _json_lines, clean_id
from msr.data.fetch import Failure, RateLimiter, fetch, url_scheme
from msr.deadline import client as bounded_client
from msr.provenance import one_writer
from msr.rundir import JsonlLog, RunDir, atomic_path, write_json

log = logging.getLogger(__name__)
STAGE = "data.images"
DOWNLOAD_FORMATS = ("amazon2018", "amazon2023", "generic")
DEFAULT_PREFER = {"amazon2018": ["imageURLHighRes", "imageURL"], "amazon2023": ["hi_res", "large"],
                  "generic": ["image"]}
SUMMARY_FILE, RUN_SUMMARY_FILE, FAILURES_FILE = ".msr_images.json", "images_stats.json", "failures.jsonl"
MAX_SECONDS = 86400.0
_EXT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


@dataclass
class ImagesConfig:
    """Which catalog, where its images go, and how hard to pull."""

    items: str = field(metadata={"help": "Item metadata JSON lines (plain or gzipped): Amazon meta_*.jsonl(.gz) "
                                         "or generic items jsonl (id, image: an http(s) URL)."})
    image_dir: str = field(metadata={"help": "Folder to write `{file_stem(item_id)}.{jpg,png,webp}` into (the "
                                             "--image_dir of `msr data prepare`)."})
    format: str = field(default="amazon2023", metadata={"help": f"One of {', '.join(DOWNLOAD_FORMATS)}."})
    run_dir: str | None = field(default=None, metadata={"help": "Only the items of this run's items.parquet "
                                "(after `msr data prepare`); the summary and failure log go there."})
    prefer: list[str] = field(default_factory=list, metadata={"help": "Image fields in order of preference "
                              "(default: amazon2018 imageURLHighRes imageURL; amazon2023 hi_res large; "
                              "amazon2023 always tries the MAIN variant first)."})
    concurrency: int = field(default=16, metadata={"help": "Parallel downloads (threads and connections)."})
    timeout: float = field(default=10.0, metadata={"help": "Seconds per connect/read/write operation."})
    deadline: float = field(default=60.0, metadata={"help": "Seconds for one image in all: connecting, redirects, "
                            "headers, body and retries (a server that sends a byte at a time is cut off here)."})
    max_retries: int = field(default=3, metadata={"help": "Retries on 429, 5xx, timeouts and connection errors."})
    backoff: float = field(default=0.5, metadata={"help": "First retry delay in seconds (doubles each retry)."})
    max_retry_after: float = field(default=30.0, metadata={"help": "Honour a Retry-After up to this many seconds "
                                   "(a longer one falls back to the back-off)."})
    rps: float = field(default=0.0, metadata={"help": "At most this many requests per second overall (0: no limit)."})
    max_bytes: int = field(default=16 * 1024 * 1024, metadata={"help": "Refuse a body larger than this."})
    retry_failed: bool = field(default=False, metadata={"help": "Retry the items in the failure log (else they "
                               "are skipped and counted as skipped_failed)."})
    limit: int = field(default=0, metadata={"help": "Fetch at most this many items this run (0: all)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def validate(self) -> None:
        if self.format not in DOWNLOAD_FORMATS:
            raise ValueError(f"format: {self.format!r} is not one of {', '.join(DOWNLOAD_FORMATS)}")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        for name in ("timeout", "deadline"):
            if not 0 < getattr(self, name) <= MAX_SECONDS:
                raise ValueError(f"{name} must be > 0 and at most {MAX_SECONDS:g} seconds, got {getattr(self, name)}")
        for name in ("max_retries", "backoff", "max_retry_after", "rps", "limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")

    def fields(self) -> list[str]:
        return list(self.prefer) or DEFAULT_PREFER[self.format]


# ---------------------------------------------------------------------------------------------
# which URL


def _first(value: object) -> str | None:
    """The first non-empty string of a list field (or the string itself)."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (list, tuple)):
        for v in value:
            if isinstance(v, str) and v.strip():
                return v.strip()
    return None


def image_url(fmt: str, record: dict, prefer: list[str]) -> str | None:
    """The URL to fetch for one metadata record, or None."""
    if fmt == "amazon2023":
        entries = [e for e in (record.get("images") or []) if isinstance(e, dict)]
        entries.sort(key=lambda e: str(e.get("variant", "")).upper() != "MAIN")  # stable: MAIN first
        for entry in entries:
            for key in prefer:
                url = _first(entry.get(key))
                if url:
                    return url
        return None
    for key in prefer:  # amazon2018 (lists of URLs), generic (one string)
        url = _first(record.get(key))
        if url:
            if fmt == "generic" and url_scheme(url) not in ("http", "https", None):
                return None  # a local relative path: nothing to download
            return url
    return None


def catalog(cfg: ImagesConfig, counts: Counter) -> Iterator[tuple[str, str | None]]:
    """(item id, URL or None) per metadata record, first record per id."""
    key = {"amazon2018": "asin", "amazon2023": "parent_asin", "generic": "id"}[cfg.format]
    seen: set[str] = set()
    prefer = cfg.fields()
    for record in _json_lines(Path(cfg.items), counts, "item"):
        item = clean_id(record.get(key))
        if item is None:
            counts["missing_id_item_rows"] += 1
            continue
        if item in seen:
            counts["duplicate_item_rows"] += 1
            continue
        seen.add(item)
        yield item, image_url(cfg.format, record, prefer)


# ---------------------------------------------------------------------------------------------
# storing


def decode(data: bytes) -> tuple[bytes, str]:
    """The bytes to store and their extension, after PIL decoded them; raises Failure('not_an_image')."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        with Image.open(io.BytesIO(data)) as img:  # verify() leaves the image unusable: reopen
            img.load()
            ext = _EXT.get(img.format or "")
            if ext is None:  # decodable but not a format the reader looks for (GIF, BMP, ...)
                out = io.BytesIO()
                img.convert("RGBA" if "A" in img.getbands() else "RGB").save(out, format="PNG")
                return out.getvalue(), ".png"
    except Exception:  # PIL raises many types for non-images, truncation and decompression bombs
        raise Failure("not_an_image") from None
    return data, ext


def download_one(client: httpx.Client, item: str, url: str, cfg: ImagesConfig, limiter: RateLimiter) -> int:
    """Fetch, check and store one item's image; the number of bytes written. Raises Failure."""
    data, ext = decode(fetch(client, url, cfg, limiter))
    folder = Path(cfg.image_dir)
    stem = images.file_stem(item)
    assert "/" not in stem and "\\" not in stem and ".." not in stem  # file_stem's contract: one name in `folder`
    target = folder / f"{stem}{ext}"
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return len(data)


# ---------------------------------------------------------------------------------------------
# the stage


def _selected_items(cfg: ImagesConfig) -> set[str] | None:
    if not cfg.run_dir:
        return None
    run = RunDir(cfg.run_dir)
    run.require(schema.ITEMS_FILE)
    return set(pd.read_parquet(run.path(schema.ITEMS_FILE), columns=[schema.ITEM])[schema.ITEM].astype(str))


def _run(cfg: ImagesConfig) -> dict:
    if not Path(cfg.items).is_file():
        raise FileNotFoundError(f"items file not found: {cfg.items}")
    folder = Path(cfg.image_dir)
    folder.mkdir(parents=True, exist_ok=True)
    out_dir = Path(cfg.run_dir) if cfg.run_dir else folder
    summary_path = out_dir / (RUN_SUMMARY_FILE if cfg.run_dir else SUMMARY_FILE)
    failures_log = JsonlLog(out_dir / FAILURES_FILE, key="item")
    failures: dict[str, dict] = dict(failures_log.records)
    wanted = _selected_items(cfg)

    counts: Counter = Counter()
    reasons: Counter = Counter()
    todo: list[tuple[str, str]] = []
    selected = present = 0
    for item, url in catalog(cfg, counts):
        if wanted is not None and item not in wanted:
            continue
        selected += 1
        if images.image_for_id(folder, item) is not None:
            counts["skipped_existing"] += 1
            present += 1
            failures.pop(item, None)
        elif url is None:
            reasons["no_url"] += 1
            failures[item] = {"item": item, "url": None, "reason": "no_url"}
        elif item in failures and not cfg.retry_failed:
            counts["skipped_failed"] += 1
            reasons[failures[item]["reason"]] += 1
        else:
            todo.append((item, url))
    if cfg.limit:
        counts["deferred_by_limit"] += max(0, len(todo) - cfg.limit)
        todo = todo[:cfg.limit]
    if wanted is not None:
        counts["run_items_not_in_metadata"] = len(wanted) - selected

    limiter = RateLimiter(cfg.rps)
    started = time.monotonic()
    written_bytes = 0
    http = bounded_client(timeout=httpx.Timeout(cfg.timeout), follow_redirects=False,
                          limits=httpx.Limits(max_connections=cfg.concurrency,
                                              max_keepalive_connections=cfg.concurrency),
                          headers={"User-Agent": f"msr/{__version__} (+msr data images)",
                                   "Accept-Encoding": "identity"})
    pool = ThreadPoolExecutor(max_workers=cfg.concurrency)
    bar = tqdm(total=len(todo), desc="images", unit="img", disable=not cfg.progress)
    try:
        futures = {pool.submit(download_one, http, item, url, cfg, limiter): (item, url) for item, url in todo}
        for future in as_completed(futures):
            item, url = futures[future]
            try:
                size = future.result()
            except Failure as f:
                record = {"item": item, "url": url, "reason": f.reason}
                failures[item] = record
                reasons[f.reason] += 1
                failures_log.append([record])
            else:
                counts["downloaded"] += 1
                present += 1
                written_bytes += size
                failures.pop(item, None)
            bar.update(1)
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)  # a KeyboardInterrupt stops queued items at once
        http.close()
    seconds = time.monotonic() - started

    with atomic_path(out_dir / FAILURES_FILE) as tmp:  # only what still fails (a fixed item leaves the log)
        tmp.write_text("".join(json.dumps(r) + "\n" for r in failures.values()), encoding="utf-8")
    summary = {
        "format": cfg.format, "items": cfg.items, "image_dir": str(folder), "run_dir": cfg.run_dir,
        "selected_items": selected, "attempted": len(todo), "downloaded": counts["downloaded"],
        "skipped_existing": counts["skipped_existing"], "skipped_failed": counts["skipped_failed"],
        "failed": sum(reasons.values()) - counts["skipped_failed"],
        "failures_by_reason": dict(sorted(reasons.items())),
        "image_coverage": present / selected if selected else 0.0,
        "bytes": written_bytes, "seconds": round(seconds, 3),
        "images_per_s": round(counts["downloaded"] / seconds, 2) if seconds > 0 else 0.0,
        "metadata": {k: v for k, v in counts.items()
                     if k.endswith("_item_rows") or k in ("deferred_by_limit",
                              "run_items_not_in_metadata")},
        "failure_log": str(out_dir / FAILURES_FILE),
    }
    write_json(summary_path, summary)
    log.info("%s: %d downloaded, %d already there, %d failed, %d skipped as failed before; coverage %.1f%%",
             STAGE, summary["downloaded"], summary["skipped_existing"], summary["failed"],
             summary["skipped_failed"], 100 * summary["image_coverage"])
    return summary


_locked_run = one_writer(STAGE)(_run)


def download_images(cfg: ImagesConfig) -> dict:
    """Run the stage; with a run_dir it holds the `data.images` lock there. Returns the summary."""
    return _locked_run(cfg) if cfg.run_dir else _run(cfg)
