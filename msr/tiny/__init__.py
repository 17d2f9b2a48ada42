"""Tiny random models built offline, for tests, benchmarks and the quickstart.

Every model here is a few hundred thousand parameters of random weights with a BPE tokenizer trained offline,
the family's real processor classes and a chat template that renders the family's real format, so the whole
pipeline (prompting, summaries, scoring, SFT + LoRA) runs end to end on a CPU without the model hub. The
conventions every family keeps are in `msr.tiny.tokenizer`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BertConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)

from msr.tiny.families import FAMILIES, IMAGE_SIZE, PATCH_SIZE, TextShape, text_config
from msr.tiny.tokenizer import train_tokenizer

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".safetensors.index.json", ".bin.index.json")

VLM_FAMILIES: tuple[str, ...] = tuple(FAMILIES)
# families whose rotary positions are 3-D (M-RoPE), computed from the images' grids
MROPE_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

__all__ = ["IMAGE_SIZE", "MROPE_FAMILIES", "PATCH_SIZE", "VLM_FAMILIES", "TextShape", "TinyConfig",
           "build_around_processor", "build_from_config", "build_tiny_encoder", "build_tiny_lm", "build_tiny_vlm",
           "family_of", "train_tokenizer"]


@dataclass
class TinyConfig:
    """What `msr tiny` builds."""

    out_dir: str = field(metadata={"help": "Directory to save the model (and its processor/tokenizer) into."})
    family: str = field(default="llava", metadata={"help": f"One of {', '.join(VLM_FAMILIES)}, or text."})
    run_dir: str | None = field(default=None, metadata={"help": "Train the tokenizer on this run's item "
                                "titles and descriptions (after `msr data prepare`)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})
    processor_dir: str | None = field(default=None, metadata={
        "help": "Instead: tiny random weights around this folder's published processor (tokenizer, chat template, "
                "image processor: e.g. a checkpoint's files without its weights), of the family its processor "
                "class names; `family` is then ignored."})

    def validate(self) -> None:
        if self.family not in (*VLM_FAMILIES, "text"):
            raise ValueError(f"family: {self.family!r} is not one of {', '.join((*VLM_FAMILIES, 'text'))}")


def build_from_config(cfg: TinyConfig) -> Path:
    """Build the model `cfg` describes; its tokenizer learns the run's item texts when a run is given."""
    if cfg.processor_dir is not None:
        return build_around_processor(cfg.processor_dir, cfg.out_dir, cfg.seed)
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
    if family not in FAMILIES:
        raise ValueError(f"unknown VLM family {family!r}; expected one of {VLM_FAMILIES}")
    processor = FAMILIES[family].processor(train_tokenizer(texts, family, vocab_size))
    model = _init_model(AutoModelForImageTextToText, FAMILIES[family].config(processor, shape), seed)
    return _save(out_dir, model, processor)


def family_of(processor: ProcessorMixin | PreTrainedTokenizerBase) -> str:
    """The msr.tiny family of a loaded processor (by its class), or "text" for a bare tokenizer."""
    if not isinstance(processor, ProcessorMixin):
        return "text"
    name = type(processor).__name__
    found = [family for family, spec in FAMILIES.items() if spec.processor_class == name]
    if not found:
        raise ValueError(f"{name} is not the processor of a family msr.tiny builds ({', '.join(VLM_FAMILIES)})")
    return found[0]


# files of a published checkpoint that describe the model, not its processor: build_around_processor writes its own
_MODEL_FILES = ("config.json", "generation_config.json")


def build_around_processor(processor_dir: str | Path, out_dir: str | Path, seed: int = 0,
                           shape: TextShape = TextShape(max_positions=32768)) -> Path:
    """Tiny random weights around a published processor: copy `processor_dir`'s processor files (tokenizer, chat
    template, image-processor config; not its model config or weights) into `out_dir` and save beside them a tiny
    model of the processor's family whose config fits that processor (image size, patches, tiling, special-token
    ids, vocabulary). The result loads as the real checkpoint would (the same tokenizer class, normalizer and
    template), so msr's code paths run on the published tokenization offline. A text-only tokenizer gets a tiny
    Llama causal LM."""
    source, out_dir = Path(processor_dir), Path(out_dir)
    if not source.is_dir():
        raise FileNotFoundError(f"processor_dir: {source} is not a folder")
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError):
        try:
            processor = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):
            raise FileNotFoundError(f"{source} holds no processor or tokenizer files that transformers can load "
                                    "(tokenizer_config.json, preprocessor_config.json, ...)") from None
    family = family_of(processor)
    out_dir.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file() and file.name not in _MODEL_FILES and not file.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copyfile(file, out_dir / file.name)
    if family == "text":
        model = _init_model(AutoModelForCausalLM, text_config(processor, shape), seed)
    else:
        model = _init_model(AutoModelForImageTextToText, FAMILIES[family].config(processor, shape), seed)
    model.save_pretrained(out_dir)
    return out_dir


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
