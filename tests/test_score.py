"""The scorer: one forward per batch, identical with and without prefix reuse on every family, refuses split answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from msr import schema
from msr.data.sft import CandidatePrompts, SftDataConfig, candidates, recommendation_messages
from msr.models import load_model
from msr.rundir import RunDir
from msr.score import Scorer
from msr.tiny import MROPE_FAMILIES, VLM_FAMILIES, build_tiny_vlm

# image sizes of the mixed group: square, wide, tall, tiny and very wide (M-RoPE grids of different shapes)
SIZES = [(56, 56), (120, 64), (64, 140), (30, 30), (200, 30)]


def _groups(run: Path, n: int = 3) -> list[tuple[list, list]]:
    """Candidates of the first n test examples, asked exactly as `msr data sft` asks them."""
    prompts = CandidatePrompts(RunDir(run), SftDataConfig(run_dir=str(run), user_summary=False,
                                                          candidate_summary=False, history_titles=3))
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    groups = []
    for e in examples[examples[schema.SPLIT] == "test"].head(n).to_dict("records"):
        pairs = [prompts.messages(e[schema.USER], e[schema.HISTORY_LEN], item) for item, _ in candidates(e)]
        groups.append(([m for m, _ in pairs], [i for _, i in pairs]))
    return groups


def _mixed_group(folder: Path, n: int = 34) -> tuple[list, list]:
    """One user's n candidates: images of different sizes, a third without an image, titles of different lengths
    (so batches of 32 pad), more candidates than one batch of 32."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, size in enumerate(SIZES):
        path = folder / f"{k}.png"
        Image.new("RGB", size, (40 * k, 120, 200 - 30 * k)).save(path)
        paths.append(str(path))
    user = "What we know about the user: likes red hats and warm colours.\n"
    messages, images = [], []
    for k in range(n):
        image = paths[k % len(paths)] if k % 3 != 2 else None
        messages.append(recommendation_messages(user, f'Title: "Item {k} {"long " * (k % 7)}".', image is not None))
        images.append(image)
    return messages, images


@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("score_models")
    return {f: str(build_tiny_vlm(root / f, f, ["a red hat", "a blue mug"])) for f in VLM_FAMILIES}


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_batch_size_padding_and_prefix_reuse_agree(tiny_run: dict, tmp_path: Path, family: str,
                                                   family_models: dict[str, str]) -> None:
    loaded = load_model(family_models[family], "float32", "cpu")
    groups = [*_groups(tiny_run["run"]), _mixed_group(tmp_path / "images")]
    results = {}
    for reuse in (False, True):
        for batch_size in (1, 4, 32):
            scorer = Scorer(loaded, prefix_reuse=reuse, batch_size=batch_size)
            results[(reuse, batch_size)] = np.concatenate([scorer.score(c, i) for c, i in groups])
            assert scorer.prefix_reuse == reuse
            if reuse and batch_size > 1:
                assert scorer.reused_tokens > 0  # the shared prefix really was computed once
    reference = results[(False, 1)]  # one unpadded row at a time, the full prompt
    assert ((reference > 0) & (reference < 1)).all()
    for key, scores in results.items():
        assert np.abs(scores - reference).max() < 1e-5, key


@pytest.mark.parametrize("family", MROPE_FAMILIES)
def test_mrope_suffix_needs_the_rope_index_positions(tmp_path: Path, family: str, family_models: dict[str, str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The agreement above is not luck: plain 1-D suffix positions (what a LLaVA-style prefix reuse would give)
    score the same M-RoPE prompts differently."""
    loaded = load_model(family_models[family], "float32", "cpu")
    messages, images = _mixed_group(tmp_path / "images", n=8)
    exact = Scorer(loaded, prefix_reuse=True, batch_size=8).score(messages, images)
    monkeypatch.setattr(Scorer, "_full_positions",  # LLaVA's plain count of tokens, as 1-D positions
                        lambda self, inputs: (inputs["attention_mask"].long().cumsum(1) - 1).clamp(min=0))
    plain = Scorer(loaded, prefix_reuse=True, batch_size=8).score(messages, images)
    reference = Scorer(loaded, prefix_reuse=False, batch_size=1).score(messages, images)
    assert np.abs(exact - reference).max() < 1e-5
    assert np.abs(plain - reference).max() > 1e-4


def test_one_long_question_splits_its_batch_and_one_past_the_positions_is_refused(
        tmp_path: Path, family_models: dict[str, str]) -> None:
    """A batch is cut by a token budget, so one long candidate does not pad every other one to its length; a question
    longer than the model's positions is one clear error, never a traceback or a truncated score."""
    from msr.models import PromptTooLongError

    loaded = load_model(family_models["qwen2_5_vl"], "float32", "cpu")
    messages, images = _mixed_group(tmp_path / "images", n=8)
    long_title = 'Title: "' + "very long " * 80 + '".'
    messages[5] = recommendation_messages("What we know about the user: likes red hats.\n", long_title, images[5] is not None)
    widths = []
    hook = loaded.model.register_forward_pre_hook(lambda m, a, kw: widths.append(tuple(kw["input_ids"].shape)),
                                                  with_kwargs=True)
    try:
        whole = Scorer(loaded, prefix_reuse=False, batch_size=8).score(messages, images)
        sizes_whole, widths[:] = list(widths), []
        budget = Scorer(loaded, prefix_reuse=False, batch_size=8, max_batch_tokens=1200)
        split = budget.score(messages, images)
    finally:
        hook.remove()
    assert len(sizes_whole) < len(widths) and all(r * n <= 1200 for r, n in widths if r > 1)
    assert np.abs(split - whole).max() < 1e-5
    positions = loaded.model.config.get_text_config().max_position_embeddings
    messages[5] = recommendation_messages("user\n", 'Title: "' + "word " * positions + '".', False)
    with pytest.raises(PromptTooLongError, match=f"longer than the {positions} positions"):
        budget.score(messages, images)


def _edited_template(source: str, folder: Path, old: str, new: str) -> str:
    shutil.copytree(source, folder)
    template = (folder / "chat_template.jinja").read_text()
    assert old in template
    (folder / "chat_template.jinja").write_text(template.replace(old, new))
    return str(folder)


def test_refuses_answers_that_are_not_one_token(family_models: dict[str, str], tmp_path: Path) -> None:
    model = _edited_template(family_models["llava"], tmp_path / "vlm", "m['role'].upper() + ': '",
                             "m['role'].upper() + ': maybe '")
    with pytest.raises(ValueError, match=r"'Yes' is not a single token after the generation prompt: the answer "
                                         r"tokenizes as \['\u2581m', 'a', 'y', 'b', 'e', '\u2581Yes'"):
        Scorer(load_model(model, "float32", "cpu"))


def test_names_text_after_the_answer_as_the_problem(family_models: dict[str, str], tmp_path: Path) -> None:
    """LLaVA-NeXT's 2024 template wrote a literal `<\\s> ` after the answer: "Yes" is still one token, and the
    refusal says what is wrong instead."""
    model = _edited_template(family_models["llava_next"], tmp_path / "vlm", "eos_token + ' '", "'<\\\\s> '")
    with pytest.raises(ValueError, match=r"'Yes' is one token \('\u2581Yes'\), but the chat template renders text "
                                         r"after it, '<\\\\s>'"):
        Scorer(load_model(model, "float32", "cpu"))


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_yes_and_no_are_single_tokens_for_every_family(family: str, family_models: dict[str, str]) -> None:
    scorer = Scorer(load_model(family_models[family], "float32", "cpu"))
    tokenizer = scorer.loaded.tokenizer
    assert {tokenizer.decode([scorer.yes]).strip(), tokenizer.decode([scorer.no]).strip()} == {"Yes", "No"}
