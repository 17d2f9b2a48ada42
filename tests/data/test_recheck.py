"""An item image that breaks after `msr data prepare` (corrupt, truncated, huge, a pixel bomb, a folder,
deleted) is counted by reason and its item asked about without an image, in item summaries, SFT rows and
scoring; a re-run while it is still broken does nothing new, and a re-run after the repair uses it again."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest

from helpers import NO_SUMMARIES, run_cli
from msr import schema
from msr.data import images as images_module
from msr.data.images import MAX_IMAGE_BYTES
from msr.data.sft import CandidatePrompts, SftDataConfig, candidates, load_sft_split, write_sft_rows
from msr.rundir import RunDir
from msr.summarize.backends import Backend, GenerationSettings, Request
from msr.summarize.config import SummarizeConfig
from msr.summarize.items import summarize_items


def _png_bomb(path: Path, side: int = 30_000) -> None:
    """A PNG of a few hundred bytes that claims `side` x `side` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _huge(path: Path) -> None:
    with path.open("wb") as f:  # sparse: costs no disk
        f.truncate(MAX_IMAGE_BYTES + 1)


BREAKS = {  # how an image breaks -> the reason counted (None: any one reason)
    "corrupt": (lambda p: p.write_bytes(b"\xff\xd8\xff not a jpeg any more"), "unreadable"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]), "unreadable"),
    "huge": (_huge, "too_large"),
    # msr's own pixel cap when it has one; else PIL's bomb guard refuses it (as unreadable)
    "pixel bomb": (_png_bomb, getattr(images_module, "TOO_MANY_PIXELS", None)),
    "a folder": (lambda p: (p.unlink(), p.mkdir(), (p / "x.jpg").write_bytes(b"x")), "missing"),
    "deleted": (lambda p: p.unlink(), "missing"),
}


def _victim(run: Path) -> tuple[str, Path]:
    """An item with an image that is a candidate of the first test example (so scoring reads it)."""
    images = pd.read_parquet(run / schema.ITEMS_FILE).set_index(schema.ITEM)[schema.IMAGE]
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    first = examples[examples[schema.SPLIT] == "test"].iloc[0].to_dict()
    item = next(i for i, _ in candidates(first) if isinstance(images.get(i), str))
    return item, Path(images[item])


def _repair(path: Path, original: bytes) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    path.write_bytes(original)


class Recording(Backend):
    """A backend that answers at once and keeps every request (the item summarizer's view of the prompts)."""

    model_id, batch_size = "recording", 64

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def _generate(self, requests: list[Request], settings: GenerationSettings) -> list[str]:
        self.requests += requests
        return [f"summary {n}" for n in range(len(requests))]


def _summarize(run: dict) -> tuple[dict, Recording]:
    backend = Recording()
    cfg = SummarizeConfig(run_dir=str(run["run"]), item_model=run["vlm"])
    return summarize_items(cfg, backend), backend


def _victim_rows(run: Path, item: str) -> list[dict]:
    rows = load_sft_split(run, "test")
    return [row for row in rows if row[schema.ITEM] == item]


@pytest.mark.parametrize("how", list(BREAKS))
def test_an_image_broken_after_prepare_is_counted_and_asked_without(how: str, fresh_run: dict,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    run = fresh_run["run"]
    item, path = _victim(run)
    original = path.read_bytes()
    breaks, reason = BREAKS[how]
    breaks(path)
    sft = SftDataConfig(run_dir=str(run), user_summary=False, candidate_summary=False, splits=["test"])
    with caplog.at_level(logging.WARNING, logger="msr.data.recheck"):
        stats, backend = _summarize(fresh_run)
        counts = write_sft_rows(sft)
    counted = {k: v for k, v in stats.items() if k.startswith("items_image_")}
    assert counted == ({f"items_image_{reason}": 1} if reason else {next(iter(counted)): 1}), stats
    assert {k: v for k, v in counts.items() if k.startswith("items_image_")} == counted
    assert any(f"item {item}:" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    # item summary: the text-only prompt, under the text-only key; SFT rows and scoring: no image
    (record,) = [r for r in _jsonl(run / schema.ITEM_SUMMARIES_FILE) if r[schema.ITEM] == item]
    assert (record["has_image"], record["prompt"]) == (False, "item_summary_text_only")
    assert path not in {r.image for r in backend.requests}
    assert not any(row["images"] for row in _victim_rows(run, item))
    prompts = CandidatePrompts(RunDir(run), sft)
    assert item not in prompts.images and item in _images_of(run)
    assert all(r["images"] for r in _victim_rows(run, _other_with_image(run, item)))
    # still broken: nothing new to do, nothing crashes
    assert _summarize(fresh_run)[0]["generated"] == 0
    assert write_sft_rows(sft)["test"] == counts["test"]
    # repaired: the image is used again
    _repair(path, original)
    stats, backend = _summarize(fresh_run)
    assert stats["generated"] == 1 and backend.requests[0].image == path
    assert not any(k.startswith("items_image_") for k in stats)
    counts = write_sft_rows(sft)
    assert not any(k.startswith("items_image_") for k in counts)
    assert all(len(row["images"]) == 1 for row in _victim_rows(run, item))


def _images_of(run: Path) -> dict[str, str]:
    items = pd.read_parquet(run / schema.ITEMS_FILE)
    return {i: p for i, p in zip(items[schema.ITEM], items[schema.IMAGE]) if isinstance(p, str)}


def _other_with_image(run: Path, victim: str) -> str:
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    images = _images_of(run)
    test = examples[examples[schema.SPLIT] == "test"].to_dict("records")
    return next(i for e in test for i, _ in candidates(e) if i != victim and i in images)


def test_every_stage_runs_through_a_broken_image_from_the_command_line(fresh_run: dict, capsys,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The real tiny VLM, through `msr`: summarize items, data sft and score finish (exit 0), count the bad image,
    and ask about its item without it; after the repair every stage uses it again."""
    run, vlm = str(fresh_run["run"]), fresh_run["vlm"]
    item, path = _victim(fresh_run["run"])
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 3])
    summarize = ["summarize", "items", "--run_dir", run, "--item_model", vlm, "--max_new_tokens", "1",
                 "--batch_size", "64"]
    sft = ["data", "sft", "--run_dir", run, "--splits", "test", *NO_SUMMARIES]
    score = ["score", "--run_dir", run, "--model", vlm, "--device", "cpu", "--dtype", "float32",
             "--max_examples", "1"]
    with caplog.at_level(logging.WARNING, logger="msr.data.recheck"):
        for args in (summarize, sft, score):
            code, out, err = run_cli(args, capsys)
            assert code == 0 and "Traceback" not in err, err
            if args is not score:
                assert '"items_image_unreadable": 1' in out, out
    assert sum(f"item {item}:" in r.getMessage() for r in caplog.records) == 3  # one warning per stage
    records = [r for r in _jsonl(fresh_run["run"] / schema.ITEM_SUMMARIES_FILE) if r[schema.ITEM] == item]
    assert [r["has_image"] for r in records] == [False]
    scored = pd.read_parquet(fresh_run["run"] / "scores.parquet")
    assert item in set(scored[schema.ITEM])

    path.write_bytes(original)
    caplog.clear()
    for args in (summarize, sft):
        code, out, err = run_cli(args, capsys)
        assert code == 0 and "items_image_" not in out, err
    records = [r for r in _jsonl(fresh_run["run"] / schema.ITEM_SUMMARIES_FILE) if r[schema.ITEM] == item]
    assert [r["has_image"] for r in records] == [False, True]
    assert all(len(row["images"]) == 1 for row in _victim_rows(fresh_run["run"], item))
    assert run_cli(score, capsys)[0] == 0  # the rows changed: scored afresh, with the image
    assert not [r for r in caplog.records if f"item {item}:" in r.getMessage()]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_image_is_checked_once_per_run_and_warnings_are_bounded(tmp_path: Path, monkeypatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import msr.data.recheck as recheck

    seen: list[Path] = []

    def check(path: Path, max_pixels: int) -> str:
        seen.append(path)
        return "ok" if path.name == "good.jpg" else "unreadable"

    monkeypatch.setattr(recheck, "check_image", check)
    good, bad = str(tmp_path / "good.jpg"), str(tmp_path / "bad.jpg")
    images = {"a": good, "b": good, "c": None, **{f"x{n}": bad for n in range(recheck.SHOWN + 5)}}
    with caplog.at_level(logging.WARNING, logger="msr.data.recheck"):
        usable, counts = recheck.recheck_images(images, "test stage")
    assert sorted(map(str, seen)) == [bad, good]  # once per distinct path, not once per item
    assert usable == {"a": good, "b": good} and counts == {"items_image_unreadable": recheck.SHOWN + 5}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == recheck.SHOWN + 1
    assert f"test stage: {recheck.SHOWN + 5} item image(s) no longer usable" in messages[-1]


def test_later_checks_use_the_pixel_cap_prepare_used(tmp_path: Path) -> None:
    import msr.data.recheck as recheck
    from msr.data.images import MAX_IMAGE_PIXELS
    from msr.provenance import Stage
    from msr.rundir import RunDir

    run = RunDir(tmp_path / "run")
    assert recheck.pixel_cap(run) == MAX_IMAGE_PIXELS
    Stage(run, "data.prepare", {"max_image_pixels": 10**9}, {}).commit()
    assert recheck.pixel_cap(run) == 10**9
