"""SFT with TRL + PEFT on a tiny VLM: pinned losses, LoRA-only updates, answer-only labels, reload, QLoRA."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import TrainerCallback
from trl import ModelConfig, SFTConfig

from msr.data.sft import SftDataConfig, write_sft_rows
from msr.models import load_model
from msr.checkpoints import checkpoint_gaps, last_complete_checkpoint
from msr.train import (
    FINGERPRINT_FILE,
    NOT_LEARNING_SCRIPT,
    NOT_LEARNING_TRAINING,
    SftScriptArguments,
    build_trainer,
    train,
    training_fingerprint,
)

# losses logged at steps 1..6 of the pinned run below (tiny LLaVA-1.5, seed 0, fp32, CPU; the answer and the
# space after it are supervised)
PINNED_LOSSES: list[float] = [6.5089, 6.5483, 6.4306, 6.3468, 6.2462, 6.217]


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
    yes, no = tokenizer.convert_tokens_to_ids(["\u2581Yes", "\u2581No"])
    for row, labels, ids in zip(rows, batch["labels"], batch["input_ids"]):
        kept = (labels != -100).nonzero().flatten()
        assert torch.equal(labels[kept], ids[kept])
        answer = row["completion"][0]["content"][0]["text"]
        assert labels[kept[0]].item() == (yes if answer == "Yes" else no)
        # the answer, then what LLaVA-1.5's template puts after it: a space, no eos
        assert tokenizer.convert_ids_to_tokens(labels[kept][1:]) == ["\u2581"]
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


def test_every_learning_setting_and_the_rows_decide_a_resume(sft_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    saving = dict(max_steps=2, save_strategy="steps", save_steps=1)
    script, training, model_cfg = _args(sft_run, out, **saving)
    trainer = build_trainer(script, training, model_cfg)
    # TRL fills in some args of its own (here for a VLM): on the trainer's copy, not the recipe's config
    assert trainer.args.ddp_find_unused_parameters is True and training.ddp_find_unused_parameters is None
    trainer.add_callback(_Recorder(kill_after_saving=1))
    with pytest.raises(_Killed):
        train(script, training, model_cfg, trainer)
    assert last_complete_checkpoint(out) == str(out / "checkpoint-1")
    # settings the old hand-picked list missed: each refuses the resume, naming itself
    for name, value in (("max_grad_norm", 0.5), ("adam_beta2", 0.99), ("label_smoothing_factor", 0.1)):
        with pytest.raises(ValueError, match=rf"other settings \(changed: training\.{name}\)"):
            train(*_args(sft_run, out, **saving, **{name: value}))
    # so does a changed row file, though every setting is the same
    row_file = sft_run["run"] / "sft" / "train" / "state.json"
    original = row_file.read_bytes()
    row_file.write_bytes(original + b"\n")
    with pytest.raises(ValueError, match=r"other settings \(changed: rows\.train\)"):
        train(*_args(sft_run, out, **saving))
    row_file.write_bytes(original)
    # logging and saving cadence do not: the run resumes its checkpoint and makes the step left
    script, training, model_cfg = _args(sft_run, out, **{**saving, "save_steps": 5, "logging_steps": 2})
    trainer = build_trainer(script, training, model_cfg)
    recorder = _Recorder()
    trainer.add_callback(recorder)
    train(script, training, model_cfg, trainer)
    assert recorder.begin == 1 and recorder.steps == [2]
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2]  # step 1: the checkpoint's log


def test_cadence_and_eval_only_settings_stay_out_of_the_fingerprint(sft_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    script, training, model_cfg = _args(sft_run, out)
    base = training_fingerprint(script, training, model_cfg)
    assert json.loads(json.dumps(base)) == base and base["training"]["lr_scheduler_type"] == "linear"  # enum values
    assert base["rows"]["eval"] is None and len(base["rows"]["train"]) == 64  # a sha256 hex digest
    assert "hub_token" not in base["training"] and "output_dir" not in base["training"]
    for overrides in ({"report_to": "tensorboard"}, {"logging_steps": 7, "logging_strategy": "epoch"},
                      {"save_steps": 3, "save_total_limit": 1}, {"eval_steps": 3, "per_device_eval_batch_size": 2},
                      {"dataloader_num_workers": 2, "dataloader_pin_memory": True}, {"output_dir": str(tmp_path / "x")},
                      {"run_name": "another"}, {"disable_tqdm": True}):
        assert training_fingerprint(*_args(sft_run, out, **overrides)) == base, overrides
    # paths are normalised to strings
    assert training_fingerprint(dataclasses.replace(script, run_dir=Path(script.run_dir)), training, model_cfg) == base
    # a model setting counts, and so does any SFTConfig field not named as cadence
    assert training_fingerprint(*_args(sft_run, out, lora_r=4))["model"]["lora_r"] == 4
    for name, value in (("loss_type", "dft"), ("neftune_noise_alpha", 5.0), ("lr_scheduler_kwargs", {"x": 1})):
        assert training_fingerprint(*_args(sft_run, out, **{name: value}))["training"][name] == value

    # evaluation: which split and how many rows are eval-only settings, but the eval rows' content counts
    with_eval = dataclasses.replace(script, eval_split="valid")
    evaluated = training_fingerprint(with_eval, training, model_cfg)
    assert evaluated["script"] == base["script"] and evaluated["rows"]["eval"] is not None
    assert training_fingerprint(dataclasses.replace(with_eval, max_eval_rows=3), training, model_cfg) == evaluated
    (sft_run["run"] / "sft" / "valid" / "state.json").write_text("{}")
    assert training_fingerprint(with_eval, training, model_cfg)["rows"]["eval"] != evaluated["rows"]["eval"]
    # with load_best_model_at_end the evaluation and saving cadence pick the final weights: they count
    best = dict(load_best_model_at_end=True, eval_strategy="steps", save_strategy="steps", eval_steps=2, save_steps=2)
    picked = training_fingerprint(*_args(sft_run, out, **best))
    assert picked["training"]["eval_steps"] == 2 and picked["training"]["save_steps"] == 2
    assert training_fingerprint(*_args(sft_run, out, **{**best, "eval_steps": 4, "save_steps": 4})) != picked


def test_cadence_field_names_are_real_fields() -> None:
    """A misspelt or removed name would silently count (or stop excluding) a field."""
    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    assert {n for names in NOT_LEARNING_TRAINING.values() for n in names} <= fields
    script_fields = {f.name for f in dataclasses.fields(SftScriptArguments)}
    assert {n for names in NOT_LEARNING_SCRIPT.values() for n in names} <= script_fields


class _Killed(Exception):
    pass


class _Recorder(TrainerCallback):
    """The step training starts from, the steps it runs and their losses; optionally dies after a save."""

    def __init__(self, kill_after_saving: int | None = None):
        self.kill_after_saving, self.begin, self.steps, self.losses = kill_after_saving, None, [], {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.kill_after_saving:
            raise _Killed


def test_resumes_from_the_last_complete_checkpoint(sft_run: dict, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    script, training, model_cfg = _args(sft_run, out, max_steps=3, save_strategy="steps", save_steps=1)
    trainer = build_trainer(script, training, model_cfg)
    first = _Recorder(kill_after_saving=2)
    trainer.add_callback(first)
    with pytest.raises(_Killed):
        train(script, training, model_cfg, trainer)
    assert first.steps == [1, 2] and last_complete_checkpoint(out) == str(out / "checkpoint-2")
    (out / "checkpoint-2" / "trainer_state.json").unlink()  # killed while saving step 2: state comes last
    assert last_complete_checkpoint(out) == str(out / "checkpoint-1")

    trainer = build_trainer(script, training, model_cfg)
    again = _Recorder()
    trainer.add_callback(again)
    train(script, training, model_cfg, trainer)
    assert again.begin == 1 and again.steps == [2, 3] and trainer.state.global_step == 3  # 1 -> 3, not 0 -> 3
    assert again.losses[2] == pytest.approx(first.losses[2], abs=1e-4)  # the very step the killed run made
    assert (out / "incomplete-checkpoint-2").is_dir()  # set aside, not mixed into the new checkpoint-2
    assert not checkpoint_gaps(out / "checkpoint-2") and last_complete_checkpoint(out) == str(out / "checkpoint-3")


def test_what_makes_a_checkpoint_complete(tmp_path: Path) -> None:
    def checkpoint(step: int, *, skip: str = "", state: str = '{"global_step": 1}', weights="model.safetensors"):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        for name in (weights, "optimizer.pt", "scheduler.pt", "rng_state.pth"):
            if name != skip:
                (path / name).write_bytes(b"x")
        if skip != "trainer_state.json":
            (path / "trainer_state.json").write_text(state)
        return path

    assert last_complete_checkpoint(tmp_path) is None and last_complete_checkpoint(tmp_path / "none") is None
    checkpoint(1, weights="adapter_model.safetensors")
    assert checkpoint_gaps(tmp_path / "checkpoint-1") == []
    checkpoint(2)
    checkpoint(10, skip="optimizer.pt")
    checkpoint(11, skip="scheduler.pt")
    checkpoint(12, skip="model.safetensors")
    checkpoint(13, state='{"global_step": 1')  # truncated while written
    checkpoint(14, skip="trainer_state.json")
    assert checkpoint_gaps(tmp_path / "checkpoint-10") == ["optimizer.pt"]
    assert checkpoint_gaps(tmp_path / "checkpoint-12") == ["model or adapter weights"]
    assert checkpoint_gaps(tmp_path / "checkpoint-13") == ["a readable trainer_state.json"]
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")  # by step number, not name
    (tmp_path / "checkpoint-2" / "rng_state.pth").unlink()  # optional: resuming without it only warns
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


def test_a_second_training_run_into_the_same_folder_is_refused(sft_run: dict, tmp_path: Path) -> None:
    from msr.rundir import RunDir, StageBusyError

    out = tmp_path / "adapter"
    script, training, model_cfg = _args(sft_run, out, max_steps=1)
    with RunDir(script.run_dir).lock(f"train {out.resolve()}"):  # as the first run holds it
        with pytest.raises(StageBusyError, match="another process|pid"):
            train(script, training, model_cfg)
    train(script, training, model_cfg)
