"""Training and scoring see the same tokens and the same pixels for the same row, on every tiny family and a text LM
(msr/parity.py); TRL's own collator does not, on the LLaVA families, which is why msr extends it. The published
processors themselves: tests/test_published_processors.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
from PIL import Image
from trl import ModelConfig, SFTConfig
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from msr import schema
from msr.data.images import load_rgb
from msr.data.sft import SftDataConfig, load_sft_split, write_sft_rows
from msr.models import load_model
from msr.parity import ParityError, QuestionCollator, as_image, check_parity, question_inputs, supervised
from msr.provenance import require_current
from msr.rundir import RunDir
from msr.score import Scorer
from msr.tiny import VLM_FAMILIES, build_tiny_lm, build_tiny_vlm
from msr.train import SftScriptArguments, build_trainer, rows_for_model, train


@pytest.fixture(scope="module")
def models(tiny_run_template: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    titles = pd.read_parquet(tiny_run_template["run"] / schema.ITEMS_FILE)[schema.TITLE].tolist()
    root = tmp_path_factory.mktemp("parity_models")
    built = {f: str(build_tiny_vlm(root / f, f, titles)) for f in VLM_FAMILIES}
    return {**built, "text": str(build_tiny_lm(root / "text", titles))}


@pytest.fixture(scope="module")
def rows_run(tiny_run_template: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("parity_rows") / "run"
    shutil.copytree(tiny_run_template["run"], run)
    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, history_titles=3,
                                 splits=["train"]))
    return run


def _rows(run: Path, is_vlm: bool, n: int = 6) -> list[dict]:
    """The first training rows with an image and without one, as the trainer reads them."""
    rows = rows_for_model(load_sft_split(run, "train"), True, "training")
    with_image = [r for r in rows if r["images"]][:n // 2]
    without = [r for r in rows if not r["images"]][:n - len(with_image)]
    picked = with_image + without
    return picked if is_vlm else [{k: v for k, v in r.items() if k != "images"} for r in picked]


@pytest.mark.parametrize("family", [*VLM_FAMILIES, "text"])
def test_trained_ids_are_the_scored_prompt_then_the_answer_scored(family: str, models: dict[str, str],
                                                                  rows_run: Path) -> None:
    loaded = load_model(models[family], "float32", "cpu")
    rows = _rows(rows_run, loaded.is_vlm)
    assert any("images" in r and r["images"] for r in rows) == loaded.is_vlm
    yes, no = check_parity(loaded.processor, loaded.is_vlm, rows[0])
    batch = QuestionCollator(processor=loaded.processor, is_vlm=loaded.is_vlm)(rows)  # a padded batch, as trained
    scored = question_inputs(loaded.processor, loaded.is_vlm, rows)
    for r, row in enumerate(rows):
        ids = batch["input_ids"][r][batch["attention_mask"][r].bool()].tolist()
        answer = supervised(batch, r)
        assert ids[:len(ids) - len(answer)] == scored["input_ids"][r][scored["attention_mask"][r].bool()].tolist()
        assert answer[0] == (yes if row["completion"][0]["content"][0]["text"] == "Yes" else no)
    if loaded.is_vlm:
        assert torch.equal(batch["pixel_values"], scored["pixel_values"])


def test_answer_lengths_are_worked_out_once_per_row(models: dict[str, str], rows_run: Path) -> None:
    """A later epoch's batch of rows already seen gives the same labels with one template render instead of three."""
    loaded = load_model(models["llava"], "float32", "cpu")
    rows = _rows(rows_run, True)
    collator = QuestionCollator(processor=loaded.processor, is_vlm=True)
    renders = []
    render = loaded.processor.apply_chat_template
    loaded.processor.apply_chat_template = lambda *a, **kw: renders.append(kw.get("tokenize")) or render(*a, **kw)
    first = collator(rows)
    seen_first, renders[:] = list(renders), []
    again = collator(list(reversed(rows)))
    assert len(seen_first) == 3 and len(renders) == 1 and len(collator.answer_lengths) == len(rows)
    assert [supervised(again, r) for r in range(len(rows))][::-1] == [supervised(first, r) for r in range(len(rows))]


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_trl_collator_trains_a_bare_space_where_msr_trains_the_answer(family: str, models: dict[str, str],
                                                                      rows_run: Path) -> None:
    """Why msr extends TRL's collator: on the SentencePiece-style LLaVA tokenizers TRL tokenizes the completion
    alone, so the first supervised token is a bare "▁" (where the scorer reads "▁Yes") and the prompt lacks the
    `<s>` that the tokenizer adds when the scorer tokenizes it."""
    loaded = load_model(models[family], "float32", "cpu")
    row = _rows(rows_run, True)[0]
    tokens = loaded.tokenizer.convert_ids_to_tokens
    trl = DataCollatorForVisionLanguageModeling(processor=loaded.processor, completion_only_loss=True)
    theirs = trl([{**row, "images": [as_image(image) for image in row["images"]]}])  # TRL takes PIL images
    ours = QuestionCollator(processor=loaded.processor)([row])
    assert tokens(supervised(theirs, 0))[0] == "\u2581"
    assert tokens(supervised(ours, 0))[0] == "\u2581" + row["completion"][0]["content"][0]["text"]
    assert tokens(theirs["input_ids"][0].tolist())[0] != "<s>" and tokens(ours["input_ids"][0].tolist())[0] == "<s>"


def test_the_guard_refuses_a_prompt_that_is_not_a_prefix(models: dict[str, str], rows_run: Path,
                                                         tmp_path: Path) -> None:
    """A template that renders the assistant's header one way in the generation prompt and another once the answer
    follows: training would supervise the answer after a prompt the scorer never asks."""
    folder = tmp_path / "vlm"
    shutil.copytree(models["llava"], folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").write_text(template.replace("m['role'].upper() + ': '",
                                                                 "m['role'].upper() + ' : '"))
    loaded = load_model(str(folder), "float32", "cpu")
    with pytest.raises(ParityError, match=r"not a prefix .*token \d+: trained '.*' \(id \d+\), scored"):
        check_parity(loaded.processor, loaded.is_vlm, _rows(rows_run, True)[0])


def test_training_and_scoring_decode_images_alike(models: dict[str, str], fresh_run: dict) -> None:
    """An EXIF-rotated JPEG and a transparent PNG: the rows (bytes decoded in the collator) and the scorer (the file)
    see the same upright pixels, transparency on white, as the item summarizer does (`load_rgb`)."""
    run = Path(fresh_run["run"])
    items = pd.read_parquet(run / schema.ITEMS_FILE)
    paths = [Path(p) for p in items[schema.IMAGE].dropna()][:2]
    sideways = Image.new("RGB", (40, 20), (250, 0, 0))
    sideways.paste((0, 0, 250), (0, 0, 20, 20))  # left half blue: rotated, the blue is on top
    exif = sideways.getexif()
    exif[0x0112] = 6  # stored sideways, shown rotated 90 degrees clockwise
    sideways.save(paths[0], format="JPEG", exif=exif, quality=100)
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    paths[1].unlink()
    png = paths[1].with_suffix(".png")
    clear.save(png)
    paths[1].symlink_to(png)  # the run recorded the .jpg name
    upright, white = load_rgb(paths[0]), load_rgb(paths[1])
    assert upright.size == (20, 40) and upright.getpixel((10, 2))[2] > 200
    assert white.getpixel((0, 0)) == (255, 255, 255)

    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, splits=["train"]))
    loaded = load_model(models["qwen2_5_vl"], "float32", "cpu")
    rows = rows_for_model(load_sft_split(run, "train"), True, "training")
    by_item = {r[schema.ITEM]: r for r in rows if r["images"]}
    wanted = items.set_index(schema.ITEM).loc[:, schema.IMAGE]
    for path in paths:
        item = next(i for i, p in wanted.items() if isinstance(p, str) and Path(p) == path)
        row = by_item[item]
        trained = QuestionCollator(processor=loaded.processor)([row])
        scored = question_inputs(loaded.processor, True, [{**row, "images": [str(path)]}])
        assert torch.equal(trained["pixel_values"], scored["pixel_values"])
        assert torch.equal(trained["image_grid_thw"], scored["image_grid_thw"])  # the sideways grid would differ
    # datasets' own decoding (what TRL's collator gets) keeps a transparent PNG's hidden black
    decoded = datasets.Image().decode_example({"path": str(png), "bytes": None}).convert("RGB")
    assert decoded.getpixel((0, 0)) == (0, 0, 0) != white.getpixel((0, 0))


def _train_args(run: Path, model: str, out: Path) -> tuple[SftScriptArguments, SFTConfig, ModelConfig]:
    return (SftScriptArguments(run_dir=str(run), eval_split=None, max_train_rows=8),
            SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, max_length=None, max_steps=2,
                      per_device_train_batch_size=4, learning_rate=1e-3, save_strategy="no", eval_strategy="no",
                      report_to="none", seed=0, dataloader_num_workers=0, logging_steps=1),
            ModelConfig(model_name_or_path=model, dtype="float32", use_peft=True, lora_r=4, lora_alpha=8,
                        lora_dropout=0.0))


def test_a_text_lm_trains_and_scores_without_the_images(models: dict[str, str], tiny_run: dict, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Any chat LLM is a recommender (TALLRec-style): the question in string content, the images not shown and
    counted; the rows stay untouched (a cast that wrote a cache file into sft/ would make them look edited)."""
    from msr.score_split import ScoreConfig, score_split

    run = Path(tiny_run["run"])
    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, history_titles=3))
    with caplog.at_level("INFO"):
        out = train(*_train_args(run, models["text"], tmp_path / "adapter"))
    assert "text-only model: 8 of 8 training rows have an image it cannot see" in caplog.text
    assert any(n for n, _ in load_model(models["text"], "float32", "cpu", adapter=str(out)).model.named_modules()
               if "lora_A" in n)
    require_current(RunDir(run), "data.sft", "msr data sft")
    with caplog.at_level("INFO"):
        table = score_split(ScoreConfig(run_dir=str(run), model=models["text"], adapter=str(out), max_examples=2))
    assert len(table) == 12 and table[schema.P_YES].between(0, 1).all()
    assert "is a text-only model:" in caplog.text and "candidates' images were not shown" in caplog.text


def test_a_vlm_trains_without_writing_into_the_rows(models: dict[str, str], tiny_run: dict, tmp_path: Path) -> None:
    run = Path(tiny_run["run"])
    write_sft_rows(SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, splits=["train"]))
    before = sorted(p.name for p in (run / "sft" / "train").iterdir())
    trainer = build_trainer(*_train_args(run, models["llava_next"], tmp_path / "adapter"))
    trainer.train()
    assert sorted(p.name for p in (run / "sft" / "train").iterdir()) == before
    require_current(RunDir(run), "data.sft", "msr data sft")


def test_scorer_guard_runs_on_the_probe_by_default(models: dict[str, str]) -> None:
    scorer = Scorer(load_model(models["llava"], "float32", "cpu"))
    assert scorer.loaded.tokenizer.convert_ids_to_tokens([scorer.yes, scorer.no]) == ["\u2581Yes", "\u2581No"]
