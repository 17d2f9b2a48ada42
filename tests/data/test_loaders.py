"""Each reader on small fixtures in the real format, malformed rows and unsafe paths included."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import write_jpeg, write_jsonl
from msr import schema
from msr.data.images import verify_images
from msr.data.loaders import read_dataset


def _by_id(frame: pd.DataFrame) -> dict:
    return {row[schema.ITEM]: row for row in frame.to_dict("records")}


def test_microlens_reads_pairs_titles_and_covers(microlens_dir: Path) -> None:
    raw = read_dataset("microlens", microlens_dir / "pairs.csv", microlens_dir / "titles.csv",
                       microlens_dir / "covers")
    assert len(raw.interactions) == 12
    assert raw.counts["malformed_interaction_rows"] == 1  # too few fields
    assert raw.counts["bad_timestamp_interaction_rows"] == 1  # "yesterday"
    assert raw.interactions[schema.TIMESTAMP].dtype == "int64"
    assert set(raw.interactions[schema.USER]) == {"1", "2", "3"}
    items = _by_id(raw.items)
    assert items["10"][schema.TITLE] == "Red, shiny mug"
    assert items["11"][schema.TITLE] == "Lamp with two lines"
    assert items["10"][schema.IMAGE] == microlens_dir / "covers" / "10.jpg"
    assert items["13"][schema.IMAGE] is None


def test_microlens_without_headers(tmp_path: Path) -> None:
    (tmp_path / "pairs.csv").write_text("1,10,5\n1,11,6\n")
    (tmp_path / "titles.csv").write_text("10,Mug\n11,Lamp\n")
    raw = read_dataset("microlens", tmp_path / "pairs.csv", tmp_path / "titles.csv", None)
    assert raw.interactions[schema.ITEM].tolist() == ["10", "11"]
    assert sorted(raw.items[schema.ITEM]) == ["10", "11"]


@pytest.mark.parametrize("gz", [False, True])
def test_amazon2018_reviews_and_metadata(tmp_path: Path, gz: bool) -> None:
    reviews = write_jsonl(tmp_path / "reviews.json", [
        {"reviewerID": "U1", "asin": "B01", "overall": 5.0, "unixReviewTime": 100},
        {"reviewerID": "U1", "asin": "B02", "overall": 3.0, "unixReviewTime": 200},
        {"asin": "B02", "unixReviewTime": 300},                       # no reviewer
        {"reviewerID": "U2", "asin": "B01", "unixReviewTime": "soon"},  # bad time
    ], gz=gz, extra_lines=("{not json",))
    meta = write_jsonl(tmp_path / "meta.json", [
        {"asin": "B01", "title": " Soft  blanket ", "brand": "Acme", "category": ["Baby", "Bedding"],
         "description": ["Warm.", "Washable."], "imageURL": ["http://x/1.jpg"]},
        {"asin": "B01", "title": "duplicate row"},
        {"asin": "B02", "title": "Rattle", "description": "Loud."},
        {"title": "no asin"},
    ], gz=gz)
    write_jpeg(tmp_path / "img" / "B01.jpg")
    raw = read_dataset("amazon2018", reviews, meta, tmp_path / "img")
    assert raw.interactions[schema.ITEM].tolist() == ["B01", "B02"]
    assert raw.counts["malformed_interaction_rows"] == 1  # not JSON
    assert raw.counts["missing_id_interaction_rows"] == 1  # no reviewer
    assert raw.counts["bad_timestamp_interaction_rows"] == 1  # "soon"
    assert raw.counts["duplicate_item_rows"] == 1
    assert raw.counts["missing_id_item_rows"] == 1
    items = _by_id(raw.items)
    assert items["B01"][schema.TITLE] == "Soft blanket"
    assert items["B01"][schema.DESCRIPTION] == "Warm. Washable."
    assert items["B01"][schema.CATEGORIES] == ["Baby", "Bedding"]
    assert items["B01"][schema.BRAND] == "Acme"
    assert items["B01"][schema.IMAGE] is not None and items["B02"][schema.IMAGE] is None


def test_amazon2023_joins_on_parent_asin(tmp_path: Path) -> None:
    reviews = write_jsonl(tmp_path / "Baby.jsonl", [
        {"user_id": "AX", "asin": "C1v2", "parent_asin": "P1", "rating": 5, "timestamp": 1600000000000,
         "text": "great"},
        {"user_id": "AX", "asin": "C2", "parent_asin": "P2", "rating": 4, "timestamp": 1600000001000},
    ], gz=True)
    meta = write_jsonl(tmp_path / "meta_Baby.jsonl", [
        {"parent_asin": "P1", "title": "Bottle", "main_category": "Baby", "categories": [],
         "description": [], "features": ["BPA free"], "store": "Acme",
         "images": [{"thumb": "t", "large": "l", "hi_res": None, "variant": "MAIN"}]},
        {"parent_asin": "P2", "title": "Bib", "categories": ["Baby", "Feeding"], "description": ["Soft"]},
    ])
    raw = read_dataset("amazon2023", reviews, meta, None)
    assert raw.interactions[schema.ITEM].tolist() == ["P1", "P2"]
    assert raw.interactions[schema.TIMESTAMP].tolist() == [1600000000000, 1600000001000]
    items = _by_id(raw.items)
    assert items["P1"][schema.DESCRIPTION] == "BPA free"
    assert items["P1"][schema.CATEGORIES] == ["Baby"]
    assert items["P1"][schema.BRAND] == "Acme"
    assert items["P2"][schema.CATEGORIES] == ["Baby", "Feeding"]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_generic_format_confines_image_paths(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"interactions.{suffix}"
    if suffix == "csv":
        path.write_text("user,item,timestamp\nu1,a,1\nu1,b,2\nu2,a,,\n")
    else:
        pq.write_table(pa.table({"user": ["u1", "u1"], "item": ["a", "b"], "timestamp": [1, 2]}), path)
    images = tmp_path / "images"
    write_jpeg(images / "sub" / "a.png")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    items = write_jsonl(tmp_path / "items.jsonl", [
        {"id": "a", "title": "A", "description": "first", "image": "sub/a.png"},
        {"id": "b", "title": "B", "image": "../secret.jpg"},
        {"title": "no id"},
    ])
    raw = read_dataset("generic", path, items, images)
    assert raw.interactions[schema.USER].tolist() == ["u1", "u1"]
    assert raw.counts["malformed_interaction_rows"] == (1 if suffix == "csv" else 0)  # 4 fields
    assert raw.counts["missing_id_item_rows"] == 1
    usable, reasons = verify_images(raw.items[schema.IMAGE].tolist(), root=images)
    assert usable == [str((images / "sub" / "a.png").resolve()), None]
    assert reasons == {"ok": 1, "unsafe_path": 1}  # counted once, not also as missing


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        read_dataset("netflix", tmp_path / "a", tmp_path / "b", None)
    with pytest.raises(FileNotFoundError, match="interactions file not found"):
        read_dataset("microlens", tmp_path / "nope.csv", tmp_path / "b", None)
    (tmp_path / "p.csv").write_text("who,what,when\n1,2,3\n")
    (tmp_path / "t.csv").write_text("1,x\n")
    with pytest.raises(ValueError, match="expected columns"):
        read_dataset("microlens", tmp_path / "p.csv", tmp_path / "t.csv", None)
