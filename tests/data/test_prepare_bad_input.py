"""The bad-input corpus at prepare: images by reason, nothing left at any step, duplicates and unsorted
rows, and whole-file mistakes (the wrong kind of file, or a file in the wrong place); see test_bad_input.py
for the readers' corpus."""

from __future__ import annotations

import json
import logging
import re
import warnings
import zlib
from pathlib import Path

import pandas as pd
import pytest

from corpus import (
    GOOD,
    JSON_FORMATS,
    REVIEW_KEYS,
    TEXT_FORMATS,
    Fails,
    check,
    items_file,
    prepare_case,
    read,
    render,
    write_case,
)
from helpers import write_jpeg
from msr import schema
from msr.data import images
from msr.data.prepare import PrepareConfig, prepare


# ---------------------------------------------------------------------------------------------
# images at prepare time


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (its pixel data is not there)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_image_reasons_atprepare_case(tmp_path: Path, recwarn) -> None:
    """Symlinks out, NUL bytes, pixel bombs: each one counted once by reason, no warning escapes."""
    outside = tmp_path / "outside.jpg"
    write_jpeg(outside)
    covers = tmp_path / "covers"
    write_jpeg(covers / "10.jpg")
    (covers / "11.jpg").symlink_to(outside)                  # id lookup, symlink out of the folder
    (covers / "12.png").write_bytes(_png_header(12000, 12000))  # 144 MP, a few bytes
    (covers / "13.png").write_bytes(_png_header(20000, 20000))  # past PIL's own bomb limit
    (covers / "14.jpg").symlink_to(tmp_path / "nowhere.jpg")  # dangling: missing
    rows = [(f"u{u}", str(i), 1000 * u + i) for u in range(3) for i in range(10, 16)]
    inter, _ = write_case(tmp_path, "microlens", render("microlens", rows))
    titles = items_file("microlens", tmp_path, ids=[str(i) for i in range(10, 16)])
    stats = prepare(PrepareConfig(run_dir=str(tmp_path / "run"), interactions=str(inter), items=str(titles),
                                  image_dir=str(covers), user_min=1, item_min=1, negatives_test=1))
    dropped = stats["dropped"]
    assert dropped["items_image_unsafe_path"] == 1
    assert dropped["items_image_too_many_pixels"] == 2
    assert dropped["items_image_missing"] == 2  # 14 (dangling) and 15 (no file): not 11
    assert stats["items_with_image"] == 1
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_generic_image_paths_atprepare_case(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_jpeg(folder / "a.jpg")
    write_jpeg(tmp_path / "secret.jpg")
    (folder / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    paths = {"10": "a.jpg", "11": "../secret.jpg", "12": "/etc/hostname", "13": "a\x00.jpg",
             "14": "link.jpg", "15": "loop.jpg", "16": "none.jpg", "17": 5}
    rows = [(f"u{u}", i, 1000 * u + int(i)) for u in range(3) for i in paths]
    inter, _ = write_case(tmp_path, "generic_csv", render("generic_csv", rows))
    (tmp_path / "items.jsonl").write_text("".join(json.dumps({"id": i, "title": "t", "image": p}) + "\n"
                                                  for i, p in paths.items()))
    stats = prepare(PrepareConfig(run_dir=str(tmp_path / "run"), interactions=str(inter), format="generic",
                                  items=str(tmp_path / "items.jsonl"), image_dir=str(folder),
                                  user_min=1, item_min=1, negatives_test=1, max_image_pixels=32 * 32))
    assert stats["dropped"]["items_image_unsafe_path"] == 5  # .., absolute, NUL, symlink out, loop
    assert stats["dropped"]["items_image_missing"] == 2  # none.jpg and "5"
    assert stats["items_with_image"] == 1


def test_pixel_cap_reads_the_header_and_no_bomb_warning_escapes(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(_png_header(12000, 12000))    # 144 MP: PIL would only warn
    (tmp_path / "bomb.png").write_bytes(_png_header(20000, 20000))   # 400 MP: PIL would raise
    write_jpeg(tmp_path / "small.jpg")                               # 32 x 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images.check_image(tmp_path / "big.png") == images.TOO_MANY_PIXELS
        assert images.check_image(tmp_path / "bomb.png") == images.TOO_MANY_PIXELS
        assert images.check_image(tmp_path / "big.png", max_pixels=10**9) == images.UNREADABLE  # no pixel data
    assert images.check_image(tmp_path / "small.jpg", max_pixels=32 * 32) == images.OK
    assert images.check_image(tmp_path / "small.jpg", max_pixels=32 * 32 - 1) == images.TOO_MANY_PIXELS
    with pytest.raises(ValueError, match="max_image_pixels"):
        PrepareConfig(run_dir="r", interactions="i", items="t", max_image_pixels=0).validate()


# ---------------------------------------------------------------------------------------------
# prepare: nothing left at some step is one clear error, never an IndexError


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@pytest.mark.parametrize("case,step", [
    ("header_only", "after reading"),
    ("all_bad_timestamps", "after reading .*bad_timestamp_interaction_rows: 3"),
    ("empty_titles", "after dropping items without a title"),
    ("unknown_items", "after dropping interactions of unknown items"),
    ("no_items", r"after reading .*\(no items\)"),
    ("no_images", "after dropping items without a title or an image"),
    ("kcore", "after the 9/1-core"),
])
def test_nothing_left_is_one_clear_error(tmp_path: Path, fmt: str, case: str, step: str) -> None:
    rows = [(u, i, 999 if case != "all_bad_timestamps" else -1) for u, i, _ in GOOD]
    data = render(fmt, rows if case != "header_only" else [])
    inter, items = write_case(tmp_path, fmt, data)
    if case in ("empty_titles", "unknown_items", "no_items"):
        ids = {"unknown_items": ("97", "98"), "no_items": ()}.get(case, ("10", "11", "12"))
        items = items_file(fmt, tmp_path, ids, titled=case != "empty_titles")
    kw = {"require_image": True} if case == "no_images" else {"user_min": 9} if case == "kcore" else {}
    with pytest.raises(ValueError, match="no interactions left " + step):
        prepare_case(tmp_path, fmt, inter, items, **kw)


def test_duplicates_and_unsorted_rows_come_out_right(tmp_path: Path) -> None:
    rows = [("u1", "12", 3000), ("u1", "10", 1000), ("u1", "10", 1000), ("u1", "11", 2000),
            ("u1", "10", 99999999999999999999), ("u1", "13", 10**30), ("u2", "10", 5), ("u2", "11", 6)]
    inter, items = write_case(tmp_path, "generic_csv", render("generic_csv", rows))
    items = items_file("generic_csv", tmp_path, ("10", "11", "12", "13"))
    stats = prepare_case(tmp_path, "generic_csv", inter, items)
    out = pd.read_parquet(tmp_path / "run" / schema.INTERACTIONS_FILE)
    user1 = out[out[schema.USER] == "u1"]
    assert user1[schema.ITEM].tolist() == ["10", "11", "12"]
    assert user1[schema.TIMESTAMP].tolist() == [1000, 2000, 3000]
    assert stats["dropped"]["duplicate_rows"] == 1
    assert stats["dropped"]["bad_timestamp_interaction_rows"] == 2


def test_a_huge_title_and_description_are_cut_and_counted(tmp_path: Path) -> None:
    """One 100,000-character title would be in every question about that item and padded into its batch."""
    rows = [("u1", "10", 1000), ("u1", "11", 2000), ("u1", "12", 3000), ("u2", "10", 5), ("u2", "11", 6)]
    inter, _ = write_case(tmp_path, "generic_csv", render("generic_csv", rows))
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "10", "title": "A hat " + "x" * 100_000, "description": "d" * 50_000},
        {"id": "11", "title": "Mug"}, {"id": "12", "title": "Scarf"}]))
    stats = prepare_case(tmp_path, "generic_csv", inter, items, max_title_chars=100)
    out = pd.read_parquet(tmp_path / "run" / schema.ITEMS_FILE).set_index(schema.ITEM)
    assert out.loc["10", schema.TITLE] == ("A hat " + "x" * 100_000)[:100]
    assert len(out.loc["10", schema.DESCRIPTION]) == 2000 and out.loc["11", schema.TITLE] == "Mug"
    assert stats["dropped"]["items_title_cut"] == 1 and stats["dropped"]["items_description_cut"] == 1


# ---------------------------------------------------------------------------------------------
# more whole-file mistakes: the wrong kind of file, or a file in the wrong place


@pytest.mark.parametrize("fmt", JSON_FORMATS)
@pytest.mark.parametrize("indent", [None, 1])
def test_a_json_array_instead_of_json_lines(tmp_path: Path, fmt: str, indent) -> None:
    user, item, ts = REVIEW_KEYS[fmt]
    rows = [{user: u, item: i, ts: t} for u, i, t in GOOD]
    inter, items = write_case(tmp_path, fmt, json.dumps(rows, indent=indent).encode())
    check(fmt, inter, items, Fails(r"one JSON array, not JSON lines.*jq -c"))


def test_a_pairs_file_given_as_titles(tmp_path: Path) -> None:
    inter, _ = write_case(tmp_path, "microlens", render("microlens", GOOD))
    check("microlens", inter, inter, Fails(r"interactions \(pairs\) header, not item,title"))


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_folder_or_a_pipe_as_the_interactions_file(tmp_path: Path, kind: str) -> None:
    import os

    _, items = write_case(tmp_path, "generic_csv", render("generic_csv", GOOD))
    odd = tmp_path / "odd"
    odd.mkdir() if kind == "folder" else os.mkfifo(odd)
    with pytest.raises((IsADirectoryError, ValueError), match="is a folder" if kind == "folder" else "not a regular"):
        read("generic_csv", odd, items)
    with pytest.raises(FileNotFoundError, match="image folder is a file"):
        read("generic_csv", items, items, image_dir=items)


@pytest.mark.parametrize("rows,kw", [
    ([("u1", "10", 1), ("u1", "11", 2), ("u1", "12", 3)], {}),                     # every item seen: no negative
    ([("u1", "10", 1), ("u1", "11", 2), ("u2", "12", 3)], {"min_history": 2}),     # nobody long enough
])
def test_no_test_example_left_is_said(tmp_path: Path, rows: list, kw: dict, caplog) -> None:
    """Counted, and said in one warning that names the two settings (a run without test examples is legal)."""
    inter, items = write_case(tmp_path, "generic_csv", render("generic_csv", rows))
    with caplog.at_level(logging.WARNING, logger="msr.data.prepare"):
        stats = prepare_case(tmp_path, "generic_csv", inter, items, **kw)
    assert stats["examples"]["test"] == 0
    assert any(re.search(r"no test examples left .*negatives_test \(1\)", r.getMessage()) for r in caplog.records)


def test_a_negative_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        PrepareConfig(run_dir="r", interactions="i", items="t", seed=-1).validate()
