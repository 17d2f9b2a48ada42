"""MovieLens readers: GroupLens' u.data/u.item and RecBole's atomic files give the same tables, strictly read."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from msr import schema
from msr.data.loaders import read_dataset
from msr.data.movielens import GENRES
from msr.data.prepare import PrepareConfig, prepare

# (user, item, rating, timestamp in s), in file order
RATINGS = [(196, 242, 3, 881250949), (186, 302, 3, 891717742), (196, 302, 5, 881251000), (22, 377, 1, 878887116),
           (186, 242, 4, 891717800), (22, 242, 2, 878887200), (196, 377, 4, 881251100), (22, 302, 5, 878887300)]
# (id, title with year, release date, genres)
MOVIES = [(242, "Kolya (1996)", "24-Jan-1997", ["Comedy"]),
          (302, "L.A. Confidential (1997)", "01-Jan-1997", ["Crime", "Film-Noir", "Mystery", "Thriller"]),
          (377, "Café au lait (1993)", "01-Jan-1993", [])]


def write_grouplens(root: Path, ratings=RATINGS, extra_data: str = "", extra_item: bytes = b"") -> tuple[Path, Path]:
    """u.data (tab-separated) and u.item (|-separated, latin-1, 19 genre flags), as GroupLens ships them."""
    root.mkdir(parents=True, exist_ok=True)
    data = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings) + extra_data
    (root / "u.data").write_text(data, encoding="ascii")
    lines = []
    for item, title, released, genres in MOVIES:
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        lines.append(f"{item}|{title}|{released}||http://us.imdb.com/M/title-exact?x|{flags}\n".encode("latin-1"))
    (root / "u.item").write_bytes(b"".join(lines) + extra_item)
    return root / "u.data", root / "u.item"


def write_recbole(root: Path, ratings=RATINGS, extra_inter: str = "") -> tuple[Path, Path]:
    """ml.inter and ml.item with RecBole's typed headers (the year a field of its own, genres space-separated)."""
    root.mkdir(parents=True, exist_ok=True)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
        f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings) + extra_inter
    (root / "ml.inter").write_text(inter, encoding="utf-8")
    items = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
        f"{i}\t{title.rsplit(' (', 1)[0]}\t{title.rsplit('(', 1)[1][:4]}\t{' '.join(genres)}\n"
        for i, title, _, genres in MOVIES)
    (root / "ml.item").write_text(items, encoding="utf-8")
    return root / "ml.inter", root / "ml.item"


def test_both_layouts_give_the_same_items_and_rated_interactions(tmp_path: Path) -> None:
    grouplens = read_dataset("movielens", *write_grouplens(tmp_path / "gl"), None)
    recbole = read_dataset("recbole", *write_recbole(tmp_path / "rb"), None)
    for raw in (grouplens, recbole):
        inter = raw.interactions
        assert list(inter[schema.USER]) == [str(u) for u, *_ in RATINGS]
        assert list(inter[schema.RATING]) == [float(r) for *_, r, _ in RATINGS]
        assert list(inter[schema.TIMESTAMP]) == [t for *_, t in RATINGS]
        titles = dict(zip(raw.items[schema.ITEM], raw.items[schema.TITLE]))
        assert titles == {"242": "Kolya (1996)", "302": "L.A. Confidential (1997)", "377": "Café au lait (1993)"}
        categories = dict(zip(raw.items[schema.ITEM], raw.items[schema.CATEGORIES]))
        assert list(categories["302"]) == ["Crime", "Film-Noir", "Mystery", "Thriller"]
        assert not +raw.counts
    assert grouplens.items.set_index(schema.ITEM).loc["302", schema.DESCRIPTION] == \
        "Released 01-Jan-1997. Genres: Crime, Film-Noir, Mystery, Thriller."


def test_bad_lines_are_counted_drops(tmp_path: Path) -> None:
    raw = read_dataset("movielens", *write_grouplens(
        tmp_path, extra_data="1\t242\t4\n1\t242\tfive\t881250949\n1\t242\t4\t1.5\n\t242\t4\t881250949\n",
        extra_item=b"999|No flags\n"), None)
    assert +raw.counts == Counter({"malformed_interaction_rows": 1, "bad_rating_interaction_rows": 1,
                                  "bad_timestamp_interaction_rows": 1, "missing_id_interaction_rows": 1,
                                  "malformed_item_rows": 1})
    rb = read_dataset("recbole", *write_recbole(tmp_path / "rb", extra_inter="1\t242\t4\t881250949.0\n1\t2\t4\n"),
                      None)
    assert +rb.counts == Counter({"malformed_interaction_rows": 1})  # 881250949.0 is a whole second: kept
    assert rb.interactions[schema.TIMESTAMP].iloc[-1] == 881250949


def test_a_file_without_recbole_headers_is_one_error(tmp_path: Path) -> None:
    inter, items = write_recbole(tmp_path)
    inter.write_text("196\t242\t3\t881250949\n")
    with pytest.raises(ValueError, match="not a RecBole atomic file header"):
        read_dataset("recbole", inter, items, None)


def test_prepare_keeps_the_rating_column(tmp_path: Path) -> None:
    data, items = write_grouplens(tmp_path / "raw")
    prepare(PrepareConfig(run_dir=str(tmp_path / "run"), format="movielens", interactions=str(data), items=str(items),
                          user_min=1, item_min=1, negatives_train=0, negatives_valid=0, negatives_test=0,
                          min_history=0))
    inter = pd.read_parquet(tmp_path / "run" / schema.INTERACTIONS_FILE)
    user22 = inter[inter[schema.USER] == "22"]
    assert user22[schema.ITEM].tolist() == ["377", "242", "302"] and user22[schema.RATING].tolist() == [1, 2, 5]
