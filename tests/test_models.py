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


def _tiny_lm(path, seed: int = 0):
    from msr.tiny import build_tiny_lm

    return build_tiny_lm(path, ["a red mug", "a blue lamp", "a wool hat"], seed=seed)


def test_model_identity_is_the_directory_content_not_its_path(tmp_path) -> None:
    import shutil

    from msr.identity import model_identity

    folder = _tiny_lm(tmp_path / "lm")
    first = model_identity(str(folder))
    assert first == model_identity(str(folder)) == model_identity(str(folder) + "/")
    assert model_identity(str(shutil.copytree(folder, tmp_path / "elsewhere" / "copy"))) == first
    assert model_identity(str(_tiny_lm(tmp_path / "same-seed"))) == first  # same seed, same bytes
    _tiny_lm(folder, seed=1)  # rebuilt in place with other weights
    rebuilt = model_identity(str(folder))
    assert rebuilt != first
    template = folder / "chat_template.jinja"
    template.write_text(template.read_text() + "\n")
    assert model_identity(str(folder)) not in (first, rebuilt)
    (folder / "notes.txt").write_text("not part of the model")  # files the model is not made of are ignored
    edited = model_identity(str(folder))
    (folder / "notes.txt").write_text("still not")
    assert model_identity(str(folder)) == edited


def test_model_identity_covers_processor_files_and_adapters(tmp_path) -> None:
    import json

    from msr.identity import model_identity

    from msr.tiny import build_tiny_vlm

    vlm = build_tiny_vlm(tmp_path / "vlm", "qwen2_5_vl", ["a red mug"])
    before = model_identity(str(vlm))
    config = vlm / "processor_config.json"
    data = json.loads(config.read_text())
    data["image_processor"]["size"]["longest_edge"] = 4 * 28 * 28
    config.write_text(json.dumps(data))
    assert model_identity(str(vlm)) != before
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    one = model_identity(str(adapter))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-2")
    assert model_identity(str(adapter)) != one
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    assert model_identity(str(adapter)) == one


def test_model_identity_is_cached_within_the_process(tmp_path, monkeypatch) -> None:
    import msr.identity

    folder = _tiny_lm(tmp_path / "lm", seed=7)
    calls = []
    real = msr.identity.file_sha256
    monkeypatch.setattr(msr.identity, "file_sha256", lambda path: calls.append(path) or real(path))
    first = msr.identity.model_identity(str(folder))
    assert calls and any(str(p).endswith("model.safetensors") for p in calls)
    calls.clear()
    assert msr.identity.model_identity(str(folder)) == first and calls == []  # stat only


def test_large_weight_files_are_hashed_by_sampling(tmp_path, monkeypatch) -> None:
    import msr.identity

    monkeypatch.setattr(msr.identity, "LARGE_FILE", 10_000)
    monkeypatch.setattr(msr.identity, "_EDGE", 1_000)
    monkeypatch.setattr(msr.identity, "_SAMPLE", 10)
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(50_000))
    hashed = []
    real = msr.identity.file_sha256
    monkeypatch.setattr(msr.identity, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    base = msr.identity.model_identity(str(folder))
    assert hashed == ["config.json"]  # the large file is not read whole

    def with_byte(offset: int) -> str:
        data = bytearray(50_000)
        data[offset] = 1
        weights.write_bytes(bytes(data))
        return msr.identity.model_identity(str(folder))

    assert with_byte(0) != base and with_byte(49_999) != base  # first and last _EDGE bytes
    stride = (50_000 - 2 * 1_000) // (msr.identity._SAMPLES + 1)
    assert with_byte(1_000 + 5 * stride) != base  # a sample
    weights.write_bytes(bytes(50_001))
    assert msr.identity.model_identity(str(folder)) != base  # the size


def test_hub_ids_resolve_their_commit_offline_from_the_cache(tmp_path, monkeypatch) -> None:
    import socket

    from huggingface_hub import constants

    from msr.identity import model_identity

    def no_network(*args, **kwargs):
        raise AssertionError("model_identity touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    unresolved = model_identity("org/model")
    assert unresolved == model_identity("org/model") != model_identity("org/model", "v1")
    assert model_identity("org/other") != unresolved
    refs = tmp_path / "hub" / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    resolved = model_identity("org/model")
    assert resolved != unresolved and resolved == model_identity("org/model", "a" * 40)
    (refs / "main").write_text("b" * 40)  # the cached main moved to another commit
    assert model_identity("org/model") not in (resolved, unresolved)
    (refs / "v1").write_text("a" * 40)
    assert model_identity("org/model", "v1") == resolved


@pytest.mark.parametrize("name, is_path", [
    ("org/model", False), ("gpt2", False), ("Qwen/Qwen2.5-VL-3B-Instruct", False),
    ("/abs/model", True), ("./model", True), ("../model", True), ("~/model", True), ("a/b/c", True),
    ("my model", True), ("org\\model", True),
])
def test_what_looks_like_a_path(name: str, is_path: bool) -> None:
    from msr.identity import looks_like_path

    assert looks_like_path(name) is is_path


def test_a_model_path_that_is_no_model_folder_is_refused_up_front(tmp_path, monkeypatch) -> None:
    from msr.identity import check_model_name, model_identity

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    for name, state in (("models/typo", "does not exist"), ("weights.bin", "is a file"),
                        (str(tmp_path / "gone"), "does not exist")):
        with pytest.raises(FileNotFoundError, match=rf"model not found: {re.escape(name)} \({state}.*org/name"):
            model_identity(name)
    with pytest.raises(FileNotFoundError, match="adapter not found: models is a folder without adapter_config.json"):
        load_model("org/model", adapter="models")
    check_model_name("org/model")  # a hub id is the hub client's to check


def test_a_hub_id_the_hub_cannot_give_is_named(monkeypatch) -> None:
    import msr.models

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(msr.models.AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(FileNotFoundError, match=r"model not found: org/model is not a local folder .*couldn't "
                                                r"connect.*hub cache"):
        is_vision_model("org/model")
