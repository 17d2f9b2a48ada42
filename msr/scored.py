"""The tables recommenders hand to each other: scored candidates and retrieval lists, read and checked.

`msr evaluate` reads scored tables (from `msr score`, `msr graph evaluate`, `msr baselines evaluate`, or
your own recommender) and retrieval tables (a retriever's top-K items per example); `msr score
--candidates` reads retrieval tables too. Both check here that a table is well formed and that the
stage that wrote it is still current, so neither imports the other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from msr import schema
from msr.provenance import require_current
from msr.rundir import RunDir

log = logging.getLogger(__name__)
EXAMPLE_KEY = [schema.USER, schema.HISTORY_LEN]
CANDIDATE_KEY = [schema.USER, schema.HISTORY_LEN, schema.ITEM]
RETRIEVAL_COLUMNS = [schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.SCORE, schema.RANK]


def _redo_command(name: str, entry: dict, file: str) -> str:
    """The command that rewrites `file` for the stage `name` that wrote it."""
    if name.startswith("graph."):
        return "msr graph evaluate"
    if name.startswith("baselines."):
        return f"msr baselines evaluate (with the settings that wrote {file})"
    candidates = entry.get("inputs", {}).get("candidates", {}).get("path")
    return f"msr score --output {file}" + (f" --candidates {candidates}" if candidates else "") + \
        " (with the model and adapter it scored)"


def check_producer(run: RunDir, file: str) -> None:
    """Refuse a table whose producing stage is stale (its examples, summaries, prompts, retrieval list or
    model changed since it ran, or the table itself was edited), naming the command that redoes it. A table
    no stage of this run wrote (an external recommender's) cannot be checked, and is said to be so."""
    stages = run.manifest()["stages"]
    producers = [name for name, entry in stages.items() if file in entry.get("outputs", {})]
    if not producers:
        log.warning("%s was not written by a stage of %s: msr cannot tell whether it is current", file, run.root)
        return
    for name in producers:
        require_current(run, name, _redo_command(name, stages[name], file))


def _refuse_duplicates(table: pd.DataFrame, key: list[str], path: Path, what: str) -> None:
    duplicated = table.duplicated(key, keep=False)
    if duplicated.any():
        first = table[duplicated].iloc[0]
        raise ValueError(f"{path}: {int(duplicated.sum())} rows share their ({', '.join(key)}) with another row "
                         f"(the first: {', '.join(str(first[c]) for c in key)}): {what}")


def _read_table(path: Path, columns: list[str], what: str, about: str = "") -> pd.DataFrame:
    """These columns of a parquet table; a file that is not parquet, or lacks one of them, is a ValueError
    naming it. Integer ids become the strings `msr data prepare` writes; a whole-number float
    history_len becomes an integer."""
    try:
        names = pq.read_schema(path).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"{path}: not {what}, it lacks {', '.join(missing)} (expected {', '.join(columns)}{about})")
        table = pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable parquet file ({err}); write it again") from None
    for column in (schema.USER, schema.ITEM):
        if column in table and not pd.api.types.is_string_dtype(table[column]):
            if not pd.api.types.is_integer_dtype(table[column]):
                raise ValueError(f"{path}: column {column} has type {table[column].dtype}; ids are strings")
            table[column] = table[column].astype(str)
    if schema.HISTORY_LEN in table:
        lens = table[schema.HISTORY_LEN]
        if not pd.api.types.is_integer_dtype(lens):
            if not (pd.api.types.is_float_dtype(lens) and np.isfinite(lens).all() and (lens == np.round(lens)).all()):
                raise ValueError(f"{path}: column {schema.HISTORY_LEN} holds values that are not whole numbers")
        table[schema.HISTORY_LEN] = lens.astype("int64")
    return table


def read_scores(path: Path, key: list[str]) -> pd.DataFrame:
    """A scored table's key columns and its score, renamed SCORE: `p_yes` from `msr score`, or the
    generic `score` column any other recommender writes (exactly one of the two), a finite number. Each key
    must occur once: a duplicate would multiply candidate rows in the merge. Its `label`, when it has one, is
    kept (as `_label`) so the caller can check it against the examples'."""
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable parquet file ({err}); write it again") from None
    present = [c for c in (schema.P_YES, schema.SCORE) if c in names]
    if len(present) != 1:
        raise ValueError(f"{path}: expected one score column, {schema.P_YES} or {schema.SCORE}; found {present or 'none'}")
    label = [schema.LABEL] if schema.LABEL in names and schema.LABEL not in key else []
    scored = _read_table(path, key + present + label, "a scored table")
    scored = scored.rename(columns={present[0]: schema.SCORE, **{schema.LABEL: "_label" for _ in label}})
    if not pd.api.types.is_numeric_dtype(scored[schema.SCORE]) or pd.api.types.is_bool_dtype(scored[schema.SCORE]):
        raise ValueError(f"{path}: column {present[0]} has type {scored[schema.SCORE].dtype}; scores are numbers")
    bad = ~np.isfinite(scored[schema.SCORE].to_numpy(dtype=float))
    if bad.any():
        first = scored[bad].iloc[0]
        raise ValueError(f"{path}: {int(bad.sum())} of {len(scored)} scores are NaN or infinite (the first: user "
                         f"{first[schema.USER]}, item {first[schema.ITEM]}); fix the recommender that wrote it and "
                         "score again")
    _refuse_duplicates(scored, key, path, "one score per candidate; was the file appended to twice? Score the "
                       "split again into a fresh file")
    return scored


def read_retrieval(run: RunDir, file: str) -> pd.DataFrame:
    """A retrieval table of the run (USER, HISTORY_LEN, ITEM, SCORE, RANK, TIED_OUT), checked and sorted by example
    then rank: its producer current, every column present (TIED_OUT may be missing: then 0, with a warning), one
    row per (example, item) and per (example, rank), ranks from 1, every item in the catalog."""
    run.require(file)
    check_producer(run, file)
    path = run.path(file)
    names = pq.read_schema(path).names if path.is_file() else []
    tied = [schema.TIED_OUT] if schema.TIED_OUT in names else []
    table = _read_table(path, RETRIEVAL_COLUMNS + tied, "a retrieval table", ": a retriever's top-K items per example")
    if tied:
        counts = table[schema.TIED_OUT]
        if not pd.api.types.is_integer_dtype(counts) or (counts < 0).any():
            raise ValueError(f"{path}: column {schema.TIED_OUT} must hold counts (integers >= 0)")
    else:
        log.warning("%s has no %s column: a target tied with a list's last score, with other tied items left out, "
                    "counts as retrieved (msr's retrievers write the column)", path, schema.TIED_OUT)
        table[schema.TIED_OUT] = 0
    ranks = table[schema.RANK]
    whole = pd.api.types.is_integer_dtype(ranks) or (
        pd.api.types.is_float_dtype(ranks) and bool(np.isfinite(ranks).all() and (ranks == np.round(ranks)).all()))
    if not whole or pd.api.types.is_bool_dtype(ranks):
        raise ValueError(f"{path}: column {schema.RANK} has type {ranks.dtype} or values that are not whole numbers; "
                         "ranks are integers from 1")
    table[schema.RANK] = ranks.astype("int64")
    _refuse_duplicates(table, CANDIDATE_KEY, path, "an item is retrieved once per example")
    _refuse_duplicates(table, EXAMPLE_KEY + [schema.RANK], path, "each rank holds one item per example")
    if (table[schema.RANK] < 1).any():
        raise ValueError(f"{path}: ranks start at 1 (found {table[schema.RANK].min()})")
    catalog = set(pd.read_parquet(run.path(schema.ITEMS_FILE), columns=[schema.ITEM])[schema.ITEM])
    unknown = sorted(set(table[schema.ITEM]) - catalog)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} retrieved items are not in {schema.ITEMS_FILE} (the first: "
                         f"{unknown[0]}): was it retrieved on another run's catalog?")
    return table.sort_values(EXAMPLE_KEY + [schema.RANK], kind="stable").reset_index(drop=True)


def retrieved_for(retrieval: pd.DataFrame, examples: pd.DataFrame, file: str) -> pd.DataFrame:
    """The retrieval rows of these examples, LABEL 1 where the item is the example's target and made the top K
    under pessimistic ties: a target that shares the list's last score while the cut left other items with that
    score out (TIED_OUT) is in the list by its item code only, and counts as not retrieved (label 0), for the
    retriever and every reranker alike. Refuses when any example has no retrieved list (each must have one, or
    its recall would silently not count)."""
    keys = examples[EXAMPLE_KEY + [schema.TARGET]].astype({schema.HISTORY_LEN: "int64"})
    present = keys.merge(retrieval[EXAMPLE_KEY].drop_duplicates(), on=EXAMPLE_KEY, how="left", indicator=True)
    absent = present[present["_merge"] == "left_only"]
    if len(absent):
        first = absent.iloc[0]
        raise ValueError(f"{file}: {len(absent)} of {len(keys)} examples have no retrieved items (the first: user "
                         f"{first[schema.USER]} at history_len {first[schema.HISTORY_LEN]}): retrieve for the "
                         "same split of the same run")
    rows = retrieval.merge(keys, on=EXAMPLE_KEY, how="inner")
    last = rows.groupby(EXAMPLE_KEY, sort=False)[schema.SCORE].transform("min")
    by_code = (rows[schema.TIED_OUT] > 0) & (rows[schema.SCORE] == last)
    rows[schema.LABEL] = ((rows[schema.ITEM] == rows.pop(schema.TARGET)) & ~by_code).astype("int64")
    return rows
