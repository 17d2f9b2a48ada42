"""`msr convert gguf`: a GGUF checkpoint (llama.cpp's format) -> a transformers folder every stage can load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from msr.models import DTYPES, convert_gguf


@dataclass
class GgufConfig:
    """Which GGUF file becomes which model folder."""

    gguf_file: str = field(metadata={"help": "The .gguf file (a chat LM: the text recommender, or a summarizer)."})
    out_dir: str = field(metadata={"help": "Folder to write the model, tokenizer and chat template into."})
    dtype: str = field(default="float32", metadata={"help": f"Dtype of the dequantized weights: {', '.join(DTYPES)}."})

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")


def convert(cfg: GgufConfig) -> Path:
    """Write the folder; return it."""
    return convert_gguf(cfg.gguf_file, cfg.out_dir, cfg.dtype)
