"""Helpers shared by the benchmarks: a machine probe, msr-shaped synthetic texts and images, and a
random LLaVA larger than msr.tiny's (same tokenizer, processor and vision tower)."""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import (
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
)

from msr.data.synthetic import (
    ADJECTIVES,
    CATEGORIES,
    COLOURS,
    PATTERNS,
    TITLE_TEMPLATES,
)
from msr.tiny import IMAGE_SIZE, PATCH_SIZE, train_tokenizer


def add_model_arguments(parser: argparse.ArgumentParser, vocab_size: bool = True) -> None:
    """The thread count and the random model's shape, as every model benchmark takes them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument("--threads", type=int, default=cores, help="torch threads (default: the cores).")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=8)
    if vocab_size:
        parser.add_argument("--vocab_size", type=int, default=1024)


def matmul_ms(rows: int = 16, repeats: int = 50) -> float:
    """Milliseconds of one (rows x 512) @ (512 x 1536) fp32 product at the current thread count: a
    probe of the machine's state (a few ms instead of ~0.2 means contended or stalled threads)."""
    a, b = torch.randn(rows, 512), torch.randn(512, 1536)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return round((time.perf_counter() - t0) / repeats * 1e3, 3)


# --------------------------------------------------------------------------- rows

_USER_SENTENCES = (
    "The user keeps coming back to {colour} {cat} and seems to enjoy items with a {pattern} pattern.",
    "Over the last weeks their attention moved from {cat} towards {cat2}, mostly in {colour2} or {colour}.",
    "They rarely engage with {pattern2} designs and skip most {cat2} that look too plain.",
    "Bold colours such as {colour} attract them, while muted {colour2} items get fewer clicks.",
    "Earlier in their history they watched several reviews of {adj} {cat} before buying one.",
    "Their recent choices suggest a practical taste: {cat} for everyday use, often from the {adj} line.",
    "When a {cat2} shows a clear {pattern} print on its cover, they usually open it.",
    "They seem to prefer compact products and avoid anything that looks bulky or {pattern2}.",
)
_SUMMARY = ("A {colour} {cat} with a {pattern} pattern, photographed on a plain light background; "
            "the {adj} design looks {mood} and suits everyday use.")
_MOODS = ("simple", "playful", "sturdy", "elegant", "bright", "minimal")


def _title(rng: np.random.Generator) -> str:
    template = TITLE_TEMPLATES[int(rng.integers(len(TITLE_TEMPLATES)))]
    return template.format(adj=rng.choice(ADJECTIVES), cat=rng.choice(CATEGORIES), n=int(rng.integers(1, 999)))


def _fill(rng: np.random.Generator, text: str) -> str:
    colours, cats, patterns = list(COLOURS), list(CATEGORIES), list(PATTERNS)
    return text.format(colour=rng.choice(colours), colour2=rng.choice(colours), cat=rng.choice(cats),
                       cat2=rng.choice(cats), pattern=rng.choice(patterns), pattern2=rng.choice(patterns),
                       adj=rng.choice(ADJECTIVES), mood=rng.choice(_MOODS))


def _user_text(rng: np.random.Generator, low: int = 60, high: int = 100) -> str:
    """A preference text of low..high words, as `msr summarize users` would write one."""
    target = int(rng.integers(low, high + 1))
    words: list[str] = []
    while len(words) < target:
        words += _fill(rng, _USER_SENTENCES[int(rng.integers(len(_USER_SENTENCES)))]).split()
    return " ".join(words[:target]).rstrip(",;:") + "."


def _cover_jpeg(rng: np.random.Generator, size: int) -> bytes:
    """A cover like the embedded dataset's: a coloured square with a pattern, JPEG-encoded."""
    rgb = tuple(int(c) for c in list(COLOURS.values())[int(rng.integers(len(COLOURS)))])
    image = Image.new("RGB", (size, size), rgb)
    draw = ImageDraw.Draw(image)
    step = size // 6
    for k in range(0, size, step):
        if rng.random() < 0.5:
            draw.line([(k, 0), (k, size)], fill=(255, 255, 255), width=2)
        else:
            draw.ellipse([k, k, k + step // 2, k + step // 2], fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


# --------------------------------------------------------------------------- model


def build_vlm(out_dir: Path, texts: list[str], args: argparse.Namespace) -> int:
    """A random LLaVA with msr.tiny's tokenizer, processor and vision tower but a larger Llama; returns its size."""
    tokenizer = train_tokenizer(texts, "llava", vocab_size=args.vocab_size)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    config = LlavaConfig(text_config=text_config, vision_config=vision,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                              crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=tokenizer, patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=tokenizer.chat_template)
    with torch.random.fork_rng():
        torch.manual_seed(args.seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())
