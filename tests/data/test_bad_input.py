"""A bad-input corpus for every reader and for prepare: each case ends in exactly one class.

- `Kept(n, counts)`: read, `n` interactions kept, and exactly these reader drop counts (no others);
- `Fails(pattern)`: a ValueError naming the file, its message matching `pattern`.

Any other exception (a traceback) or a different count (a silent wrong answer) fails the case.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus import (
    CSV_FORMATS,
    GOOD,
    JSON_FORMATS,
    META_KEY,
    TEXT_FORMATS,
    Fails,
    Kept,
    check,
    items_file,
    prepare_case,
    read,
    render,
    write_case,
)
from msr import schema

NAN, INF = float("nan"), float("inf")
# ---------------------------------------------------------------------------------------------
# one extra row appended to three good ones, in every text format


def _by_format(value, fmt: str):
    """A per-format expectation: {format or "csv"/"json": value}, or one value for all."""
    return value.get(fmt, value.get("csv" if fmt in CSV_FORMATS else "json")) if isinstance(value, dict) else value


ROW_CASES = [
    # name, the extra row, the reason it is dropped for (None: kept), the kept row's (user, item, ts)
    ("user_null", (None, "10", 5000), "missing_id", None),
    ("user_nan", (NAN, "10", 5000), "missing_id", None),
    ("user_whitespace", ("   ", "10", 5000), "missing_id", None),
    ("user_none_token", ("None", "10", 5000), "missing_id", None),
    ("item_empty", ("u3", "", 5000), "missing_id", None),
    ("item_nan_token", ("u3", "nan", 5000), "missing_id", None),
    ("user_int", (7, "10", 5000), None, ("7", "10", 5000)),
    ("user_padded", ("  u3 ", "10", 5000), None, ("u3", "10", 5000)),
    ("user_bool", (True, "10", 5000), {"csv": None, "json": "missing_id"}, ("True", "10", 5000)),
    ("user_list", (["u3"], "10", 5000), {"csv": None, "json": "missing_id"}, ("['u3']", "10", 5000)),
    ("ts_10_pow_30", ("u3", "10", 10**30), "bad_timestamp", None),
    ("ts_20_nines", ("u3", "10", 99999999999999999999), "bad_timestamp", None),
    ("ts_1e30", ("u3", "10", 1e30), "bad_timestamp", None),
    ("ts_inf", ("u3", "10", INF), "bad_timestamp", None),
    ("ts_nan", ("u3", "10", NAN), "bad_timestamp", None),
    ("ts_negative", ("u3", "10", -5), "bad_timestamp", None),
    ("ts_fraction", ("u3", "10", 1.5), "bad_timestamp", None),
    ("ts_integral_float", ("u3", "10", 5000.0), "bad_timestamp", None),
    ("ts_digit_string", ("u3", "10", "5000"), {"csv": None, "json": "bad_timestamp"}, ("u3", "10", 5000)),
    ("ts_word", ("u3", "10", "soon"), "bad_timestamp", None),
    ("ts_bool", ("u3", "10", True), "bad_timestamp", None),
    ("ts_null", ("u3", "10", None), "bad_timestamp", None),
    ("ts_zero", ("u3", "10", 0), None, ("u3", "10", 0)),
    ("ts_ms_where_seconds", ("u3", "10", 1_600_000_000_000), {"amazon2018": "bad_timestamp", "csv": None,
                                                               "json": None}, ("u3", "10", 1_600_000_000_000)),
    ("ts_seconds_max", ("u3", "10", 10**10), None, ("u3", "10", 10**10)),
    ("ts_ms_max", ("u3", "10", 10**13), {"amazon2018": "bad_timestamp", "csv": None, "json": None},
     ("u3", "10", 10**13)),
    ("ts_above_max", ("u3", "10", 10**13 + 1), "bad_timestamp", None),
    ("duplicate_row", GOOD[0], None, GOOD[0]),  # readers keep it; prepare drops it (see below)
    ("unsorted", ("u1", "12", 10), None, ("u1", "12", 10)),
]


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@pytest.mark.parametrize("name,row,reason,kept_as", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_one_bad_row(tmp_path: Path, fmt: str, name: str, row: tuple, reason, kept_as) -> None:
    reason = _by_format(reason, fmt)
    inter, items = write_case(tmp_path, fmt, render(fmt, GOOD + [row]))
    expect = Kept(3, {f"{reason}_interaction_rows": 1}) if reason else Kept(4)
    raw = check(fmt, inter, items, expect)
    got = list(raw.interactions.itertuples(index=False, name=None))
    assert got[:3] == GOOD
    if not reason:
        assert got[3] == kept_as


def test_one_bad_row_in_parquet(tmp_path: Path) -> None:
    """The same checks on typed parquet columns (one table, a row per case)."""
    table = pa.table({
        "user": pa.array(["u1", "u1", "u2", None, "  ", "nan", "u3", "u3", "u3"]),
        "item": pa.array(["10", "11", "12", "10", "10", "10", None, "10", "10"]),
        "timestamp": pa.array([1000, 2000, 3000, 5, 5, 5, 5, -1, 10**13 + 1], pa.int64()),
    })
    pq.write_table(table, tmp_path / "inter.parquet")
    check("generic_parquet", tmp_path / "inter.parquet", items_file("generic_parquet", tmp_path),
          Kept(3, {"missing_id_interaction_rows": 4, "bad_timestamp_interaction_rows": 2}))


@pytest.mark.parametrize("column,values,kept,counts", [
    ("user", pa.array([1.0, 2.0, NAN]), ["1", "2"], {"missing_id_interaction_rows": 1}),
    ("user", pa.array([1, 2, None], pa.int32()), ["1", "2"], {"missing_id_interaction_rows": 1}),
    ("user", pa.array(["a", "b", "c"]).dictionary_encode(), ["a", "b", "c"], {}),
    ("user", pa.array([b"a", b"b", b" "], pa.binary()), ["a", "b"], {"missing_id_interaction_rows": 1}),
    ("timestamp", pa.array([1000.0, INF, 1.5]), ["u1"], {"bad_timestamp_interaction_rows": 2}),
    ("timestamp", pa.array([1000.0, NAN, 10.0]), ["u1", "u2"], {"bad_timestamp_interaction_rows": 1}),
    ("timestamp", pa.array(["1000", "soon", " 7 "]), ["u1", "u2"], {"bad_timestamp_interaction_rows": 1}),
    ("timestamp", pa.array([1000, 2**63 + 5, 3], pa.uint64()), ["u1", "u2"], {"bad_timestamp_interaction_rows": 1}),
    ("timestamp", pa.array([True, False, True]), [], {"bad_timestamp_interaction_rows": 3}),
])
def test_parquet_column_types(tmp_path: Path, column: str, values: pa.Array, kept: list, counts: dict) -> None:
    base = {"user": pa.array(["u1", "u1", "u2"]), "item": pa.array(["10", "11", "12"]),
            "timestamp": pa.array([1000, 2000, 3000])}
    base[column] = values
    pq.write_table(pa.table(base), tmp_path / "inter.parquet")
    raw = check("generic_parquet", tmp_path / "inter.parquet", items_file("generic_parquet", tmp_path),
                Kept(len(kept), counts))
    assert raw.interactions[schema.USER].tolist() == kept


@pytest.mark.parametrize("table,pattern", [
    (pa.table({"user": ["u1"], "item": ["10"]}), r"missing column\(s\) \['timestamp'\]"),
    (pa.table({"user": ["u1"], "item": ["10"], "timestamp": pa.array([0], pa.timestamp("ms"))}),
     r"type timestamp\[ms\]; store integers"),
    (pa.table({"user": [[1]], "item": ["10"], "timestamp": [0]}), r"'user' has type list"),
    (pa.table({"user": pa.array([b"\xff"]), "item": ["10"], "timestamp": [0]}), r"'user' holds bytes that are not UTF-8"),
])
def test_parquet_unusable_columns_are_clear_errors(tmp_path: Path, table: pa.Table, pattern: str) -> None:
    pq.write_table(table, tmp_path / "inter.parquet")
    check("generic_parquet", tmp_path / "inter.parquet", items_file("generic_parquet", tmp_path), Fails(pattern))


def test_parquet_broken_file_and_parquet_under_another_name(tmp_path: Path) -> None:
    pq.write_table(pa.table({"user": ["u1"], "item": ["10"], "timestamp": [1]}), tmp_path / "good.parquet")
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    items = items_file("generic_parquet", tmp_path)
    check("generic_parquet", tmp_path / "cut.parquet", items, Fails("not a readable parquet file"))
    (tmp_path / "inter.csv").write_bytes(data)  # parquet magic wins over the name
    check("generic_parquet", tmp_path / "inter.csv", items, Kept(1))


# ---------------------------------------------------------------------------------------------
# CSV text: quotes, fields, headers, line endings


GOOD_CSV = "u1,10,1000\nu1,11,2000\nu2,12,3000\n"
GOOD_USERS = ["u1", "u1", "u2"]
CSV_CASES = [
    # name, body (after the header), expectation, the kept rows' users
    ("stray_quote_mid_file", 'u1,10,1000\nu3,"11,2000\nu1,11,2000\nu2,12,3000\n', Kept(3, {"malformed": 1}),
     GOOD_USERS),
    ("stray_quote_inside_cell", 'u1,10,1000\nu"1,11,2000\nu2,12,3000\n', Kept(2, {"malformed": 1}), ["u1", "u2"]),
    ("quoted_cells", '"u1","10","1000"\nu1,11,2000\nu2,12,3000\n', Kept(3), GOOD_USERS),
    ("quoted_comma_in_id", GOOD_CSV + '"u,1",10,1000\n', Kept(4), GOOD_USERS + ["u,1"]),
    ("escaped_quote_in_id", GOOD_CSV + '"u""1",10,1000\n', Kept(4), GOOD_USERS + ['u"1']),
    ("newline_in_quoted_cell", 'u1,"1\n0",1000\nu1,11,2000\nu2,12,3000\n', Kept(2, {"malformed": 2}), ["u1", "u2"]),
    ("too_few_fields", GOOD_CSV + "u3,10\n", Kept(3, {"malformed": 1}), GOOD_USERS),
    ("too_many_fields", GOOD_CSV + "u3,10,5,6\n", Kept(3, {"malformed": 1}), GOOD_USERS),
    ("empty_fields", GOOD_CSV + ",,\n", Kept(3, {"missing_id": 1}), GOOD_USERS),
    ("blank_lines", "\n" + GOOD_CSV.replace("\n", "\n\n", 1) + "\n\n", Kept(3), GOOD_USERS),
    ("whitespace_line", GOOD_CSV + "   \n", Kept(3, {"malformed": 1}), GOOD_USERS),
    ("crlf", GOOD_CSV.replace("\n", "\r\n"), Kept(3), GOOD_USERS),
    ("no_final_newline", GOOD_CSV.rstrip("\n"), Kept(3), GOOD_USERS),
    ("header_only", "", Kept(0), []),
    ("leading_zeros", GOOD_CSV + "u3,10,0005\n", Kept(4), GOOD_USERS + ["u3"]),
    ("plus_sign", GOOD_CSV + "u3,10,+5\n", Kept(3, {"bad_timestamp": 1}), GOOD_USERS),
    ("exponent", GOOD_CSV + "u3,10,1e3\n", Kept(3, {"bad_timestamp": 1}), GOOD_USERS),
    ("nul_byte_in_id", GOOD_CSV + "u\x003,10,5\n", Kept(4), GOOD_USERS + ["u\x003"]),
]


@pytest.mark.parametrize("fmt", CSV_FORMATS)
@pytest.mark.parametrize("name,body,expect,users", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_csv_text(tmp_path: Path, fmt: str, name: str, body: str, expect: Kept, users: list) -> None:
    inter, items = write_case(tmp_path, fmt, ("user,item,timestamp\n" + body).encode())
    counts = {f"{k}_interaction_rows": v for k, v in expect.counts.items()}
    raw = check(fmt, inter, items, Kept(expect.n, counts))
    assert raw.interactions[schema.USER].tolist() == users


@pytest.mark.parametrize("header,expect", [
    ("user,item,timestamp,rating\n", Kept(3)),                       # extra column ignored
    ("timestamp,item,user\n", Kept(3)),                              # any column order
    ('"user","item","timestamp"\n', Kept(3)),                        # quoted header
    ("\ufeffuser,item,timestamp\n", Kept(3)),                        # BOM
    ("who,what,when\n", Fails(r"expected columns \['user', 'item', 'timestamp'\]")),
    ("user\titem\ttimestamp\n", Fails("it looks tab-separated")),
    ("user;item;timestamp\n", Fails("it looks semicolon-separated")),
    ("user,item,timestamp,user\n", Fails(r"names column\(s\) \['user'\] more than once")),
    ("user,item,timestamp,\n", Kept(3)),                           # a trailing comma: one empty extra column
])
def test_csv_headers(tmp_path: Path, header: str, expect) -> None:
    order = [c.strip('"\ufeff') for c in header.strip().split(",")]
    rows = [dict(zip(("user", "item", "timestamp"), r)) | {"rating": 5} for r in GOOD]
    body = "".join(",".join(str(r.get(c, "")) for c in order) + "\n" for r in rows)
    inter, items = write_case(tmp_path, "generic_csv", (header + body).encode())
    check("generic_csv", inter, items, expect)


def test_microlens_headerless_with_bom_and_extra_field(tmp_path: Path) -> None:
    body = b"1,10,1000\n1,11,2000\n2,12,3000\n3,10,5,x\n"
    inter, items = write_case(tmp_path, "microlens", b"\xef\xbb\xbf" + body)
    raw = check("microlens", inter, items, Kept(3, {"malformed_interaction_rows": 1}))
    assert raw.interactions[schema.USER].tolist() == ["1", "1", "2"]


def test_csv_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    body = b"u1,10,1000\n\xff\xfe,1\n\xff,\"a,b\",5\nu2,1\xff1,5\nu1,11,2000\nu2,12,3000\n"
    inter, items = write_case(tmp_path, "generic_csv", b"user,item,timestamp\n" + body)
    check("generic_csv", inter, items, Kept(3, {"bad_encoding_interaction_rows": 3}))
    inter.write_bytes(b"us\xffer,item,timestamp\n" + body)
    check("generic_csv", inter, items, Fails("line 1 is not UTF-8"))


def test_stray_quote_spoils_one_line_of_many(tmp_path: Path) -> None:
    """The attack's case: one stray quote in 860 pairs used to swallow 160 of them."""
    lines = [f"{u},{i},{1000 + u * 100 + i}" for u in range(86) for i in range(10)]
    lines[700] = lines[700].replace(",", ',"', 1)
    inter, items = write_case(tmp_path, "microlens", ("\n".join(lines) + "\n").encode())
    raw = check("microlens", inter, items, Kept(859, {"malformed_interaction_rows": 1}))
    assert raw.interactions[schema.TIMESTAMP].min() == 1000


def test_many_bad_rows_are_logged_once_per_reason_with_lines(tmp_path: Path, caplog) -> None:
    body = GOOD_CSV + "u3,10,soon\n" * 20000 + "u3,10\n" * 3 + "\n" + ",10,5\n"
    inter, items = write_case(tmp_path, "generic_csv", ("user,item,timestamp\n" + body).encode())
    with caplog.at_level(logging.WARNING, logger="msr.data"):
        check("generic_csv", inter, items, Kept(3, {"bad_timestamp_interaction_rows": 20000,
                                                   "malformed_interaction_rows": 3,
                                                   "missing_id_interaction_rows": 1}))
    messages = [r.getMessage() for r in caplog.records if str(inter) in r.getMessage()]
    assert len(messages) == 3
    text = " ".join(messages)
    assert "line 5:" in text and "line 6:" in text  # first bad timestamps: header + 3 good rows
    assert "line 20005:" in text  # the first short row
    assert "line 20009:" in text  # the row without a user, after a blank line


# ---------------------------------------------------------------------------------------------
# JSON lines


JSON_CASES = [
    ("not_json", "{not json", "malformed"),
    ("json_array", "[1, 2]", "malformed"),
    ("json_string", '"hello"', "malformed"),
    ("json_null", "null", "malformed"),
    ("deep_nesting", "[" * 100000 + "]" * 100000, "malformed"),
    ("int_too_long_to_parse", '{"x": ' + "9" * 5000 + "}", "malformed"),
    ("object_without_keys", "{}", "missing_id"),
]


@pytest.mark.parametrize("fmt", JSON_FORMATS)
@pytest.mark.parametrize("name,line,reason", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_json_lines(tmp_path: Path, fmt: str, name: str, line: str, reason: str) -> None:
    inter, items = write_case(tmp_path, fmt, render(fmt, GOOD) + line.encode() + b"\n")
    check(fmt, inter, items, Kept(3, {f"{reason}_interaction_rows": 1}))


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_json_bom_crlf_blank_lines(tmp_path: Path, fmt: str) -> None:
    data = b"\xef\xbb\xbf" + render(fmt, GOOD).replace(b"\n", b"\r\n\r\n")
    inter, items = write_case(tmp_path, fmt, data)
    check(fmt, inter, items, Kept(3))


def test_amazon_wrong_format_drops_everything_by_reason(tmp_path: Path) -> None:
    inter, items = write_case(tmp_path, "amazon2018", render("amazon2018", GOOD))
    check("amazon2023", inter, items, Kept(0, {"missing_id_interaction_rows": 3, "missing_id_item_rows": 3}))
    with pytest.raises(ValueError, match="no interactions left after reading .*missing_id_interaction_rows: 3"):
        prepare_case(tmp_path, "amazon2023", inter, items)


# ---------------------------------------------------------------------------------------------
# whole files: empty, encodings, compression


def _truncated(data: bytes) -> bytes:
    packed = gzip.compress(data, mtime=0)
    return packed[: len(packed) * 2 // 3]


def _corrupt(data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data, mtime=0))
    for i in range(12, len(packed) - 8):
        packed[i] ^= 0x55
    return bytes(packed)


def _bad_byte(data: bytes) -> bytes:
    lines = data.split(b"\n")
    lines[-2] = lines[-2].replace(b"u2", b"u\xff2")
    return b"\n".join(lines)


def _big(fmt: str) -> bytes:
    return render(fmt, [(f"u{u}", str(10 + u % 3), 1000 + u) for u in range(3000)])


FILE_CASES = [
    ("empty", lambda fmt: b"", {"csv": Fails("the file is empty"), "json": Kept(0)}),
    ("gzip", lambda fmt: gzip.compress(render(fmt, GOOD)), Kept(3)),
    ("gzip_two_members", lambda fmt: gzip.compress(render(fmt, GOOD[:1])) + gzip.compress(render(fmt, GOOD[1:])
                                                                                         .replace(b"user,item,timestamp\n", b"")), Kept(3)),
    ("gzip_truncated", lambda fmt: _truncated(_big(fmt)), Fails(r"ends before its end marker.*allow_truncated")),
    ("gzip_corrupt", lambda fmt: _corrupt(_big(fmt)), Fails("corrupt gzip data")),
    ("bzip2", lambda fmt: bz2.compress(render(fmt, GOOD)), Fails("bzip2-compressed")),
    ("non_utf8_line", lambda fmt: _bad_byte(render(fmt, GOOD)), {"csv": Kept(2, {"bad_encoding_interaction_rows": 1}),
                                                                  "json": Kept(2, {"bad_encoding_interaction_rows": 1})}),
    ("latin1_file", lambda fmt: render(fmt, [("é", "10", 1), ("ü", "11", 2)]).decode().encode("latin-1"),
     Kept(0, {"bad_encoding_interaction_rows": 2})),
]


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
@pytest.mark.parametrize("name,make,expect", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_whole_file(tmp_path: Path, fmt: str, name: str, make, expect) -> None:
    expect = _by_format(expect, fmt)
    inter, items = write_case(tmp_path, fmt, make(fmt))
    check(fmt, inter, items, expect)


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_truncated_gzip_kept_when_allowed(tmp_path: Path, fmt: str) -> None:
    inter, items = write_case(tmp_path, fmt, _truncated(_big(fmt)))
    raw = read(fmt, inter, items, allow_truncated=True)
    assert 0 < len(raw.interactions) < 3000
    assert raw.counts["truncated_interaction_files"] == 1
    assert raw.interactions[schema.USER].iloc[-1] == f"u{len(raw.interactions) - 1}"  # no partial line
    assert {k for k, v in raw.counts.items() if v} == {"truncated_interaction_files"}


@pytest.mark.parametrize("fmt", ["amazon2018", "microlens"])
def test_truncated_items_file(tmp_path: Path, fmt: str) -> None:
    inter, _ = write_case(tmp_path, fmt, render(fmt, GOOD))
    items = items_file(fmt, tmp_path, ids=[str(i) for i in range(10, 3000)])
    items.write_bytes(_truncated(items.read_bytes()))
    check(fmt, inter, items, Fails(str(items)))
    raw = read(fmt, inter, items, allow_truncated=True)
    assert raw.counts["truncated_item_files"] == 1 and 0 < len(raw.items) < 2990


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    inter, items = write_case(tmp_path, "amazon2018", render("amazon2018", GOOD))
    inter.chmod(0)
    try:
        if inter.open("rb"):  # running as root: permissions do not apply
            pytest.skip("file permissions are not enforced for this user")
    except PermissionError:
        check("amazon2018", inter, items, Fails("cannot read the file"))
    finally:
        inter.chmod(0o644)


# ---------------------------------------------------------------------------------------------
# items files


TITLE_CASES = [
    ("quoted_comma", '10,"Red, shiny mug"\n11,B\n12,C\n', 3, {}, {"10": "Red, shiny mug"}),
    ("unquoted_comma", "10,Red, shiny mug\n11,B\n12,C\n", 3, {}, {"10": "Red, shiny mug"}),
    ("multi_line_title", '10,"Lamp\nwith two lines"\n11,B\n12,C\n', 3, {}, {"10": "Lamp with two lines"}),
    ("stray_quote", '10,A\n11,"B\n12,C\n13,D\n', 3, {"malformed_item_rows": 1}, {"12": "C", "13": "D"}),
    ("stray_quote_last_line", '10,A\n11,B\n12,"C\n', 2, {"malformed_item_rows": 1}, {"11": "B"}),
    ("no_title_field", "10,A\n11\n12,C\n", 2, {"malformed_item_rows": 1}, {}),
    ("empty_id", "10,A\n ,B\n12,C\n", 2, {"missing_id_item_rows": 1}, {}),
    ("header_and_bom", "\ufeffitem,title\n10,A\n11,B\n12,C\n", 3, {}, {"10": "A"}),
    ("headerless_bom", "\ufeff10,A\n11,B\n12,C\n", 3, {}, {"10": "A"}),
    ("crlf", "10,A\r\n11,B\r\n12,C\r\n", 3, {}, {"12": "C"}),
    ("duplicate_id", "10,A\n10,Again\n11,B\n12,C\n", 3, {"duplicate_item_rows": 1}, {"10": "A"}),
]


@pytest.mark.parametrize("name,text,n,counts,titles", TITLE_CASES, ids=[c[0] for c in TITLE_CASES])
def test_microlens_titles(tmp_path: Path, name: str, text: str, n: int, counts: dict, titles: dict) -> None:
    inter, _ = write_case(tmp_path, "microlens", render("microlens", GOOD))
    (tmp_path / "titles.csv").write_bytes(text.encode())
    raw = read("microlens", inter, tmp_path / "titles.csv")
    assert len(raw.items) == n
    assert {k: v for k, v in raw.counts.items() if v} == counts
    by_id = dict(zip(raw.items[schema.ITEM], raw.items[schema.TITLE]))
    assert {k: by_id[k] for k in titles} == titles


def test_titles_non_utf8_line(tmp_path: Path) -> None:
    inter, _ = write_case(tmp_path, "microlens", render("microlens", GOOD))
    (tmp_path / "titles.csv").write_bytes(b"10,A\n11,B\xe9\n12,C\n")
    raw = read("microlens", inter, tmp_path / "titles.csv")
    assert sorted(raw.items[schema.ITEM]) == ["10", "12"] and raw.counts["bad_encoding_item_rows"] == 1


@pytest.mark.parametrize("fmt", ["amazon2018", "amazon2023", "generic_csv"])
@pytest.mark.parametrize("record,counts", [
    ({"title": "no id"}, {"missing_id_item_rows": 1}),
    ({"ID": NAN, "title": "nan id"}, {"missing_id_item_rows": 1}),
    ({"ID": " ", "title": "blank id"}, {"missing_id_item_rows": 1}),
    ({"ID": ["13"], "title": "list id"}, {"missing_id_item_rows": 1}),
    ({"ID": 13, "title": "int id", "category": "Toys", "categories": "Toys"}, {}),
    ({"ID": "13", "title": ["A", None, "list"], "description": {"odd": 1}}, {}),
])
def test_metadata_records(tmp_path: Path, fmt: str, record: dict, counts: dict) -> None:
    inter, items = write_case(tmp_path, fmt, render(fmt, GOOD))
    record = {(META_KEY[fmt] if k == "ID" else k): v for k, v in record.items()}
    with items.open("a") as f:
        f.write(json.dumps(record) + "\n{broken\n")
    raw = read(fmt, inter, items)
    assert {k: v for k, v in raw.counts.items() if v} == counts | {"malformed_item_rows": 1}
    assert len(raw.items) == 3 + (not counts)
    if not counts:
        row = raw.items.set_index(schema.ITEM).loc["13"]
        assert row[schema.TITLE] in ("int id", "A list")
        if fmt != "amazon2023":
            assert list(row[schema.CATEGORIES]) in ([], ["Toys"])
