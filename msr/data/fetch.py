"""Fetching one URL for `msr data images`, bounded: redirects followed by hand (http(s) only, at most
`MAX_REDIRECTS`), the body capped at `max_bytes` as decoded (a compressed body inflated in bounded steps), every
attempt and retry inside the image's `deadline` (`msr.deadline`), retries with back-off on 429, 5xx, timeouts and
connection errors. Failures are `Failure(reason)`, the reasons of the failure log."""

from __future__ import annotations

import threading
import time
import zlib
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import httpx

from msr.deadline import deadline, left

if TYPE_CHECKING:
    from msr.data.download import ImagesConfig

MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)


def url_scheme(url: str) -> str | None:
    """The URL's scheme in lower case; None for a string that is not a URL at all (e.g. `http://[::1`)."""
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:
        return None


class Failure(Exception):
    """A download that did not give an image; `reason` is one of the failure-log reasons."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class RateLimiter:
    """At most `rps` acquisitions per second across threads (0: unlimited)."""

    def __init__(self, rps: float):
        self.interval = 1.0 / rps if rps > 0 else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next)
            self.next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


def _get_once(client: httpx.Client, url: str, cfg: ImagesConfig, limiter: RateLimiter) -> bytes:
    """One GET with redirects followed by hand; raises Failure (retryable or not) or httpx errors."""
    for hop in range(MAX_REDIRECTS + 1):
        scheme = url_scheme(url)
        if scheme is None:
            raise Failure("bad_url")
        if scheme not in ("http", "https"):
            raise Failure("bad_scheme")
        limiter.wait()
        with client.stream("GET", url, follow_redirects=False) as response:
            code = response.status_code
            if code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise Failure(f"http_{code}")
                try:
                    url = urljoin(url, location)
                except ValueError:
                    raise Failure("bad_url") from None
                continue
            if code == 429 or code >= 500:
                raise Failure(f"http_{code}", _retry_after(response))
            if code != 200:
                raise Failure(f"http_{code}")
            length = response.headers.get("content-length")
            if length and length.isdigit() and int(length) > cfg.max_bytes:
                raise Failure("too_large")
            return _body(response, cfg.max_bytes)
    raise Failure("redirect_loop")


_INFLATE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def _body(response: httpx.Response, cap: int) -> bytes:
    """The body as the server meant it (its Content-Encoding undone), refused as soon as any stage of it passes
    `cap` bytes: inflation runs in steps of at most what is left, so a few KB of nested gzip never become GBs.
    (msr asks for `identity`; a server may compress anyway.)"""
    codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if any(c not in _INFLATE for c in codings):
        raise Failure("bad_encoding")
    stages = [zlib.decompressobj(_INFLATE[c]) for c in reversed(codings)]  # the last applied is undone first
    body = bytearray()

    def push(data: bytes, k: int) -> None:
        if k == len(stages):
            body.extend(data)
            if len(body) > cap:
                raise Failure("too_large")
            return
        stage = stages[k]
        while data:
            out = stage.decompress(data, cap + 1)
            if len(out) > cap:
                raise Failure("too_large")
            push(out, k + 1)
            data = stage.unconsumed_tail

    try:
        for chunk in response.iter_raw():
            push(chunk, 0)
        for k, stage in enumerate(stages):
            push(stage.flush(), k + 1)
    except zlib.error:
        raise Failure("bad_encoding") from None
    return bytes(body)


RETRYABLE = ("timeout", "connection")


def fetch(client: httpx.Client, url: str, cfg: ImagesConfig, limiter: RateLimiter) -> bytes:
    """The body at `url`, retried with exponential back-off, all within `cfg.deadline` seconds; raises Failure with
    the final reason ("deadline" when the time ran out)."""
    attempt = 0
    with deadline(cfg.deadline):
        while True:
            try:
                return _get_once(client, url, cfg, limiter)
            except Failure as f:
                failure = f
            except httpx.TimeoutException:
                failure = Failure("deadline" if left() == 0 else "timeout")
            except (httpx.TransportError, httpx.StreamError):  # refused, reset, truncated body, bad protocol
                failure = Failure("connection")
            except httpx.InvalidURL:
                raise Failure("bad_url") from None
            code = failure.reason[5:] if failure.reason.startswith("http_") else ""
            retryable = failure.reason in RETRYABLE or code == "429" or (code.isdigit() and int(code) >= 500)
            if not retryable or attempt >= cfg.max_retries:
                raise failure
            delay = cfg.backoff * (2 ** attempt)
            if failure.retry_after is not None and failure.retry_after <= cfg.max_retry_after:
                delay = max(delay, failure.retry_after)
            if delay >= left():
                raise Failure("deadline")
            time.sleep(delay)
            attempt += 1
