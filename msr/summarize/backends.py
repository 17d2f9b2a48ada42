"""Generation backends: a local transformers model (batched) and any OpenAI-compatible server.

A backend turns prompts (each with at most one image) into texts. Both count the prompts they
send (`calls`), which is how the cache is shown to do its job: a re-run makes zero calls.
"""

from __future__ import annotations

import base64
import io
import logging
import mimetypes
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import torch
from PIL import ExifTags, Image

from msr.data.images import MAX_IMAGE_BYTES, load_rgb
from msr.deadline import client as bounded_client
from msr.models import PromptTooLongError, image_batches, load_model, max_positions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; part of every cache key (a different setting is a different summary)."""

    max_new_tokens: int = 200
    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.9
    seed: int = 0

    def key(self) -> dict:
        """The settings that change the output (temperature and top_p only matter when sampling)."""
        values = asdict(self)
        if not self.do_sample:
            for name in ("temperature", "top_p", "seed"):
                values.pop(name)
        return values


@dataclass(frozen=True)
class Request:
    """One prompt, optionally with the path of one image (attached before the text)."""

    prompt: str
    image: Path | None = None


class Backend(ABC):
    """Generates one text per request; `model_id` names the model in messages. (Cache keys come from the
    config, `SummarizeConfig.model_key`: the model's identity and the settings that change outputs.)"""

    model_id: str
    batch_size: int
    calls: int = 0

    @abstractmethod
    def _generate(self, requests: list[Request], settings: GenerationSettings) -> list[str]:
        """Texts for `requests`, in order."""

    def generate(self, requests: list[Request], settings: GenerationSettings) -> list[str]:
        self.calls += len(requests)
        return self._generate(requests, settings) if requests else []

    def batches(self, requests: list[Request]) -> list[list[int]]:
        """Indices of `requests` in batches of at most `batch_size`, in the order to send them (callers that store
        results batch by batch take them this way): as given here; a local model groups similar lengths."""
        return [list(range(lo, min(lo + self.batch_size, len(requests))))
                for lo in range(0, len(requests), self.batch_size)]


class TransformersBackend(Backend):
    """A local model, batched with left padding; VLMs get their image, text LMs text only."""

    def __init__(self, model: str, batch_size: int = 8, dtype: str = "auto", device: str = "auto",
                 load_in_4bit: bool = False, trust_remote_code: bool = False, max_pixels: int | None = None,
                 max_batch_tokens: int = 32768, max_new_tokens: int = 200):
        self.loaded = load_model(model, dtype, device, load_in_4bit, trust_remote_code, max_pixels=max_pixels)
        self.loaded.tokenizer.padding_side = "left"
        self.model_id = model
        self.batch_size = batch_size
        self.max_batch_tokens, self.max_new_tokens = max_batch_tokens, max_new_tokens

    def _generate(self, requests: list[Request], settings: GenerationSettings) -> list[str]:
        if not self.loaded.is_vlm and any(r.image for r in requests):
            raise ValueError(f"{self.model_id} is a text-only model; it cannot read images")
        out = [""] * len(requests)
        for chunk in self.batches(requests):
            for i, text in zip(chunk, self._batch([requests[i] for i in chunk], settings)):
                out[i] = text
        return out

    def batches(self, requests: list[Request]) -> list[list[int]]:
        """Prompts with an image apart from those without (one input shape per batch), each kind in order of its
        prompt's token count, so that a batch pads its prompts to similar lengths: less prefill spent on padding
        and a smaller cache; a batch is cut early where its prompts, padded to the longest, plus max_new_tokens each
        would pass max_batch_tokens (the prompt's text tokens; an image adds its own, bounded by the processor).
        Which prompts share a batch never changes a prompt's cache key."""
        tokens = self.loaded.tokenizer([r.prompt for r in requests], add_special_tokens=False)["input_ids"]
        order = sorted(range(len(requests)), key=lambda i: len(tokens[i]))
        limit = max_positions(self.loaded.model)
        if order and limit and len(tokens[order[-1]]) + self.max_new_tokens > limit:
            raise PromptTooLongError(
                f"a summary prompt of {len(tokens[order[-1]])} text tokens plus max_new_tokens {self.max_new_tokens} "
                f"passes the {limit} positions of {self.model_id}: shorten the prompt template, the titles and "
                "descriptions (msr data prepare --max_title_chars / --max_description_chars) or max_new_tokens")
        out: list[list[int]] = []
        for chunk in image_batches([requests[i].image for i in order], self.batch_size):
            batch: list[int] = []
            for i in (order[j] for j in chunk):  # ascending lengths: the newest prompt is the longest
                if batch and (len(batch) + 1) * (len(tokens[i]) + self.max_new_tokens) > self.max_batch_tokens:
                    out.append(batch)
                    batch = []
                batch.append(i)
            out.append(batch)
        return out

    @torch.inference_mode()
    def _batch(self, requests: list[Request], settings: GenerationSettings) -> list[str]:
        conversations = []
        for r in requests:
            content = [{"type": "image", "image": load_rgb(r.image)}] if r.image else []
            content.append({"type": "text", "text": r.prompt})
            conversations.append([{"role": "user", "content": content if self.loaded.is_vlm else r.prompt}])
        inputs = self.loaded.chat_inputs(conversations)
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {}
        # a static cache is written in place; generate's default (dynamic) cache concatenates every layer's keys and
        # values at every step, copying the whole cache: at 16 prompts of ~200 tokens those copies were ~40% of a
        # decoding step on a CPU. Compilation stays off: shapes change from batch to batch.
        generated = self.loaded.model.generate(
            **inputs, max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
            pad_token_id=self.loaded.tokenizer.pad_token_id, cache_implementation="static", disable_compile=True,
            **sampling)
        new_tokens = generated[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.loaded.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def image_data_url(path: Path) -> str:
    """A base64 data URL for an image file (size-checked), as chat-completions servers accept. A file whose pixels
    depend on how it is decoded (an EXIF orientation, transparency, a colour mode other than RGB or grey) is sent as
    a PNG of the pixels msr's other stages see (`load_rgb`), so the server summarizes the same picture."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"{path}: {size} bytes is over the {MAX_IMAGE_BYTES}-byte limit")
    with Image.open(path) as img:  # the header only
        plain = img.mode in ("RGB", "L") and not img.has_transparency_data and \
            img.getexif().get(ExifTags.Base.Orientation, 1) == 1
    if plain:
        mime = mimetypes.guess_type(path.name)[0] or "image/jpeg"
        return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()
    png = io.BytesIO()
    load_rgb(path).save(png, format="PNG")
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


class RemoteGenerationError(RuntimeError):
    """A request to an OpenAI-compatible server failed, after the SDK's own retries."""


class OpenAIBackend(Backend):
    """Any OpenAI-compatible chat-completions server (vLLM, SGLang, Ollama, `transformers serve`).

    `api_base` is the server's base URL including `/v1` (e.g. `http://127.0.0.1:8000/v1`); `model`
    is the server's model id; cache keys carry it with `api_base` (the weights are remote). The API key is read from the
    environment variable `api_key_env` ("EMPTY" when unset: local servers need none) and is kept
    only inside the client, never in `repr`, configs or cache keys. The `openai` SDK retries
    connection errors, 408/409/429 and 5xx with exponential back-off (`max_retries`); each attempt ends within
    `timeout` seconds in all (`msr.deadline`: a server that sends its headers or body a byte at a time is cut off
    there, not only one that stops); a request that still fails raises `RemoteGenerationError`
    (naming its index and the model), so a caller that stores results per batch keeps every
    finished batch and a re-run resumes. Up to `concurrency` requests are in flight at once;
    texts come back in request order.
    """

    def __init__(self, model: str, api_base: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 5, batch_size: int = 32):
        try:
            import openai
        except ImportError as exc:
            raise ImportError('OpenAIBackend needs the openai SDK: pip install "msr[http]"') from exc
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, got {max_retries}")
        self.model_id = model
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.timeout = timeout
        self._client = openai.OpenAI(base_url=api_base, api_key=os.environ.get(api_key_env) or "EMPTY",
                                     timeout=timeout, max_retries=max_retries,
                                     http_client=bounded_client(timeout, timeout=httpx.Timeout(timeout)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={self.model_id!r}, api_base={self.api_base!r}, "
                f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency})")

    def _generate(self, requests: list[Request], settings: GenerationSettings) -> list[str]:
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)),
                                  thread_name_prefix="msr-openai")
        try:
            futures = [pool.submit(self._one, r, settings) for r in requests]
            out = []
            for i, future in enumerate(futures):
                try:
                    out.append(future.result())
                except Exception as exc:
                    raise RemoteGenerationError(
                        f"{self.model_id} at {self.api_base}: request {i} of {len(requests)} failed: "
                        f"{type(exc).__name__}: {exc}") from exc
            return out
        finally:
            # on a failure, requests not yet started are dropped; those in flight finish (bounded by the timeout)
            pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, request: Request, settings: GenerationSettings) -> str:
        if request.image:
            content = [{"type": "image_url", "image_url": {"url": image_data_url(request.image)}},
                       {"type": "text", "text": request.prompt}]
        else:
            content = request.prompt
        sampling = ({"temperature": settings.temperature, "top_p": settings.top_p, "seed": settings.seed}
                    if settings.do_sample else {"temperature": 0.0})
        # `max_tokens`: the older name, which vLLM, SGLang, Ollama and `transformers serve` all accept (the last
        # also takes `max_completion_tokens`, which wins when both are sent)
        response = self._client.chat.completions.create(
            model=self.model_id, messages=[{"role": "user", "content": content}],
            max_tokens=settings.max_new_tokens, **sampling)
        if not response.choices:
            raise RemoteGenerationError("the response has no choices")
        text = response.choices[0].message.content
        if text is None:
            reason = response.choices[0].finish_reason
            raise RemoteGenerationError(f"the response has no text (finish_reason={reason!r})")
        return text.strip()
