"""Tiny random models built offline, for tests and the quickstart.

Every model here is a few hundred thousand parameters of random weights with a real tokenizer, processor and chat
template, so the whole pipeline (prompting, scoring, SFT + LoRA) runs end to end on a CPU without the model hub.

Conventions shared by all families, which the rest of msr relies on:
- the chat template emits the bos token itself and the tokenizer adds no special tokens, so rendering a
  conversation and then tokenizing it gives the same ids as tokenizing inside `apply_chat_template`;
- "Yes" and "No" are each one token where the assistant's answer starts (" Yes" / " No" after LLaVA's
  "ASSISTANT:" and SmolVLM's "Assistant:", "Yes" / "No" after the ChatML "assistant\\n" of the text LM);
- the assistant turn ends with the eos token, so a fine-tuned model learns to stop after its answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

VLM_FAMILIES: tuple[str, ...] = ("llava", "idefics3")

IMAGE_SIZE = 56
PATCH_SIZE = 14
_SCALE_FACTOR = 2  # Idefics3's pixel shuffle: 2x2 patches become one image token
_ANSWERS = ("Yes", "No")
_PAD = "<pad>"
_MAX_LENGTH = 2048


class _Specials(NamedTuple):
    bos: str
    eos: str
    extra: tuple[str, ...]


# "text" is the text-only LM; the eos token is also each family's end of turn.
_SPECIALS: dict[str, _Specials] = {
    "llava": _Specials("<s>", "</s>", ("<image>",)),
    "idefics3": _Specials(
        "<|im_start|>", "<end_of_utterance>", ("<image>", "<fake_token_around_image>", "<global-img>")
    ),
    "text": _Specials("<s>", "<|im_end|>", ("<|im_start|>",)),
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

_CHAT_TEMPLATES: dict[str, str] = {
    # LLaVA-1.5: "USER: <image>\n{text} ASSISTANT: Yes</s>"
    "llava": _RENDER_CONTENT
    + "{{ bos_token }}{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ render(m['content'], '') + ' ' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'USER: ' + render(m['content'], '<image>\\n') + ' ' }}"
    "{%- else -%}{{ 'ASSISTANT: ' + render(m['content'], '') + eos_token }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}",
    # SmolVLM: "<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant: Yes<end_of_utterance>\n"
    "idefics3": _RENDER_CONTENT
    + "{{ bos_token }}{%- for m in messages -%}"
    "{{ m['role'] | capitalize + ':' }}"
    "{%- if m['content'] is string or m['content'][0]['type'] != 'image' -%}{{ ' ' }}{%- endif -%}"
    "{{ render(m['content'], '<image>') + eos_token + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}",
    # ChatML: "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\nYes<|im_end|>\n"
    "text": _RENDER_CONTENT
    + "{{ bos_token }}{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + render(m['content'], '') + eos_token + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}",
}

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


@dataclass
class TinyConfig:
    """What `msr tiny` builds."""

    out_dir: str = field(metadata={"help": "Directory to save the model (and its processor/tokenizer) into."})
    family: str = field(default="llava", metadata={"help": f"One of {', '.join(VLM_FAMILIES)}, or text."})
    run_dir: str | None = field(default=None, metadata={"help": "Train the tokenizer on this run's item "
                                "titles and descriptions (after `msr data prepare`)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})

    def validate(self) -> None:
        if self.family not in (*VLM_FAMILIES, "text"):
            raise ValueError(f"family: {self.family!r} is not one of {', '.join((*VLM_FAMILIES, 'text'))}")


def build_from_config(cfg: TinyConfig) -> Path:
    """Build the model `cfg` describes; its tokenizer learns the run's item texts when a run is given."""
    texts: list[str] = []
    if cfg.run_dir is not None:
        import pandas as pd

        from msr import schema
        from msr.rundir import RunDir

        run = RunDir(cfg.run_dir)
        run.require(schema.ITEMS_FILE)
        items = pd.read_parquet(run.path(schema.ITEMS_FILE), columns=[schema.TITLE, schema.DESCRIPTION])
        texts = [t for t in items[schema.TITLE].tolist() + items[schema.DESCRIPTION].tolist() if t]
    if cfg.family == "text":
        return build_tiny_lm(cfg.out_dir, texts, cfg.seed)
    return build_tiny_vlm(cfg.out_dir, cfg.family, texts, cfg.seed)


def train_tokenizer(texts: Iterable[str], family: str, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` plus msr's prompt words, with the family's special tokens and chat template.

    The answers "Yes" / "No" (with and without a leading space) are learned as ordinary merges, not added tokens,
    so each is one token at the answer position while words such as "Yesterday" still tokenize normally.
    `family` is one of VLM_FAMILIES or "text" (text-only LM).
    """
    if family not in _CHAT_TEMPLATES:
        raise ValueError(f"unknown family {family!r}; expected one of {(*VLM_FAMILIES, 'text')}")
    specials = _SPECIALS[family]
    answers = [prefix + answer for answer in _ANSWERS for prefix in ("", " ")]
    corpus = [*texts, *_PROMPT_CORPUS, "\n".join(answers * _ANSWER_REPEATS)]

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[_PAD, specials.bos, specials.eos, *specials.extra],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=specials.bos,
        eos_token=specials.eos,
        pad_token=_PAD,
        extra_special_tokens=list(specials.extra),
        chat_template=_CHAT_TEMPLATES[family],
        model_max_length=_MAX_LENGTH,
    )
    for answer in answers:
        if len(tokenizer.tokenize(answer)) != 1:
            raise RuntimeError(f"{answer!r} is not a single token; raise vocab_size")
    return tokenizer


def build_tiny_vlm(out_dir: str | Path, family: str = "llava", texts: Iterable[str] = (), seed: int = 0) -> Path:
    """Saves a tiny random VLM of `family` and its processor to `out_dir`, for the Auto classes to load.

    The same seed gives identical weights; images are 56x56 pixels in 14-pixel patches.
    """
    if family not in VLM_FAMILIES:
        raise ValueError(f"unknown VLM family {family!r}; expected one of {VLM_FAMILIES}")
    tokenizer = train_tokenizer(texts, family)
    text_config = _text_config(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
    }
    patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    if family == "llava":
        config = LlavaConfig(
            text_config=text_config,
            vision_config=CLIPVisionConfig(**vision),
            image_token_index=image_token_id,
            image_seq_length=patches,
            vision_feature_select_strategy="default",  # drops CLS: one feature per patch
            vision_feature_layer=-1,  # LLaVA-1.5 uses -2; with two layers that would leave the last one unused
        )
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=PATCH_SIZE,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
            chat_template=tokenizer.chat_template,
        )
    else:
        config = Idefics3Config(
            text_config=text_config,
            vision_config=Idefics3VisionConfig(**vision),
            image_token_id=image_token_id,
            scale_factor=_SCALE_FACTOR,
            pad_token_id=tokenizer.pad_token_id,  # else config.json keeps Idefics3's default, out of our vocab
        )
        image_processor = Idefics3ImageProcessorPil(
            size={"longest_edge": IMAGE_SIZE},
            max_image_size={"longest_edge": IMAGE_SIZE},
            do_image_splitting=False,
        )
        processor = Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_len=patches // _SCALE_FACTOR**2,
            chat_template=tokenizer.chat_template,
        )
    model = _init_model(AutoModelForImageTextToText, config, seed)
    return _save(out_dir, model, processor)


def build_tiny_lm(out_dir: str | Path, texts: Iterable[str] = (), seed: int = 0) -> Path:
    """Saves a tiny random Llama causal LM and its ChatML tokenizer to `out_dir`, for the Auto classes to load.

    The same seed gives identical weights.
    """
    tokenizer = train_tokenizer(texts, "text")
    model = _init_model(AutoModelForCausalLM, _text_config(tokenizer), seed)
    return _save(out_dir, model, tokenizer)


def _text_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=_MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _init_model(auto_class: type, config: PreTrainedConfig, seed: int) -> PreTrainedModel:
    """Random fp32 weights drawn from `seed` without touching the caller's global RNG state."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return auto_class.from_config(config, dtype=torch.float32)


def _save(out_dir: str | Path, model: PreTrainedModel, processor: ProcessorMixin | PreTrainedTokenizerFast) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny_encoder(out_dir: str | Path, texts: Iterable[str] = (), seed: int = 0) -> Path:
    """Saves a tiny random BERT with mean pooling as a sentence-transformers directory, for tests of the graph
    recommender without the hub. Its tokenizer is the text LM's BPE trained on `texts`; the same seed gives
    identical weights."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoModel, BertConfig

    tokenizer = train_tokenizer(texts, "text")
    tokenizer.model_max_length = 128
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    out_dir = _save(out_dir, _init_model(AutoModel, config, seed), tokenizer)
    transformer = Transformer(str(out_dir), max_seq_length=128)
    SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                        device="cpu").save(str(out_dir))
    return out_dir
