"""The local transformers backend: batches of similar lengths, never mixing prompts with and without an image, and
batched greedy texts equal to one prompt at a time (left padding, the static cache) on a text LM and a VLM."""

from __future__ import annotations

import pandas as pd
import pytest

from msr import schema
from msr.models import PromptTooLongError, max_positions
from msr.summarize.backends import GenerationSettings, Request, TransformersBackend


def _requests(run, with_images: bool) -> list[Request]:
    items = pd.read_parquet(run / schema.ITEMS_FILE).head(12)
    words = "the user keeps picking striped bags and bright red mugs lately".split()
    out = []
    for k, (title, image) in enumerate(zip(items[schema.TITLE], items[schema.IMAGE])):
        prompt = f"{title}: " + " ".join(words[:1 + (7 * k) % len(words)])
        out.append(Request(prompt, run / image if with_images and image and k % 3 else None))
    return out


def test_batches_group_similar_lengths_and_never_mix_images(tiny_run_template: dict) -> None:
    backend = TransformersBackend(tiny_run_template["vlm"], batch_size=4)
    requests = _requests(tiny_run_template["run"], with_images=True)
    batches = backend.batches(requests)
    assert sorted(i for b in batches for i in b) == list(range(len(requests)))
    assert all(len(b) <= 4 for b in batches)
    assert all(len({requests[i].image is None for i in b}) == 1 for b in batches)
    tokens = [len(backend.loaded.tokenizer(r.prompt, add_special_tokens=False)["input_ids"]) for r in requests]
    for kind in (True, False):
        lengths = [tokens[i] for b in batches for i in b if (requests[i].image is None) == kind]
        assert lengths == sorted(lengths)
    # in request order, the same requests would pad a short prompt with a long one
    assert backend.batches(requests) != [list(range(lo, min(lo + 4, 12))) for lo in range(0, 12, 4)]


def test_a_token_budget_cuts_batches_so_long_prompts_never_multiply_memory(tiny_run_template: dict) -> None:
    requests = _requests(tiny_run_template["run"], with_images=False)
    requests.append(Request("very long " * 20, None))
    unbounded = TransformersBackend(tiny_run_template["lm"], batch_size=8, max_new_tokens=10)
    tokens = [len(unbounded.loaded.tokenizer(r.prompt, add_special_tokens=False)["input_ids"]) for r in requests]
    budget = tokens[-1] + 10 - 1  # the long prompt alone is over it (and within the tiny model's positions)
    backend = TransformersBackend(tiny_run_template["lm"], batch_size=8, max_batch_tokens=budget, max_new_tokens=10)
    batches = backend.batches(requests)
    assert sorted(i for b in batches for i in b) == list(range(len(requests)))
    for b in batches:  # padded to the longest, plus the new tokens: within the budget, or a batch of one
        assert len(b) == 1 or len(b) * (max(tokens[i] for i in b) + 10) <= budget, (b, tokens)
    assert [len(requests) - 1] in batches and max(len(b) for b in batches) > 1
    assert len(unbounded.batches(requests)) < len(batches)


def test_a_prompt_longer_than_the_models_positions_is_refused_before_generating(tiny_run_template: dict) -> None:
    backend = TransformersBackend(tiny_run_template["lm"], batch_size=4, max_new_tokens=20)
    positions = max_positions(backend.loaded.model)
    requests = _requests(tiny_run_template["run"], with_images=False)
    backend.batches(requests)  # the ordinary prompts fit
    with pytest.raises(PromptTooLongError, match=f"passes the {positions} positions"):
        backend.batches(requests + [Request("word " * positions, None)])
    assert backend.calls == 0


@pytest.mark.parametrize("model", ["lm", "vlm"])
def test_batched_texts_equal_one_at_a_time(tiny_run_template: dict, model: str) -> None:
    backend = TransformersBackend(tiny_run_template[model], batch_size=4)
    requests = _requests(tiny_run_template["run"], with_images=model == "vlm")
    settings = GenerationSettings(max_new_tokens=8)
    batched = backend.generate(requests, settings)
    single = [backend.generate([r], settings)[0] for r in requests]
    assert batched == single and len(set(batched)) > 1
    assert backend.calls == 2 * len(requests)
