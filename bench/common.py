"""Helpers shared by the benchmarks: a machine probe, msr-shaped synthetic texts and images, and a
random VLM of any msr.tiny family with a larger language model (`msr.tiny.build_tiny_vlm` with a larger
`TextShape`: msr.tiny's tokenizer, real processor classes and vision tower)."""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from msr.data.synthetic import (
    ADJECTIVES,
    CATEGORIES,
    COLOURS,
    PATTERNS,
    TITLE_TEMPLATES,
)
from msr.tiny import TextShape, build_tiny_vlm


def add_model_arguments(parser: argparse.ArgumentParser, vocab_size: bool = True,
                        families: tuple[str, ...] = ("llava",), default_family: str = "llava") -> None:
    """The thread count and the random model's shape, as every model benchmark takes them; with `vocab_size`
    (the VLM benchmarks, whose model `build_vlm` builds) also its vocabulary, key/value heads and family, one
    of `families` (the msr.tiny VLM families the benchmark supports), `default_family` by default."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument("--threads", type=int, default=cores, help="torch threads (default: the cores).")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=8)
    if vocab_size:
        parser.add_argument("--kv_heads", type=int, default=None, help="Key/value heads (default: --heads).")
        parser.add_argument("--vocab_size", type=int, default=1024)
        parser.add_argument("--family", choices=families, default=default_family,
                            help=f"msr.tiny VLM family of the random model: {', '.join(families)} "
                                 f"(default: {default_family}).")


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
    """A random --family VLM from `msr.tiny.build_tiny_vlm` (its tokenizer trained on `texts`, its real
    processor classes and small vision tower) with a language model of the arguments' shape; returns its size."""
    shape = TextShape(hidden_size=args.hidden, intermediate_size=args.intermediate, num_layers=args.layers,
                      num_heads=args.heads, num_kv_heads=args.kv_heads or args.heads)
    out_dir = build_tiny_vlm(out_dir, family=args.family, texts=texts, seed=args.seed, shape=shape,
                             vocab_size=args.vocab_size)
    return saved_parameters(out_dir)


def saved_parameters(model_dir: Path) -> int:
    """The parameter count of a saved model, from its safetensors headers (tied weights are saved once)."""
    total = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            total += sum(int(np.prod(f.get_slice(key).get_shape())) for key in f.keys())
    return total
