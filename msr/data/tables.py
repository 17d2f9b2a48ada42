"""Reading a run directory's own tables (items, interactions, examples) with clear errors.

A table that is not readable parquet (truncated, overwritten), that lacks a column a stage needs, or whose
examples name items missing from the catalog (a hand edit, or tables from two runs) is a ValueError naming
the file and the command that writes it again, never a KeyError deep in a stage.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from msr import schema
from msr.rundir import RunDir


def _redo(name: str) -> str:
    return schema.PRODUCED_BY.get(name.split("/")[0], "the stage that wrote it")


def read_table(run: RunDir, name: str, columns: list[str]) -> pd.DataFrame:
    """These columns of the run's table `name`, or a ValueError naming it and the command that rewrites it."""
    path = run.path(name)
    try:
        present = pq.read_schema(path).names
        missing = [c for c in columns if c not in present]
        if missing:
            raise ValueError(f"{path}: lacks column(s) {', '.join(missing)}; re-run `{_redo(name)} --force` "
                             "to write it again")
        return pd.read_parquet(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable parquet file ({err}); re-run `{_redo(name)} --force` to "
                         "write it again") from None


def check_examples(run: RunDir, examples: pd.DataFrame, catalog: set[str]) -> None:
    """Refuse examples whose target or negatives are not in the items table."""
    unknown = set(examples[schema.TARGET]) - catalog
    for negatives in examples[schema.NEGATIVES]:
        unknown.update(str(n) for n in negatives if str(n) not in catalog)
    if unknown:
        first = sorted(unknown)[0]
        raise ValueError(f"{run.path(schema.EXAMPLES_FILE)}: {len(unknown)} item(s) of its examples are not in "
                         f"{schema.ITEMS_FILE} (the first: {first!r}): the tables do not belong together; re-run "
                         "`msr data prepare --force`")


EXAMPLE_COLUMNS = [schema.USER, schema.SPLIT, schema.TARGET, schema.HISTORY_LEN, schema.CUTOFF_TS, schema.NEGATIVES]


def example_extras(run: RunDir) -> list[str]:
    """The optional example columns (history window, explicit label) the run's examples table has (none when it
    cannot be read: `read_table` then names the problem)."""
    try:
        present = pq.read_schema(run.path(schema.EXAMPLES_FILE)).names
    except (pa.ArrowException, OSError):
        return []
    return [c for c in (schema.HISTORY_START, schema.TARGET_LABEL) if c in present]


def refuse_window(run: RunDir, stage: str) -> None:
    """Refuse a run whose examples have a history window (`msr data prepare --history_window`) in a stage that
    reads whole histories, rather than show it more than the protocol lets a method see."""
    path = run.path(schema.EXAMPLES_FILE)
    if schema.HISTORY_START in example_extras(run) and \
            (pd.read_parquet(path, columns=[schema.HISTORY_START])[schema.HISTORY_START] > 0).any():
        raise ValueError(f"{path}: its examples see a history window (data prepare --history_window); {stage} reads "
                         "whole histories and does not take a window: prepare a run without --history_window for it")


def split_protocol(run: RunDir) -> str:
    """How `msr data prepare` chose the run's targets (`split`: leave_last_out, users or samples), from the examples
    table's own schema metadata, so that a stage reading it reads nothing the examples' content does not cover;
    leave_last_out for a table without it (one written before the protocols existed, or by hand)."""
    try:
        metadata = pq.read_schema(run.path(schema.EXAMPLES_FILE)).metadata or {}
    except (pa.ArrowException, OSError):
        return "leave_last_out"
    return metadata.get(schema.SPLIT_METADATA.encode(), b"leave_last_out").decode("utf-8", "replace")
