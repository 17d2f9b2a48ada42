"""SFT with TRL + PEFT on a tiny VLM: pinned losses, LoRA-only updates, answer-only labels, reload, QLoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from trl import ModelConfig, SFTConfig

from msr.data.sft import SftDataConfig, write_sft_rows
from msr.models import load_model
from msr.train import FINGERPRINT_FILE, SftScriptArguments, build_trainer, train

# losses logged at steps 1..6 of the pinned run below (tiny LLaVA, seed 0, fp32, CPU)
PINNED_LOSSES: list[float] = [6.3793, 6.2992, 6.1901, 6.1016, 5.9983, 5.9701]


@pytest.fixture
def sft_run(tiny_run: dict) -> dict:
    write_sft_rows(SftDataConfig(run_dir=str(tiny_run["run"]), user_summary=False, candidate_summary=False,
                                 history_titles=3))
    return tiny_run


def _args(run: dict, out: Path, **overrides) -> tuple[SftScriptArguments, SFTConfig, ModelConfig]:
    training = dict(output_dir=str(out), use_cpu=True, bf16=False, max_length=None, max_steps=6,
                    per_device_train_batch_size=8, learning_rate=2e-3, logging_steps=1, save_strategy="no",
                    eval_strategy="no", report_to="none", seed=0, dataloader_num_workers=0)
    model = dict(model_name_or_path=run["vlm"], dtype="float32", use_peft=True, lora_r=8, lora_alpha=16,
                 lora_dropout=0.0)
    for key, value in overrides.items():
        (model if key in model or key.startswith(("lora_", "load_in")) else training)[key] = value
    return (SftScriptArguments(run_dir=str(run["run"]), eval_split=None), SFTConfig(**training),
            ModelConfig(**model))


def test_lora_only_training_with_pinned_losses(sft_run: dict, tmp_path: Path) -> None:
    script, training, model_cfg = _args(sft_run, tmp_path / "adapter")
    trainer = build_trainer(script, training, model_cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    out = train(script, training, model_cfg, trainer)
    losses = [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e]
    assert losses == pytest.approx(PINNED_LOSSES, abs=2e-3), losses
    after = dict(trainer.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    assert lora and all(not torch.equal(before[n], after[n]) for n in lora)  # every adapter weight moved
    frozen = [n for n in before if "lora_" not in n]
    assert all(torch.equal(before[n], after[n]) for n in frozen)  # nothing else did
    assert any("vision_tower" in n for n in frozen) and not any("vision_tower" in n for n in lora)
    assert not any("lm_head" in n or "multi_modal_projector" in n for n in lora)

    # the saved adapter reloads onto the base model and gives the same logits
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        reloaded = load_model(sft_run["vlm"], "float32", "cpu", adapter=str(out)).model
        assert isinstance(reloaded, PeftModel)
        assert torch.allclose(reloaded(**batch).logits, expected, atol=1e-5)
    assert "## Training metrics" in (out / "README.md").read_text()


def test_labels_cover_exactly_the_answer(sft_run: dict, tmp_path: Path) -> None:
    script, training, model_cfg = _args(sft_run, tmp_path / "adapter")
    trainer = build_trainer(script, training, model_cfg)
    tokenizer = trainer.processing_class.tokenizer
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator(rows)
    yes, no = tokenizer.convert_tokens_to_ids(["ĠYes", "ĠNo"])
    for row, labels, ids in zip(rows, batch["labels"], batch["input_ids"]):
        kept = (labels != -100).nonzero().flatten()
        assert torch.equal(labels[kept], ids[kept])
        answer = row["completion"][0]["content"][0]["text"]
        assert labels[kept[0]].item() == (yes if answer == "Yes" else no)
        assert tokenizer.decode(labels[kept]) == f" {answer}{tokenizer.eos_token}"  # answer + end of turn
        assert kept.tolist() == list(range(kept[0].item(), kept[0].item() + len(kept)))


def test_qlora_trains_on_cpu(sft_run: dict, tmp_path: Path) -> None:
    script, training, model_cfg = _args(sft_run, tmp_path / "qlora", load_in_4bit=True, max_steps=2)
    trainer = build_trainer(script, training, model_cfg)
    assert any(type(m).__name__ == "Linear4bit" for m in trainer.model.modules())
    train(script, training, model_cfg, trainer)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_refuses_truncation_and_4bit_without_lora(sft_run: dict, tmp_path: Path) -> None:
    script, training, model_cfg = _args(sft_run, tmp_path, max_length=512)
    with pytest.raises(ValueError, match="max_length must be null"):
        build_trainer(script, training, model_cfg)
    script, training, model_cfg = _args(sft_run, tmp_path, load_in_4bit=True, use_peft=False)
    with pytest.raises(ValueError, match="needs use_peft"):
        build_trainer(script, training, model_cfg)


def test_refuses_model_settings_it_would_ignore(sft_run: dict, tmp_path: Path) -> None:
    script, training, model_cfg = _args(sft_run, tmp_path, load_in_8bit=True)
    with pytest.raises(ValueError, match="load_in_8bit"):
        build_trainer(script, training, model_cfg)


def test_a_checkpoint_of_other_settings_is_never_resumed(sft_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    script, training, model_cfg = _args(sft_run, out, max_steps=2, save_strategy="steps", save_steps=2)
    train(script, training, model_cfg)
    assert (out / "checkpoint-2").is_dir() and (out / FINGERPRINT_FILE).is_file()
    train(script, training, model_cfg)  # the same settings: resumes (nothing left to do)
    script, training, model_cfg = _args(sft_run, out, max_steps=2, learning_rate=1e-3)
    with pytest.raises(ValueError, match=r"other settings \(changed: training.learning_rate\)"):
        train(script, training, model_cfg)
    train(script, training, model_cfg, restart_if_changed=True)  # the quickstart's way: start over
    assert json.loads((out / FINGERPRINT_FILE).read_text())["training"]["learning_rate"] == 1e-3
