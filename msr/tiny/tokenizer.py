"""The tiny models' tokenizers: a byte-level BPE trained offline, with each family's special tokens and a
chat template written to render that family's real conversation format.

Conventions the rest of msr relies on:
- the tokenizer adds no special tokens, so rendering a conversation and then tokenizing it gives the same
  ids as tokenizing inside `apply_chat_template` (families with a bos token emit it from the template);
- "Yes" and "No" are each one token where the assistant's answer starts (" Yes" / " No" after LLaVA's
  "ASSISTANT:", LLaVA-NeXT's "[/INST]" and SmolVLM's "Assistant:"; "Yes" / "No" after ChatML's
  "assistant\\n", which the Qwen-VL families and the text LM use);
- the assistant turn ends with the eos token, so a fine-tuned model learns to stop after its answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<pad>"
MAX_LENGTH = 2048
_ANSWERS = ("Yes", "No")


class Specials(NamedTuple):
    """A family's special tokens: bos (None where the family has none), eos (= end of turn), the rest."""

    bos: str | None
    eos: str
    extra: tuple[str, ...]


_QWEN_VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
SPECIALS: dict[str, Specials] = {
    "llava": Specials("<s>", "</s>", ("<image>",)),
    "llava_next": Specials("<s>", "</s>", ("<image>",)),
    "idefics3": Specials("<|im_start|>", "<end_of_utterance>",
                         ("<image>", "<fake_token_around_image>", "<global-img>")),
    "qwen2_vl": Specials(None, "<|im_end|>", ("<|im_start|>", *_QWEN_VISION)),
    "qwen2_5_vl": Specials(None, "<|im_end|>", ("<|im_start|>", *_QWEN_VISION)),
    "qwen3_vl": Specials(None, "<|im_end|>", ("<|im_start|>", *_QWEN_VISION)),
    "text": Specials("<s>", "<|im_end|>", ("<|im_start|>",)),
}

# Renders a message's content, a plain string or a list of {"type": "image"} / {"type": "text"} parts.
_RENDER_CONTENT = (
    "{%- macro render(content, image) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{ image }}{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
# ChatML turns with Qwen-VL's image span; `default_system` is Qwen2.5-VL's implicit system turn.
_QWEN_VL = (
    _RENDER_CONTENT
    + "{%- for m in messages -%}"
    "{%- if loop.first and m['role'] != 'system' and default_system -%}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + render(m['content'], '<|vision_start|><|image_pad|><|vision_end|>')"
    " + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

CHAT_TEMPLATES: dict[str, str] = {
    # LLaVA-1.5: "USER: <image>\n{text} ASSISTANT: Yes</s>"
    "llava": _RENDER_CONTENT
    + "{{ bos_token }}{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ render(m['content'], '') + ' ' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'USER: ' + render(m['content'], '<image>\\n') + ' ' }}"
    "{%- else -%}{{ 'ASSISTANT: ' + render(m['content'], '') + eos_token }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}",
    # LLaVA-1.6-Mistral (llava-hf): "<s>[INST] <image>\n{text} [/INST] Yes</s>"; a user turn's images come first,
    # then its texts, as the published template renders them
    "llava_next": _RENDER_CONTENT
    + "{{ bos_token }}{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ '<<SYS>>\\n' + render(m['content'], '') + '\\n<</SYS>>\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ '[INST] ' }}"
    "{%- if m['content'] is not string -%}"
    "{%- for part in m['content'] if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- endif -%}{{ render(m['content'], '') + ' [/INST]' }}"
    "{%- else -%}{{ ' ' + render(m['content'], '') + eos_token }}"
    "{%- endif -%}{%- endfor -%}",
    # SmolVLM: "<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant: Yes<end_of_utterance>\n"
    "idefics3": _RENDER_CONTENT
    + "{{ bos_token }}{%- for m in messages -%}"
    "{{ m['role'] | capitalize + ':' }}"
    "{%- if m['content'] is string or m['content'][0]['type'] != 'image' -%}{{ ' ' }}{%- endif -%}"
    "{{ render(m['content'], '<image>') + eos_token + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}",
    # Qwen2-VL and Qwen2.5-VL: ChatML with a default system turn, "<|vision_start|><|image_pad|><|vision_end|>" per image
    "qwen2_vl": "{%- set default_system = 'You are a helpful assistant.' -%}" + _QWEN_VL,
    "qwen2_5_vl": "{%- set default_system = 'You are a helpful assistant.' -%}" + _QWEN_VL,
    # Qwen3-VL (Instruct): the same without a default system turn
    "qwen3_vl": "{%- set default_system = '' -%}" + _QWEN_VL,
    # ChatML: "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>\n"
    "text": _RENDER_CONTENT
    + "{{ bos_token }}{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + render(m['content'], '') + eos_token + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}",
}
FAMILIES: tuple[str, ...] = tuple(CHAT_TEMPLATES)

# Words of msr's prompts, so that they tokenize into few tokens whatever `texts` the caller gives.
_PROMPT_CORPUS: tuple[str, ...] = (
    "The user has engaged with the following items, from oldest to most recent:",
    "Title: Brand: Category: Categories: Description: Image:",
    "Here is a candidate item. Will the user engage with this item? Answer Yes or No.",
    "Based on the user's history, is the user likely to click, watch, buy or review the next item?",
    "A chat between a curious user and an artificial intelligence assistant.",
    "USER: ASSISTANT: User: Assistant: system user assistant",
)
# How often each answer form enters the BPE corpus: enough for its merges to beat those of a few thousand texts.
_ANSWER_REPEATS = 1000


def train_tokenizer(texts: Iterable[str], family: str, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` plus msr's prompt words, with the family's special tokens and chat template.

    The answers "Yes" / "No" (with and without a leading space) are learned as ordinary merges, not added tokens,
    so each is one token at the answer position while words such as "Yesterday" still tokenize normally.
    `family` is one of FAMILIES (the VLM families and "text", the text-only LM).
    """
    if family not in CHAT_TEMPLATES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    specials = SPECIALS[family]
    answers = [prefix + answer for answer in _ANSWERS for prefix in ("", " ")]
    corpus = [*texts, *_PROMPT_CORPUS, "\n".join(answers * _ANSWER_REPEATS)]

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    named = [t for t in (specials.bos, specials.eos) if t]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, *named, *specials.extra],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=specials.bos,
        eos_token=specials.eos,
        pad_token=PAD,
        extra_special_tokens=list(specials.extra),
        chat_template=CHAT_TEMPLATES[family],
        model_max_length=MAX_LENGTH,
    )
    for answer in answers:
        if len(tokenizer.tokenize(answer)) != 1:
            raise RuntimeError(f"{answer!r} is not a single token; raise vocab_size")
    return tokenizer
