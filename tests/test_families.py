"""Every stage on every tiny family, through the real code paths: item summaries from image + text, SFT with
LoRA on the language model only, adapter reload, and `max_pixels` bounding the Qwen-VL families' image tokens.
(Scoring on every family: tests/test_score.py; every training recipe: tests/test_recipes.py.)"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from trl import ModelConfig, SFTConfig

from msr import schema
from msr.data.sft import SftDataConfig, write_sft_rows
from msr.models import load_model, lora_target_regex
from msr.summarize.backends import TransformersBackend
from msr.summarize.config import SummarizeConfig
from msr.summarize.items import summarize_items
from msr.tiny import MROPE_FAMILIES, VLM_FAMILIES, TextShape, build_tiny_vlm
from msr.train import SftScriptArguments, build_trainer, train

# every linear projection of each decoder layer: q, k, v, o, gate, up, down
PROJECTIONS_PER_LAYER = 7
# module names of what LoRA must leave alone: vision towers, projectors / mergers, lm_head
NOT_LANGUAGE_MODEL = re.compile(r"vision|visual|projector|merger|connector|lm_head")


@pytest.fixture(scope="module")
def family_dirs(tiny_run_template: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    titles = pd.read_parquet(tiny_run_template["run"] / schema.ITEMS_FILE)[schema.TITLE].tolist()
    root = tmp_path_factory.mktemp("families")
    return {f: str(build_tiny_vlm(root / f, f, titles)) for f in VLM_FAMILIES}


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_item_summaries_see_image_and_text(tiny_run: dict, family: str, family_dirs: dict[str, str]) -> None:
    cfg = SummarizeConfig(run_dir=str(tiny_run["run"]), item_model=family_dirs[family], max_new_tokens=4,
                          batch_size=16)
    backend = TransformersBackend(cfg.item_model, batch_size=16)
    seen = []
    chat_inputs = backend.loaded.chat_inputs

    def recording(conversations):  # the real method, called through; we keep what reached the model
        batch = chat_inputs(conversations)
        seen.append(batch)
        return batch

    backend.loaded.chat_inputs = recording
    stats = summarize_items(cfg, backend)
    items = pd.read_parquet(tiny_run["run"] / schema.ITEMS_FILE)
    assert stats["generated"] == len(items) and 0 < stats["text_only"] < len(items)
    image_id = backend.loaded.model.config.image_token_id
    with_image = [b for b in seen if "pixel_values" in b]
    assert with_image and all((b["input_ids"] == image_id).any(dim=1).all() for b in with_image)
    assert sum(len(b["input_ids"]) for b in with_image) == len(items) - stats["text_only"]
    title = items.loc[items[schema.IMAGE].notna(), schema.TITLE].iloc[0]
    tokenizer = backend.loaded.tokenizer
    assert any(title in tokenizer.decode(row) for b in with_image for row in b["input_ids"])


@pytest.fixture(scope="module")
def sft_rows(tiny_run_template: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sft_rows") / "run"
    shutil.copytree(tiny_run_template["run"], run)
    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, history_titles=3))
    return run


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_lora_sft_wraps_only_the_language_model_and_reloads(sft_rows: Path, tmp_path: Path, family: str,
                                                            family_dirs: dict[str, str]) -> None:
    max_pixels = {"qwen2_vl": 4 * 28 * 28, "qwen2_5_vl": 4 * 28 * 28, "qwen3_vl": 4 * 32 * 32}.get(family)
    script = SftScriptArguments(run_dir=str(sft_rows), eval_split=None, max_train_rows=8, max_pixels=max_pixels)
    training = SFTConfig(output_dir=str(tmp_path / "adapter"), use_cpu=True, bf16=False, max_length=None, max_steps=2,
                         per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                         eval_strategy="no", report_to="none", seed=0, dataloader_num_workers=0,
                         activation_checkpointing=False)
    model_cfg = ModelConfig(model_name_or_path=family_dirs[family], dtype="float32", use_peft=True, lora_r=4,
                            lora_alpha=8, lora_dropout=0.0)
    trainer = build_trainer(script, training, model_cfg)
    wrapped = {n for n, m in trainer.model.named_modules() if hasattr(m, "lora_A") and n}
    assert len(wrapped) == PROJECTIONS_PER_LAYER * TextShape().num_layers, sorted(wrapped)
    assert not any(NOT_LANGUAGE_MODEL.search(n) for n in wrapped), sorted(wrapped)
    if max_pixels:  # the cap reaches the processor the trainer collates with
        assert trainer.processing_class.image_processor.size.longest_edge == max_pixels

    out = train(script, training, model_cfg, trainer)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        reloaded = load_model(family_dirs[family], "float32", "cpu", adapter=str(out), max_pixels=max_pixels).model
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_lora_regex_matches_the_decoder_projections(family: str, family_dirs: dict[str, str]) -> None:
    model = load_model(family_dirs[family], "float32", "cpu").model
    pattern = re.compile(lora_target_regex(model))
    hits = [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    assert len(hits) == PROJECTIONS_PER_LAYER * TextShape().num_layers
    assert all(isinstance(model.get_submodule(n), torch.nn.Linear) for n in hits)


@pytest.mark.parametrize("family", MROPE_FAMILIES)
def test_max_pixels_bounds_image_tokens(family: str, family_dirs: dict[str, str]) -> None:
    unit = 32 if family == "qwen3_vl" else 28  # pixels per merged image token, each side
    big = Image.new("RGB", (400, 300), "red")
    counts = {}
    for tokens in (64, 16, 4):
        loaded = load_model(family_dirs[family], "float32", "cpu", max_pixels=tokens * unit * unit)
        batch = loaded.chat_inputs([[{"role": "user", "content": [{"type": "image", "image": big},
                                                                   {"type": "text", "text": "A hat?"}]}]])
        counts[tokens] = int((batch["input_ids"] == loaded.model.config.image_token_id).sum())
        assert 0 < counts[tokens] <= tokens
    assert counts[64] > counts[16] > counts[4]


def test_max_pixels_is_refused_where_the_processor_cannot_apply_it(family_dirs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="does not resize by area"):
        load_model(family_dirs["llava"], "float32", "cpu", max_pixels=100_000)
