"""OpenAIBackend against a real `transformers serve` on 127.0.0.1 (a tiny random LLaVA), plus server-free checks.

The server runs the non-continuous-batching path: one `model.generate()` at a time on one inference thread, one
request per call (no padding), so greedy outputs do not depend on how many requests are in flight.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from helpers import local_server, trickle
from msr.summarize.backends import GenerationSettings, OpenAIBackend, RemoteGenerationError, Request
from msr.tiny import build_tiny_vlm

pytest.importorskip("openai", reason='OpenAIBackend needs the openai SDK (pip install "msr[http]")')

STARTUP_S = 90
GREEDY = GenerationSettings(max_new_tokens=12)
PROMPTS = [f"Title: {t}. Describe the item." for t in ("Red mug", "Blue lamp", "Poster", "Wool hat", "Scarf", "Chair")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def _write_jpeg(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (64, 48), colour).save(path, format="JPEG")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(model id, api base) of a `transformers serve` preloading a tiny VLM; stopped at the end of the module."""
    root = tmp_path_factory.mktemp("serve")
    model_dir = build_tiny_vlm(root / "tiny-llava", "llava", ["A red mug", "A blue lamp", "A wool hat"])
    # Sample by default, as many released models do: then temperature=0 must be what makes a request greedy
    # (`transformers serve` only turns sampling off for temperature == 0, it never turns it on).
    gen_config = model_dir / "generation_config.json"
    gen_config.write_text(json.dumps({**json.loads(gen_config.read_text()), "do_sample": True}))
    port = _free_port()
    log = root / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{_tail(log)}")
            try:
                # the forced model is loaded before the server starts listening, so healthy means ready
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not ready after {STARTUP_S} s:\n{_tail(log)}")
            time.sleep(0.25)
        yield str(model_dir), f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def backend(server):
    model, api_base = server
    return OpenAIBackend(model, api_base, concurrency=4, timeout=60, max_retries=1)


def test_text_and_image_requests(backend, tmp_path):
    red, blue = _write_jpeg(tmp_path / "red.jpg", (200, 30, 30)), _write_jpeg(tmp_path / "blue.jpg", (0, 0, 255))
    requests = [Request(PROMPTS[0]), Request(PROMPTS[0], red), Request(PROMPTS[0], blue), Request(PROMPTS[1])]
    texts = backend.generate(requests, GREEDY)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    assert backend.calls == 4
    # the image reaches the model (base64 data URL): same prompt, different pixels, different text
    assert len({texts[0], texts[1], texts[2]}) == 3, texts
    assert texts == backend.generate(requests, GREEDY)  # greedy is deterministic
    assert backend.calls == 8
    assert backend.generate([], GREEDY) == [] and backend.calls == 8


def test_concurrent_results_in_request_order(server, tmp_path):
    model, api_base = server
    image = _write_jpeg(tmp_path / "red.jpg", (200, 30, 30))
    requests = [Request(p, image if i % 2 else None) for i, p in enumerate(PROMPTS)]
    sequential = OpenAIBackend(model, api_base, concurrency=1)
    one_by_one = [sequential.generate([r], GREEDY)[0] for r in requests]
    assert len(set(one_by_one)) > len(requests) // 2, one_by_one  # distinct enough for order to be visible
    concurrent = OpenAIBackend(model, api_base, concurrency=4)
    assert concurrent.generate(requests, GREEDY) == one_by_one
    assert sequential.calls == concurrent.calls == len(requests)


def test_max_tokens_is_honoured(backend):
    long, short = (backend.generate([Request(PROMPTS[2])], GenerationSettings(max_new_tokens=n))[0] for n in (24, 3))
    assert len(short) < len(long) and long.startswith(short), (short, long)


def test_sampling_settings_reach_the_server(backend):
    def sample(seed: int) -> str:
        settings = GenerationSettings(max_new_tokens=16, do_sample=True, temperature=1.0, top_p=1.0, seed=seed)
        return backend.generate([Request(PROMPTS[3])], settings)[0]

    # one request at a time: the server seeds torch's global generator per request, so concurrent sampled
    # requests would share it
    assert sample(1) == sample(1)
    assert len({sample(1), sample(2), sample(3)}) > 1


def test_a_failed_request_raises_with_its_index(backend, tmp_path):
    too_big = tmp_path / "huge.jpg"
    with too_big.open("wb") as f:
        f.truncate(10**9)  # sparse: over the size limit without writing a gigabyte
    with pytest.raises(RemoteGenerationError, match=r"request 1 of 2") as info:
        backend.generate([Request(PROMPTS[0]), Request(PROMPTS[0], too_big)], GREEDY)
    assert backend.model_id in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_wrong_model_raises_without_retrying(server):
    _, api_base = server
    import openai

    wrong = OpenAIBackend("no-such-model", api_base, max_retries=3)
    with pytest.raises(RemoteGenerationError, match=r"no-such-model .*request 0 of 1") as info:
        wrong.generate([Request("hello")], GREEDY)
    assert isinstance(info.value.__cause__, openai.BadRequestError)  # a 400 is final: the SDK does not retry it


def test_unreachable_server_fails_fast():
    import openai

    dead = OpenAIBackend("m", f"http://127.0.0.1:{_free_port()}/v1", timeout=2, max_retries=1)  # nothing listens
    start = time.monotonic()
    with pytest.raises(RemoteGenerationError, match=r"request 0 of 1") as info:
        dead.generate([Request("hello")], GREEDY)
    assert isinstance(info.value.__cause__, openai.APIConnectionError)
    assert time.monotonic() - start < 15  # one retry after a back-off of about a second; no hang


def test_api_key_comes_from_the_named_env_var(monkeypatch):
    secret = "sk-msr-test-0123456789"
    monkeypatch.setenv("MSR_TEST_API_KEY", secret)
    b = OpenAIBackend("org/model", "http://127.0.0.1:9/v1", api_key_env="MSR_TEST_API_KEY")
    assert b._client.api_key == secret
    assert b.model_id == "org/model"
    assert secret not in repr(b) and secret not in b.model_id
    assert all(secret not in repr(v) for k, v in vars(b).items() if k != "_client")
    monkeypatch.delenv("MSR_TEST_API_KEY")
    assert OpenAIBackend("org/model", "http://127.0.0.1:9/v1", api_key_env="MSR_TEST_API_KEY")._client.api_key == "EMPTY"


def test_missing_openai_sdk_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "msr\[http\]"'):
        OpenAIBackend("m", "http://127.0.0.1:9/v1")


def test_images_are_sent_as_every_stage_decodes_them(tmp_path: Path) -> None:
    """A plain JPEG goes as its own bytes; an EXIF-rotated one and a transparent PNG as a PNG of the pixels that
    summaries, rows and scoring see (`load_rgb`: upright, transparency on white), whatever the server's decoder."""
    import base64
    import io

    from msr.data.images import load_rgb
    from msr.summarize.backends import image_data_url

    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (20, 10), "red").save(plain)
    assert image_data_url(plain) == "data:image/jpeg;base64," + base64.b64encode(plain.read_bytes()).decode()
    rotated, clear = tmp_path / "rotated.jpg", tmp_path / "clear.png"
    image = Image.new("RGB", (20, 10), "blue")
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(rotated, exif=exif)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(clear)
    for path in (rotated, clear):
        url = image_data_url(path)
        assert url.startswith("data:image/png;base64,")
        sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert sent.tobytes() == load_rgb(path).tobytes() and sent.size == load_rgb(path).size
    assert load_rgb(rotated).size == (10, 20) and load_rgb(clear).getpixel((0, 0)) == (255, 255, 255)


def test_a_server_that_trickles_is_cut_off_at_the_timeout() -> None:
    """Each byte arrives well inside the timeout, so only a deadline on the whole request ends it."""
    from http.server import BaseHTTPRequestHandler

    class Trickle(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            trickle(self, b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n'
                          b'{"choices": []}', 0.2)  # 20 s at most

    with local_server(Trickle) as base:
        backend = OpenAIBackend("m", f"{base}/v1", timeout=1.0, max_retries=0)
        started = time.monotonic()
        with pytest.raises(RemoteGenerationError, match="Timeout|timed out"):
            backend.generate([Request("hi")], GenerationSettings(max_new_tokens=2))
        assert time.monotonic() - started < 3
