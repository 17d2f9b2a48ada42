"""A total deadline for HTTP requests made through httpx.

httpx bounds each connect, read and write by its timeout, never a whole request: a server that sends its headers or
its body one byte a second keeps a request alive for ever, one short read after another. Here every socket operation
of a request made inside `deadline(seconds)` (in the same thread) is given at most the time left, and none starts
once it has run out, so the request fails with `httpx.TimeoutException` by then, whatever the server does. Clients
get it through `client()`, an `httpx.Client` whose connection pools do their I/O through this module's network
backend (httpcore's own, wrapped).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

_local = threading.local()


class DeadlineExceeded(httpcore.ReadTimeout):
    """The request's deadline passed (httpx reports it as `httpx.ReadTimeout`, a `TimeoutException`)."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Requests this thread makes inside the block end within `seconds` of its start (a nested block can only
    shorten the time left)."""
    previous = getattr(_local, "at", None)
    at = time.monotonic() + seconds
    _local.at = at if previous is None else min(previous, at)
    try:
        yield
    finally:
        _local.at = previous


def left() -> float | None:
    """Seconds left before this thread's deadline (0 once passed; None outside `deadline`)."""
    at = getattr(_local, "at", None)
    return None if at is None else max(0.0, at - time.monotonic())


def _bounded(timeout: float | None) -> float | None:
    at = getattr(_local, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # a large body (an image sent as a data URL) is one write: it too gets at most the time left
        self._stream.write(buffer, _bounded(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, _bounded(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend):
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self._backend.connect_tcp(host, port, _bounded(timeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self._backend.connect_unix_socket(path, _bounded(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _Client(httpx.Client):
    """An httpx client whose every `send` (one request, its body read unless streamed) ends within
    `request_seconds`, when set."""

    request_seconds: float | None = None

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if self.request_seconds is None:
            return super().send(request, **kwargs)
        with deadline(self.request_seconds):
            return super().send(request, **kwargs)


def client(request_seconds: float | None = None, **kwargs: Any) -> httpx.Client:
    """An `httpx.Client(**kwargs)` (environment proxies included) whose requests honour `deadline`, and each of
    which ends within `request_seconds` when given (an SDK that retries gets that bound per attempt). httpx does
    not pass a network backend through to httpcore; each of the client's transports holds an httpcore pool (plain,
    HTTP or SOCKS proxy) that takes one, so it is set there."""
    out = _Client(**kwargs)
    out.request_seconds = request_seconds
    transports = [out._transport, *(t for t in out._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
            out.close()
            raise RuntimeError(f"httpx {httpx.__version__} builds its transports differently: msr cannot bound a "
                               "request in time with it (install the httpx version msr's pyproject asks for)")
        if not isinstance(pool._network_backend, _Backend):
            pool._network_backend = _Backend(pool._network_backend)
    return out
