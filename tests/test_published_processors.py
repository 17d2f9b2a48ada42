"""msr against the published processors (tokenizer, chat template, image processor) of the checkpoints users run:
Qwen2.5-VL-7B-Instruct, Qwen3-VL-4B-Instruct, SmolVLM-256M-Instruct, llava-v1.6-mistral-7b-hf and llava-1.5-7b-hf,
with tiny random weights around each (`msr.tiny.build_around_processor`). The files are data, not part of msr:
they are read from $MSR_REAL_PROCESSORS, else ../shared/real-processors beside the repository, and these tests
skip where neither exists (a clean clone in CI)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from msr.data.sft import answer_messages, recommendation_messages
from msr.models import load_model
from msr.parity import ParityError, QuestionCollator, as_image, check_parity, supervised
from msr.score import Scorer
from msr.tiny import build_around_processor
from msr.tiny.tokenizer import train_tokenizer

ROOT = Path(os.environ.get("MSR_REAL_PROCESSORS", Path(__file__).resolve().parents[2] / "shared" / "real-processors"))
PUBLISHED = ("llava", "llava_next", "idefics3", "qwen2_5_vl", "qwen3_vl")
pytestmark = pytest.mark.skipif(not all((ROOT / f).is_dir() for f in PUBLISHED),
                                reason=f"the published processor files are not at {ROOT}")


def _processor_dir(family: str, tmp: Path, template: str = "current") -> Path:
    """The family's published files; LLaVA-NeXT's with the processor config the Hub serves now and its current
    template (`*.current.json`, see SOURCES.md), or its 2024 template (`template="2024"`)."""
    folder = tmp / f"{family}-{template}"
    shutil.copytree(ROOT / family, folder)
    if family == "llava_next":
        shutil.copyfile(folder / "processor_config.current.json", folder / "processor_config.json")
        if template == "current":
            shutil.copyfile(folder / "chat_template.current.json", folder / "chat_template.json")
        for current in folder.glob("*.current.json"):
            current.unlink()
    return folder


@pytest.fixture(scope="module")
def around(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("published")
    return {f: str(build_around_processor(_processor_dir(f, root), root / f"{f}-model")) for f in PUBLISHED}


def _row(label: int, image: Image.Image | None) -> dict:
    user = "What we know about the user: likes red hats and warm colours.\n"
    return {"prompt": recommendation_messages(user, 'Title: "A red felt hat".', image is not None),
            "completion": answer_messages(label), "images": [image] if image else []}


@pytest.mark.parametrize("family", PUBLISHED)
def test_the_guard_passes_on_the_published_processor(family: str, around: dict[str, str]) -> None:
    loaded = load_model(around[family], "float32", "cpu")
    yes, no = check_parity(loaded.processor, True, _row(1, Image.new("RGB", (64, 64), "red")))
    assert [t.lstrip("\u2581Ġ") for t in loaded.tokenizer.convert_ids_to_tokens([yes, no])] == ["Yes", "No"]
    batch = QuestionCollator(processor=loaded.processor)([_row(0, Image.new("RGB", (80, 48), "blue")), _row(1, None)])
    assert [supervised(batch, r)[0] for r in (0, 1)] == [no, yes]


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_trl_collator_would_train_a_bare_space_on_the_published_llava(family: str, around: dict[str, str]) -> None:
    """The defect msr's collator exists for, on the real llava-hf tokenizers: TRL's collator tokenizes " Yes..."
    alone, and the legacy normalizer makes its first token a bare "▁"."""
    loaded = load_model(around[family], "float32", "cpu")
    row = _row(1, Image.new("RGB", (64, 64), "red"))
    theirs = DataCollatorForVisionLanguageModeling(processor=loaded.processor, completion_only_loss=True)(
        [{**row, "images": [as_image(i) for i in row["images"]]}])
    tokens = loaded.tokenizer.convert_ids_to_tokens
    assert tokens(supervised(theirs, 0))[:2] == ["\u2581", "\u2581Yes"]
    ours = QuestionCollator(processor=loaded.processor)([row])
    assert tokens(supervised(ours, 0))[0] == "\u2581Yes" and tokens(ours["input_ids"][0][:1].tolist()) == ["<s>"]


def test_llava_next_2024_template_is_refused_saying_why(tmp_path: Path) -> None:
    """The template llava-v1.6-mistral-7b-hf published in 2024 wrote a literal `<\\s>` after the answer."""
    model = build_around_processor(_processor_dir("llava_next", tmp_path, template="2024"), tmp_path / "model")
    with pytest.raises(ParityError, match=r"'Yes' is one token \('\u2581Yes'\), but the chat template renders text "
                                          r"after it, '<\\\\s>'"):
        Scorer(load_model(str(model), "float32", "cpu"))


@pytest.mark.parametrize("family", PUBLISHED)
def test_the_tiny_family_renders_as_the_published_template(family: str, around: dict[str, str]) -> None:
    """msr.tiny's hand-written template renders msr's questions exactly as the published one does (with and without
    an image, with the generation prompt and with the answer), and its tokenizer adds the bos where the published
    one does."""
    published = load_model(around[family], "float32", "cpu").processor
    tiny = train_tokenizer(["a red felt hat"], family)
    for row in (_row(1, Image.new("RGB", (8, 8))), _row(0, None)):
        for messages, generation in ((row["prompt"], True), (row["prompt"] + row["completion"], False)):
            ours = tiny.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)
            assert ours == published.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)
    text = "USER: hello"
    assert (tiny(text)["input_ids"][0] == tiny.bos_token_id) == \
        (published.tokenizer(text)["input_ids"][0] == published.tokenizer.bos_token_id)


@pytest.mark.parametrize("family", PUBLISHED)
def test_prefix_reuse_equals_full_prompts_on_the_published_processor(family: str, around: dict[str, str],
                                                                     tmp_path: Path) -> None:
    loaded = load_model(around[family], "float32", "cpu")
    paths = []
    for k, size in enumerate([(64, 64), (120, 64), (48, 96)]):
        paths.append(str(tmp_path / f"{k}.png"))
        Image.new("RGB", size, (60 * k, 120, 200 - 50 * k)).save(paths[-1])
    images = [*paths, None, None]
    user = ("What we know about the user: likes red hats and warm colours, wool in winter and linen in summer; "
            "buys for the family at weekends and keeps away from anything loud or bulky.\n")  # > MIN_SHARED_PREFIX
    messages = [recommendation_messages(user, f'Title: "Item {k} {"long " * k}".', image is not None)
                for k, image in enumerate(images)]
    reference = Scorer(loaded, prefix_reuse=False, batch_size=1).score(messages, images)
    reused = Scorer(loaded, prefix_reuse=True, batch_size=8)
    assert np.abs(reused.score(messages, images) - reference).max() < 1e-5
    assert reused.reused_tokens > 0

