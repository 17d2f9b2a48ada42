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
    content = [{"type": "image", "image": Image.new("RGB", (56, 56), "red")}] if image else []
    return {"role": "user", "content": [*content, {"type": "text", "text": text}]}


def answer_turn(answer: str, as_string: bool = False) -> dict:
    return {"role": "assistant", "content": answer if as_string else [{"type": "text", "text": answer}]}


# what follows the one-token answer in each family's published template: LLaVA-1.5 only a space (no eos); the
# others the end-of-turn token first
NO_EOS_AFTER_ANSWER = ("llava",)


def assert_single_token_answers(processor, tokenizer: PreTrainedTokenizerBase, messages: list[dict], family: str):
    """ "Yes" and "No" each add exactly one token to the generation prompt, tokenized as transformers tokenizes a
    chat for generation, then (where the published template has one) the end of turn."""
    as_string = family == "text"
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt = list(prompt["input_ids"])
    prompt = prompt[0] if isinstance(prompt[0], list) else prompt
    for answer in ("Yes", "No"):
        full = processor.apply_chat_template(messages + [answer_turn(answer, as_string)], tokenize=True,
                                             return_dict=True)["input_ids"]
        full = full[0] if isinstance(full[0], list) else full
        assert full[: len(prompt)] == prompt
        tail = full[len(prompt):]
        assert tokenizer.decode(tail[:1]).strip() == answer
        assert not tokenizer.decode(tail[1:], skip_special_tokens=True).strip()
        assert (tail[1] == tokenizer.eos_token_id) == (family not in NO_EOS_AFTER_ANSWER)
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
    system = {"role": "system", "content": [{"type": "text", "text": "You predict what a user engages with."}]}
    for messages in ([user_turn(QUESTION)], [system, user_turn(QUESTION)], [user_turn(QUESTION, image=False)]):
        assert_single_token_answers(processor, processor.tokenizer, messages, vlm_dir.name)


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

    for messages in ([{"role": "user", "content": QUESTION}],
                     [{"role": "system", "content": "You predict what a user engages with."},
                      {"role": "user", "content": QUESTION}]):
        assert_single_token_answers(tokenizer, tokenizer, messages, "text")
    with pytest.raises(TypeError):  # like SmolLM2's and Qwen2.5's templates, it takes string content only
        tokenizer.apply_chat_template([user_turn(QUESTION, image=False)], tokenize=False)

    batch = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert batch["input_ids"].shape[1] < generated.shape[1] <= batch["input_ids"].shape[1] + 3


# where the bos comes from, as in the published checkpoints: the tokenizer adds it (LLaVA's Llama / Mistral
# tokenizers), the template prints it (SmolVLM), or there is none (ChatML: Qwen-VL, the text LM)
BOS_FROM = {"llava": "tokenizer", "llava_next": "tokenizer", "idefics3": "template", "qwen2_vl": None,
            "qwen2_5_vl": None, "qwen3_vl": None, "text": None}


@pytest.mark.parametrize("family", [*VLM_FAMILIES, "text"])
def test_bos_comes_from_where_the_published_puts_it(family: str):
    tokenizer = train_tokenizer(TEXTS, family)
    messages = [user_turn(QUESTION, image=False) if family != "text" else {"role": "user", "content": QUESTION}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(rendered)["input_ids"]
    assert BOS_FROM[family] == ("template" if rendered.startswith(tokenizer.bos_token or "\0") else
                                "tokenizer" if tokenizer.bos_token and ids[0] == tokenizer.bos_token_id else None)
    if tokenizer.bos_token:
        assert ids.count(tokenizer.bos_token_id) == 1


def test_llava_tokenizers_normalize_as_sentencepiece():
    """The legacy Llama/Mistral normalizer: every stretch of text between added tokens gets a leading "▁", so an
    answer tokenized alone starts with a bare "▁" (what TRL's collator trained on), in context it is one token."""
    for family in ("llava", "llava_next"):
        tokenizer = train_tokenizer(TEXTS, family)
        alone = tokenizer.convert_ids_to_tokens(tokenizer(" Yes", add_special_tokens=False)["input_ids"])
        assert alone == ["\u2581", "\u2581Yes"]
        in_context = tokenizer.convert_ids_to_tokens(tokenizer("ASSISTANT: Yes")["input_ids"])
        assert in_context[0] == "<s>" and in_context[-1] == "\u2581Yes"
        assert tokenizer.convert_ids_to_tokens(tokenizer("a\nb", add_special_tokens=False)["input_ids"])[1] == "<0x0A>"
        assert tokenizer.decode(tokenizer("naïve ☃")["input_ids"], skip_special_tokens=True) == "naïve ☃"  # bytes


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
