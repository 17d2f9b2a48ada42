"""The tiny offline models load through the Auto classes, run, and keep "Yes"/"No" single tokens at the answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from msr.tiny import VLM_FAMILIES, build_tiny_lm, build_tiny_vlm, train_tokenizer

TEXTS = ["Wireless optical mouse", "Organic green tea, 100 bags", "Yesterday Once More (vinyl)"]
QUESTION = "Will the user engage with this item? Answer Yes or No."
# image tokens of a 56x56 and an 80x40 image: LLaVA and Idefics3 resize to 56x56 (4x4 patches; Idefics3 shuffles 2x2
# into one); LLaVA-NeXT adds "anyres" tiles by aspect ratio; the Qwen-VL families keep the aspect ratio in 28- (32-)
# pixel units, merging 2x2 patches: 2x2 and 1x3 (Qwen3-VL: 1x2) tokens
IMAGE_TOKENS = {"llava": [16, 16], "idefics3": [4, 4], "llava_next": [36, 52], "qwen2_vl": [4, 3], "qwen2_5_vl": [4, 3],
                "qwen3_vl": [4, 2]}


def user_turn(text: str, image: bool = True) -> dict:
    content = [{"type": "image"}] if image else []
    return {"role": "user", "content": [*content, {"type": "text", "text": text}]}


def assert_single_token_answers(render: Callable[..., str], tokenizer: PreTrainedTokenizerBase, messages: list[dict]):
    """ "Yes" and "No" each add exactly one token to the generation prompt, then the end of turn (eos)."""
    prompt = tokenizer(render(messages, add_generation_prompt=True, tokenize=False))["input_ids"]
    for answer in ("Yes", "No"):
        answered = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        full = tokenizer(render(answered, add_generation_prompt=False, tokenize=False))["input_ids"]
        assert full[: len(prompt)] == prompt
        answer_id, end_of_turn = full[len(prompt) : len(prompt) + 2]
        assert tokenizer.decode([answer_id]).strip() == answer
        assert end_of_turn == tokenizer.eos_token_id
    assert not {"Yes", " Yes", "No", " No"} & set(tokenizer.get_added_vocab())


@pytest.fixture(scope="module", params=VLM_FAMILIES)
def vlm_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VLM saved under a directory named after its family."""
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / request.param, request.param, texts=TEXTS, seed=0)


def test_vlm_forward_on_padded_batch(vlm_dir: Path):
    processor = AutoProcessor.from_pretrained(vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    prompts = [
        processor.apply_chat_template([user_turn(text)], add_generation_prompt=True, tokenize=False)
        for text in (QUESTION, "Is this a good match for the user, given the items they liked before?")
    ]
    images = [Image.new("RGB", (56, 56), "red"), Image.new("RGB", (80, 40), "blue")]
    batch = processor(text=prompts, images=images, padding=True, return_tensors="pt")

    assert (batch["attention_mask"] == 0).any()
    n_image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert n_image_tokens.tolist() == IMAGE_TOKENS[vlm_dir.name]
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, len(processor.tokenizer))
    assert torch.isfinite(logits).all()

    swapped = processor(text=prompts, images=images[::-1], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(model(**swapped).logits[:, -1], logits[:, -1])


def test_vlm_generates(vlm_dir: Path):
    processor = AutoProcessor.from_pretrained(vlm_dir)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    prompts = [
        processor.apply_chat_template([user_turn(text)], add_generation_prompt=True, tokenize=False)
        for text in (QUESTION, "Yes?")
    ]
    images = [Image.new("RGB", (56, 56), "green"), Image.new("RGB", (80, 40), "white")]
    batch = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape[0] == 2
    assert batch["input_ids"].shape[1] < generated.shape[1] <= batch["input_ids"].shape[1] + 3


def test_vlm_answers_are_single_tokens(vlm_dir: Path):
    processor = AutoProcessor.from_pretrained(vlm_dir)
    system = {"role": "system", "content": "You predict what a user engages with."}
    for messages in ([user_turn(QUESTION)], [system, user_turn(QUESTION)], [{"role": "user", "content": QUESTION}]):
        assert_single_token_answers(processor.apply_chat_template, processor.tokenizer, messages)


def test_vlm_config_matches_its_tokenizer(vlm_dir: Path):
    tokenizer = AutoProcessor.from_pretrained(vlm_dir).tokenizer
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    text_config = model.config.get_text_config()
    assert tokenizer.pad_token == "<pad>" and tokenizer.padding_side == "right"
    assert text_config.vocab_size == len(tokenizer)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids(AutoProcessor.from_pretrained(vlm_dir).image_token)
    for config in (text_config, model.generation_config):
        assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (
            tokenizer.pad_token_id,
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
        )


def test_vlm_has_a_vision_tower(vlm_dir: Path):
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    n_vision = sum(p.numel() for name, p in model.named_parameters() if "vision" in name or ".visual." in name)
    assert n_vision > 0
    assert model.num_parameters() < 1_000_000


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_weights_follow_the_seed(family: str, tmp_path: Path):
    def weights(name: str, seed: int) -> dict[str, torch.Tensor]:
        return load_file(build_tiny_vlm(tmp_path / name, family, texts=TEXTS, seed=seed) / "model.safetensors")

    first, again, other = weights("a", 0), weights("b", 0), weights("c", 1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_text_lm(tmp_path: Path):
    model_dir = build_tiny_lm(tmp_path / "lm", texts=TEXTS, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.model_type == "llama"
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("<pad>")

    system = {"role": "system", "content": "You predict what a user engages with."}
    messages = [system, user_turn(QUESTION, image=False)]
    assert_single_token_answers(tokenizer.apply_chat_template, tokenizer, messages)

    batch = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert batch["input_ids"].shape[1] < generated.shape[1] <= batch["input_ids"].shape[1] + 3


@pytest.mark.parametrize("family", [*VLM_FAMILIES, "text"])
def test_template_brings_its_own_bos(family: str):
    tokenizer = train_tokenizer(TEXTS, family)
    messages = [user_turn(QUESTION, image=False)]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(rendered)["input_ids"]
    assert ids == tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    if tokenizer.bos_token is None:  # the Qwen-VL families have no bos: the first turn opens the prompt
        assert rendered.startswith("<|im_start|>")
    else:
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_unknown_family_is_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="family"):
        train_tokenizer(TEXTS, "gemma3")
    with pytest.raises(ValueError, match="family"):
        build_tiny_vlm(tmp_path, "text")


REAL_CLASSES = {  # what AutoProcessor / AutoModelForImageTextToText load for the family's published checkpoints
    "llava": ("LlavaProcessor", "CLIPImageProcessor", "LlavaForConditionalGeneration"),
    "llava_next": ("LlavaNextProcessor", "LlavaNextImageProcessor", "LlavaNextForConditionalGeneration"),
    "idefics3": ("Idefics3Processor", "Idefics3ImageProcessor", "Idefics3ForConditionalGeneration"),
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLImageProcessor", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen2VLImageProcessor", "Qwen3VLForConditionalGeneration"),
}


def test_vlm_loads_with_the_family_real_classes(vlm_dir: Path):
    processor = AutoProcessor.from_pretrained(vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    names = (type(processor).__name__, type(processor.image_processor).__name__, type(model).__name__)
    assert names == REAL_CLASSES[vlm_dir.name]
    assert set(REAL_CLASSES) == set(VLM_FAMILIES)
