"""Tiny random models built offline, for tests, benchmarks and the quickstart.

Every model here is a few hundred thousand parameters of random weights with a BPE tokenizer trained offline,
the family's real processor classes and a chat template that renders the family's real format, so the whole
pipeline (prompting, summaries, scoring, SFT + LoRA) runs end to end on a CPU without the model hub. The
conventions every family keeps are in `msr.tiny.tokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    BertConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from msr.tiny.families import BUILDERS, IMAGE_SIZE, PATCH_SIZE, TextShape, text_config
from msr.tiny.tokenizer import train_tokenizer

VLM_FAMILIES: tuple[str, ...] = tuple(BUILDERS)
# families whose rotary positions are 3-D (M-RoPE), computed from the images' grids
MROPE_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

__all__ = ["IMAGE_SIZE", "MROPE_FAMILIES", "PATCH_SIZE", "VLM_FAMILIES", "TextShape", "TinyConfig",
           "build_from_config", "build_tiny_encoder", "build_tiny_lm", "build_tiny_vlm", "train_tokenizer"]


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


def build_tiny_vlm(out_dir: str | Path, family: str = "llava", texts: Iterable[str] = (), seed: int = 0,
                   shape: TextShape = TextShape(), vocab_size: int = 1024) -> Path:
    """Saves a tiny random VLM of `family` and its processor to `out_dir`, for the Auto classes to load.

    The same seed gives identical weights. `shape` sizes the language model (the benchmarks use larger ones)."""
    if family not in BUILDERS:
        raise ValueError(f"unknown VLM family {family!r}; expected one of {VLM_FAMILIES}")
    tokenizer = train_tokenizer(texts, family, vocab_size)
    config, processor = BUILDERS[family](tokenizer, shape)
    model = _init_model(AutoModelForImageTextToText, config, seed)
    return _save(out_dir, model, processor)


def build_tiny_lm(out_dir: str | Path, texts: Iterable[str] = (), seed: int = 0) -> Path:
    """Saves a tiny random Llama causal LM and its ChatML tokenizer to `out_dir`, for the Auto classes to load.

    The same seed gives identical weights.
    """
    tokenizer = train_tokenizer(texts, "text")
    model = _init_model(AutoModelForCausalLM, text_config(tokenizer), seed)
    return _save(out_dir, model, tokenizer)


def build_tiny_encoder(out_dir: str | Path, texts: Iterable[str] = (), seed: int = 0) -> Path:
    """Saves a tiny random BERT with mean pooling as a sentence-transformers directory, for tests of the graph
    recommender without the hub. Its tokenizer is the text LM's BPE trained on `texts`; the same seed gives
    identical weights."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    tokenizer = train_tokenizer(texts, "text")
    tokenizer.model_max_length = 128
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    out_dir = _save(out_dir, _init_model(AutoModel, config, seed), tokenizer)
    transformer = Transformer(str(out_dir), max_seq_length=128)
    SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean")],
                        device="cpu").save(str(out_dir))
    return out_dir


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
