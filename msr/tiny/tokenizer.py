"""The tiny models' tokenizers, trained offline, each behaving like the tokenizer of the published checkpoints it
stands for, with a chat template written to render that family's published conversation format.

Two kinds, as the published checkpoints have them:
- **SentencePiece-style BPE** (LLaVA-1.5 and LLaVA-NeXT, whose llava-hf `tokenizer.json` is Llama's / Mistral's):
  the legacy normalizer `Prepend("▁")` + `Replace(" ", "▁")` (applied to every piece of text between added
  tokens), byte fallback (`<0x0A>` for a newline), and a post-processor that adds `<s>`: the templates print no
  bos, the tokenizer adds it. So `" Yes"` tokenized on its own is `▁`, `▁Yes`, while after `ASSISTANT:` in a whole
  conversation it is the one token `▁Yes`; the llava-hf templates also render every image of a turn before its
  text and put `' '` before the assistant's text (LLaVA-1.5's answer ends in `' '`, LLaVA-NeXT's in `'</s> '`).
- **byte-level BPE** (SmolVLM, the Qwen-VL families, the text LM): no special token added on encode; families with
  a bos (SmolVLM's `<|im_start|>`) print it from the template.

In every family "Yes" and "No" are each one token where the answer starts, learned as ordinary merges, not added
tokens, and the answer turn ends with the end-of-turn token where the published template has one. Whatever msr
builds on top (training labels, the scorer's answer ids) must hold against these behaviours, and against the
published processors themselves (tests/test_published_processors.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<pad>"
UNK = "<unk>"
MAX_LENGTH = 2048
_ANSWERS = ("Yes", "No")
_SPACE = "\u2581"  # SentencePiece's "▁"


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
    "text": Specials(None, "<|im_end|>", ("<|im_start|>",)),
}
# families whose published tokenizer is SentencePiece-style (Llama / Mistral), with the bos added on encode
SENTENCEPIECE_FAMILIES: tuple[str, ...] = ("llava", "llava_next")

# Renders a message's content, a plain string or a list of {"type": "image"} / {"type": "text"} parts, in order.
_RENDER_CONTENT = (
    "{%- macro render(content, image) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}{{ image }}{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
# The llava-hf way of rendering a turn's content (a list of parts; a plain string fails, as there): every image
# first, then the texts.
_IMAGES_FIRST = "{%- for part in m['content'] if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
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
    # LLaVA-1.5 (llava-hf): "USER: <image>\n{text} {text} ASSISTANT: Yes " (no bos in the template, no eos after the
    # answer; every text part is followed by a space)
    "llava": "{%- for m in messages -%}"
    "{%- if m['role'] != 'system' -%}{{ m['role'].upper() + ': ' }}{%- endif -%}"
    + _IMAGES_FIRST
    + "{%- for part in m['content'] if part['type'] == 'text' -%}{{ part['text'] + ' ' }}{%- endfor -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}",
    # LLaVA-1.6-Mistral (llava-hf, as published now): "[INST] <image>\n{text} [/INST] Yes</s> " (no bos in the
    # template; no generation prompt: the user turn ends the prompt)
    "llava_next": "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ '<<SYS>>\\n' + m['content'][0]['text'] + '\\n<</SYS>>\\n\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ '[INST] ' }}"
    + _IMAGES_FIRST
    + "{%- for part in m['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}{{ ' [/INST]' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ ' ' + m['content'][0]['text'] + eos_token + ' ' }}"
    "{%- else -%}{{ raise_exception('Only user and assistant roles are supported!') }}"
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
    # A text chat LM as SmolLM2-Instruct and Qwen2.5-Instruct publish theirs: ChatML with a default system turn, and
    # string content only (a list of parts is a TypeError, as there)
    "text": "{%- for m in messages -%}"
    "{%- if loop.first and m['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
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
    "USER: ASSISTANT: User: Assistant: system user assistant [INST] [/INST]",
)
# How often each answer form enters the BPE corpus: enough for its merges to beat those of a few thousand texts.
_ANSWER_REPEATS = 1000


def train_tokenizer(texts: Iterable[str], family: str, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A BPE trained on `texts` plus msr's prompt words, of the kind the family's published tokenizer is, with the
    family's special tokens and chat template. `family` is one of FAMILIES (the VLM families and "text")."""
    if family not in CHAT_TEMPLATES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    specials = SPECIALS[family]
    if family in SENTENCEPIECE_FAMILIES:
        backend = _sentencepiece_style(list(texts), vocab_size, specials)
        answers = list(_ANSWERS)  # normalized to "▁Yes": the form after "ASSISTANT:" / "[/INST]"
    else:
        backend = _byte_level(list(texts), vocab_size, specials)
        answers = [prefix + answer for answer in _ANSWERS for prefix in ("", " ")]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=specials.bos,
        eos_token=specials.eos,
        unk_token=UNK if family in SENTENCEPIECE_FAMILIES else None,
        pad_token=PAD,
        extra_special_tokens=list(specials.extra),
        chat_template=CHAT_TEMPLATES[family],
        model_max_length=MAX_LENGTH,
        **({"add_bos_token": True} if family in SENTENCEPIECE_FAMILIES else {}),
    )
    for answer in answers:
        if len(tokenizer.tokenize(answer)) != 1:
            raise RuntimeError(f"{answer!r} is not a single token; raise vocab_size")
    return tokenizer


def _answer_corpus(answers: list[str]) -> str:
    return " ".join(answers * _ANSWER_REPEATS)


def _byte_level(texts: list[str], vocab_size: int, specials: Specials) -> Tokenizer:
    answers = [prefix + answer for answer in _ANSWERS for prefix in ("", " ")]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    named = [t for t in (specials.bos, specials.eos) if t]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, *named, *specials.extra],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator([*texts, *_PROMPT_CORPUS, "\n".join(answers * _ANSWER_REPEATS)], trainer)
    return backend


def _sentencepiece_style(texts: list[str], vocab_size: int, specials: Specials) -> Tokenizer:
    """A BPE laid out as Llama's `tokenizer.json`: `<unk>`, `<s>`, `</s>`, the 256 byte-fallback pieces `<0x00>` ..
    `<0xFF>`, then the learned pieces; the legacy normalizer, no pre-tokenizer, the bos added by the post-processor.
    Newlines are left out of the learned alphabet, so they take the byte fallback `<0x0A>` as in Llama's vocab."""
    normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), normalizers.Replace(" ", _SPACE)])
    learner = Tokenizer(models.BPE())
    learner.normalizer = normalizer
    # learning splits at each "▁" so no merge spans two words (SentencePiece's split_by_whitespace)
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="never", split=True)
    corpus = [t.replace("\n", " ") for t in (*texts, *_PROMPT_CORPUS)] + [_answer_corpus(list(_ANSWERS))]
    reserved = {UNK: 0, specials.bos: 1, specials.eos: 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    learner.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=max(vocab_size - len(reserved), 64),
                                                            show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab = dict(reserved)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizer
    backend.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{specials.bos} $A", pair=f"{specials.bos} $A {specials.bos} $B", special_tokens=[(specials.bos, 1)])
    return backend
