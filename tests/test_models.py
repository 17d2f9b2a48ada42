"""msr/models.py: one loader for every stage, with safe defaults (fp32 on CPU, no remote code)."""

from __future__ import annotations

import re

import pytest
import torch

from msr.models import (
    image_batches,
    is_vision_model,
    load_encoder,
    load_model,
    lora_target_regex,
    resolve_dtype,
)
from msr.tiny import build_tiny_encoder


def test_image_batches_never_mix_prompts_with_and_without_an_image() -> None:
    batches = list(image_batches([True, False, True, True, False], size=2))
    assert batches == [[0, 2], [3], [1, 4]]
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_dtype_auto_is_fp32_on_cpu_and_unknown_names_are_refused() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype("float64", "cpu")


def test_vlm_and_lm_load_from_their_saved_directories(tiny_run_template: dict) -> None:
    vlm, lm = tiny_run_template["vlm"], tiny_run_template["lm"]
    assert is_vision_model(vlm) and not is_vision_model(lm)
    loaded = load_model(vlm, device="cpu")
    assert loaded.is_vlm and loaded.model.dtype == torch.float32 and not loaded.model.training
    assert loaded.processor.tokenizer is loaded.tokenizer and loaded.tokenizer.pad_token_id is not None
    text = load_model(lm, device="cpu")
    assert not text.is_vlm and text.processor is text.tokenizer


def test_lora_targets_are_the_decoder_projections_only(tiny_run_template: dict) -> None:
    model = load_model(tiny_run_template["vlm"], device="cpu").model
    pattern = re.compile(lora_target_regex(model))
    hits = {name for name, _ in model.named_modules() if pattern.fullmatch(name)}
    assert hits and all(".language_model." in f".{name}" for name in hits)
    assert any(name.endswith("self_attn.q_proj") for name in hits) and any(name.endswith("mlp.down_proj")
                                                                          for name in hits)
    assert not any("vision" in name or "projector" in name or name.endswith("lm_head") for name in hits)


def test_the_encoder_loads_offline_and_embeds(tmp_path) -> None:
    folder = build_tiny_encoder(tmp_path / "encoder", texts=["a red mug", "a blue lamp"])
    encoder = load_encoder(str(folder), device="cpu")
    vectors = encoder.encode(["a red mug", "a blue lamp"], convert_to_numpy=True)
    assert vectors.shape[0] == 2 and vectors.shape[1] > 0 and not (vectors[0] == vectors[1]).all()
