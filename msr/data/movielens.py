"""Readers for MovieLens in its two published layouts: GroupLens' own files and RecBole's atomic files.

Both give the same items (title with the year, genres as categories and in the description) and interactions
with the rating kept as a column (`schema.RATING`), which the explicit-label protocols read (TALLRec: liked =
rating > 3). Parsing is as strict as every other reader: a line that cannot be used is one counted drop by
reason (`malformed`, `missing_id`, `bad_timestamp`, `bad_rating`, `bad_encoding`), logged with its line.

- `movielens` (GroupLens ML-100K): `u.data`, tab-separated `user item rating timestamp` (seconds), no header;
  `u.item`, `|`-separated and latin-1: `id|title (year)|release date|video release date|IMDb URL|` and 19 genre
  flags in the order of `u.genre`.
- `recbole` (RecBole atomic files): `NAME.inter` and `NAME.item`, tab-separated, each with a typed header
  (`user_id:token	item_id:token	rating:float	timestamp:float`; `item_id:token	movie_title:token_seq
  release_year:token	class:token_seq`). The title is the first of `movie_title`, `title`, `name`, with
  ` (release_year)` added when the year is a field of its own (so both layouts give `Toy Story (1995)`); the
  categories are `class`, `genre` or `categories`, split on spaces as RecBole's `token_seq` is.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd

from msr import schema
from msr.data.loaders import RawData, _drops, _item_row, _items_frame, clean_id
from msr.data.tabular import MAX_TS_S
from msr.data.textio import Drops, numbered_lines

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
_ITEM_FIELDS = 5 + len(GENRES)
_TITLE_FIELDS = ("movie_title", "title", "name")
_GENRE_FIELDS = ("class", "genre", "genres", "categories")


def _timestamp(text: str) -> int | None:
    """A timestamp in seconds: a plain integer, or a float with nothing after the point (RecBole writes its
    `timestamp:float` column either way), within [0, MAX_TS_S]; otherwise None."""
    text = text.strip()
    whole, point, frac = text.partition(".")
    if not whole.isdigit() or (point and frac.strip("0")):
        return None
    value = int(whole)
    return value if value <= MAX_TS_S else None


def _rating(text: str) -> float | None:
    """A finite rating, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class _Interactions:
    """Rows of (user, item, rating, timestamp) collected with their drops counted."""

    def __init__(self, drops: Drops):
        self.drops, self.users, self.items, self.ratings, self.stamps = drops, [], [], [], []

    def add(self, n: int, user: str, item: str, rating: str | None, stamp: str) -> None:
        user_id, item_id = clean_id(user), clean_id(item)
        ts = _timestamp(stamp)
        value = None if rating is None else _rating(rating)
        if user_id is None or item_id is None:
            self.drops.add("missing_id", f"line {n}", f"user={user!r}, item={item!r}")
        elif ts is None:
            self.drops.add("bad_timestamp", f"line {n}", f"timestamp={stamp!r}")
        elif rating is not None and value is None:
            self.drops.add("bad_rating", f"line {n}", f"rating={rating!r}")
        else:
            self.users.append(user_id)
            self.items.append(item_id)
            self.ratings.append(value)
            self.stamps.append(ts)

    def frame(self, with_rating: bool) -> pd.DataFrame:
        frame = pd.DataFrame({schema.USER: pd.array(self.users, dtype="str"),
                              schema.ITEM: pd.array(self.items, dtype="str"),
                              schema.TIMESTAMP: pd.array(self.stamps, dtype="int64")})
        if with_rating:
            frame[schema.RATING] = pd.array(self.ratings, dtype="float64")
        return frame


def read_grouplens(ratings: Path, movies: Path, image_dir: str | None, allow_truncated: bool = False) -> RawData:
    """GroupLens MovieLens-100K: `u.data` (user, item, rating, timestamp in s) and `u.item` (latin-1)."""
    counts: Counter = Counter()
    with _drops(counts, ratings, "interaction") as drops:
        rows = _Interactions(drops)
        for n, text in numbered_lines(ratings, drops, allow_truncated):
            fields = text.split("\t")
            if len(fields) != 4:
                drops.add("malformed", f"line {n}", f"{len(fields)} tab-separated field(s), expected user, item, "
                                                    "rating, timestamp")
                continue
            rows.add(n, fields[0], fields[1], fields[2], fields[3])
    items = []
    with _drops(counts, movies, "item") as drops:
        for n, text in numbered_lines(movies, drops, allow_truncated, encoding="latin-1"):
            fields = text.split("|")
            item = clean_id(fields[0])
            if len(fields) != _ITEM_FIELDS or not all(f in ("0", "1") for f in fields[5:]):
                drops.add("malformed", f"line {n}", f"{len(fields)} |-separated field(s), expected {_ITEM_FIELDS} "
                                                    "(id, title, dates, URL and 19 genre flags)")
            elif item is None:
                drops.add("missing_id", f"line {n}", f"id={fields[0]!r}")
            else:
                genres = [g for g, flag in zip(GENRES, fields[5:]) if flag == "1" and g != "unknown"]
                items.append(_movie(item, fields[1], fields[2], genres))
    return RawData(_items_frame(items, image_dir, counts), rows.frame(with_rating=True), counts)


def _movie(item: str, title: str, released: str, genres: list[str]) -> dict:
    """An item row: the title as given, the release and genres as its description, the genres as categories."""
    facts = ([f"Released {released.strip()}."] if released.strip() else []) + (
        [f"Genres: {', '.join(genres)}."] if genres else [])
    return _item_row(item, title, " ".join(facts), "", genres)


def _header(fields: list[str], path: Path, need: tuple[str, ...]) -> dict[str, int]:
    """Column index by name of a RecBole header (`name:type` cells); a missing needed column is an error."""
    names = [f.split(":", 1)[0].strip() for f in fields]
    missing = [name for name in need if name not in names]
    if missing or not all(":" in f for f in fields):
        raise ValueError(f"{path}: not a RecBole atomic file header (tab-separated `name:type` cells with "
                         f"{', '.join(need)}); found {fields[:6]}")
    return {name: i for i, name in enumerate(names)}


def read_recbole(inter: Path, item: Path, image_dir: str | None, allow_truncated: bool = False) -> RawData:
    """RecBole atomic files: `.inter` (user_id, item_id, timestamp, optional rating) and `.item`."""
    counts: Counter = Counter()
    columns: dict[str, int] = {}
    with _drops(counts, inter, "interaction") as drops:
        rows = _Interactions(drops)
        for n, text in numbered_lines(inter, drops, allow_truncated):
            fields = text.split("\t")
            if not columns:
                columns = _header(fields, inter, ("user_id", "item_id", "timestamp"))
                continue
            if len(fields) != len(columns):
                drops.add("malformed", f"line {n}", f"{len(fields)} field(s), the header has {len(columns)}")
                continue
            rating = fields[columns["rating"]] if "rating" in columns else None
            rows.add(n, fields[columns["user_id"]], fields[columns["item_id"]], rating, fields[columns["timestamp"]])
    items = []
    with _drops(counts, item, "item") as drops:
        header: dict[str, int] = {}
        for n, text in numbered_lines(item, drops, allow_truncated):
            fields = text.split("\t")
            if not header:
                header = _header(fields, item, ("item_id",))
                title_at = next((header[f] for f in _TITLE_FIELDS if f in header), None)
                if title_at is None:
                    raise ValueError(f"{item}: no title column (one of {', '.join(_TITLE_FIELDS)})")
                genre_at = next((header[f] for f in _GENRE_FIELDS if f in header), None)
                continue
            item_id = clean_id(fields[header["item_id"]]) if len(fields) == len(header) else None
            if len(fields) != len(header):
                drops.add("malformed", f"line {n}", f"{len(fields)} field(s), the header has {len(header)}")
            elif item_id is None:
                drops.add("missing_id", f"line {n}", f"item_id={fields[header['item_id']]!r}")
            else:
                title, year = fields[title_at].strip(), fields[header["release_year"]].strip() \
                    if "release_year" in header else ""
                genres = fields[genre_at].split() if genre_at is not None else []
                items.append(_movie(item_id, f"{title} ({year})" if title and year else title, "", genres))
    return RawData(_items_frame(items, image_dir, counts), rows.frame(with_rating="rating" in columns), counts)
