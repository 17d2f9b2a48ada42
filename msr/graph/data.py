"""What the graph recommender reads from a run: item and user texts, training interactions, histories.

Leakage is ruled out here, once, for every later step. Each user's *training* interactions are
the positions before the history_len of their validation example (without one: before their
first validation or test target); under `msr data prepare --split users` a validation or test user
has none (their history is only the input of their one example, so no training interaction is
later than a held-out target). The item-item graph, the Jaccard overlaps and the negatives
see only those. A user text for an example at history_len h is the preference text of
positions [0, h) (`msr summarize users` keys it by (user_id, history_len)) plus, optionally, the
titles of the last items strictly before h: never the target or anything after it.

A text with nothing in it (an item without title, brand, category, description or summary; a user
with an empty preference text and no history titles) is embedded as a fixed placeholder,
EMPTY_ITEM_TEXT or EMPTY_USER_TEXT, rather than as "", so that what the encoder sees says what it
is; how many there are is logged as a warning, since many of them mean the summaries are missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from msr import schema
from msr.data.tables import split_protocol
from msr.rundir import RunDir

log = logging.getLogger(__name__)
EMPTY_ITEM_TEXT = "No information about this item."
EMPTY_USER_TEXT = "No information about this user yet."


@dataclass
class RunData:
    """A run's items, interactions and examples as integer codes (items in items.parquet order)."""

    items: pd.DataFrame
    users: pd.Index  # user ids; code = position
    seq_items: np.ndarray  # item codes of all interactions, sorted by user code then position
    seq_start: np.ndarray  # offset of each user's first interaction in seq_items
    seq_len: np.ndarray  # number of interactions of each user
    train_len: np.ndarray  # number of leading interactions of each user that are training data
    examples: pd.DataFrame  # examples.parquet plus columns `user_code` and `target_code`

    @property
    def n_items(self) -> int:
        """Number of items (item codes run 0 .. n_items - 1)."""
        return len(self.items)

    @property
    def n_users(self) -> int:
        """Number of users with interactions (user codes run 0 .. n_users - 1)."""
        return len(self.users)


def load_run(run: RunDir) -> RunData:
    """Read items, interactions and examples of a prepared run and code them as integers."""
    run.require(schema.ITEMS_FILE, schema.INTERACTIONS_FILE, schema.EXAMPLES_FILE)
    items = pd.read_parquet(run.path(schema.ITEMS_FILE))
    inter = pd.read_parquet(run.path(schema.INTERACTIONS_FILE), columns=[schema.USER, schema.ITEM, schema.POSITION])
    examples = pd.read_parquet(run.path(schema.EXAMPLES_FILE))
    item_index = pd.Index(items[schema.ITEM])
    user_codes, users = pd.factorize(inter[schema.USER], sort=True)
    item_codes = item_index.get_indexer(inter[schema.ITEM])
    if (item_codes < 0).any():
        raise ValueError(f"{run.path(schema.INTERACTIONS_FILE)} names items missing from {schema.ITEMS_FILE}")
    order = np.lexsort((inter[schema.POSITION].to_numpy(), user_codes))
    seq_len = np.bincount(user_codes, minlength=len(users)).astype(np.int64)
    seq_start = np.concatenate(([0], np.cumsum(seq_len)[:-1]))
    examples = examples.assign(user_code=users.get_indexer(examples[schema.USER]),
                               target_code=item_index.get_indexer(examples[schema.TARGET]))
    if (examples["user_code"] < 0).any() or (examples["target_code"] < 0).any():
        raise ValueError(f"{run.path(schema.EXAMPLES_FILE)} names users or items without interactions")
    seq_items = item_codes[order].astype(np.int64)
    _check_examples(run, examples, seq_items, seq_start, seq_len)
    held_out = examples[examples[schema.SPLIT] != schema.TRAIN]
    train_len = seq_len.copy()
    first_held = held_out.groupby("user_code")[schema.HISTORY_LEN].min()
    train_len[first_held.index.to_numpy()] = first_held.to_numpy()
    if split_protocol(run) == "users":  # LLaRA's split: a held-out user's history is their input, never training data
        train_len[held_out["user_code"].unique()] = 0
    return RunData(items=items, users=pd.Index(users), seq_items=seq_items,
                   seq_start=seq_start, seq_len=seq_len, train_len=train_len, examples=examples)


def _check_examples(run: RunDir, examples: pd.DataFrame, seq_items: np.ndarray, seq_start: np.ndarray,
                    seq_len: np.ndarray) -> None:
    """Every example must point into its user's sequence: 0 <= history_len < length, the item at
    that position its target, one example per (user, history_len). Otherwise a history would read
    the next user's items or a target would not be what the history precedes, silently."""
    h = examples[schema.HISTORY_LEN].to_numpy().astype(np.int64)
    codes = examples["user_code"].to_numpy()
    inside = (h >= 0) & (h < seq_len[codes])
    at = seq_start[codes] + np.where(inside, h, 0)  # any valid index where h is out of range
    bad = ~inside | (seq_items[at] != examples["target_code"].to_numpy())
    problem = "history_len outside the user's interactions or a target that is not the item at that position"
    if not bad.any():
        bad = examples.duplicated([schema.USER, schema.HISTORY_LEN]).to_numpy()
        problem = "a second example for the same (user_id, history_len)"
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        first = examples.iloc[row]
        raise ValueError(f"{run.path(schema.EXAMPLES_FILE)}: {int(bad.sum())} examples do not match "
                         f"{schema.INTERACTIONS_FILE} ({problem}); the first: row {row}, user {first[schema.USER]}, "
                         f"history_len {first[schema.HISTORY_LEN]}, target {first[schema.TARGET]}. Stale or edited "
                         "examples: re-run `msr data prepare`")


def prefix_matrix(data: RunData, users: np.ndarray, lengths: np.ndarray) -> sp.csr_matrix:
    """Row r: indicator of the items at positions [0, lengths[r]) of user users[r] (sparse, rows x items)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    offsets = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)
    indices = data.seq_items[np.repeat(data.seq_start[users], lengths) + offsets]
    matrix = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                           shape=(len(lengths), data.n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def train_incidence(data: RunData) -> sp.csr_matrix:
    """Users x items indicator of the training interactions only."""
    return prefix_matrix(data, np.arange(data.n_users), data.train_len)


def item_texts(run: RunDir, data: RunData, item_summary: bool) -> list[str]:
    """Each item's text, in item-code order: title, brand, first category, description, item summary."""
    summaries: dict[str, str] = {}
    if item_summary:
        run.require(schema.ITEM_SUMMARY_TABLE)
        table = pd.read_parquet(run.path(schema.ITEM_SUMMARY_TABLE))
        summaries = dict(zip(table[schema.ITEM], table[schema.SUMMARY]))
    texts = []
    for row in data.items.to_dict("records"):
        categories = row[schema.CATEGORIES]
        parts = [(schema.TITLE, row[schema.TITLE]), ("brand", row[schema.BRAND]),
                 ("category", categories[0] if categories is not None and len(categories) else ""),
                 (schema.DESCRIPTION, row[schema.DESCRIPTION]), (schema.SUMMARY, summaries.get(row[schema.ITEM], ""))]
        texts.append(" ".join(f"{name.capitalize()}: {str(value).strip()}." for name, value in parts
                              if value and str(value).strip()))
    return _fill_empty(texts, EMPTY_ITEM_TEXT, "item texts", "no title, brand, category, description or summary")


def user_texts(run: RunDir, data: RunData, examples: pd.DataFrame, user_summary: bool,
               history_titles: int) -> list[str]:
    """The user text of each example row: preference text at its cutoff, then its last history titles."""
    summaries: dict[tuple[str, int], str] = {}
    if user_summary:
        run.require(schema.USER_SUMMARIES_FILE)
        table = pd.read_parquet(run.path(schema.USER_SUMMARIES_FILE))
        summaries = dict(zip(zip(table[schema.USER], table[schema.HISTORY_LEN]), table[schema.SUMMARY]))
    titles = data.items[schema.TITLE].to_numpy()
    texts = []
    for user, code, h in zip(examples[schema.USER], examples["user_code"], examples[schema.HISTORY_LEN]):
        parts = []
        if user_summary:
            if (user, h) not in summaries:
                raise ValueError(f"no user summary for user {user} at history_len {h}: run `msr summarize users` "
                               "on this run first")
            parts.append(summaries[(user, h)].strip())
        if history_titles:
            start = data.seq_start[code]
            recent = titles[data.seq_items[start + max(0, h - history_titles):start + h]]
            if len(recent):
                parts.append("Recent items: " + "; ".join(recent) + ".")
        texts.append(" ".join(p for p in parts if p))
    return _fill_empty(texts, EMPTY_USER_TEXT, "user texts", "an empty preference text and no history titles")


def _fill_empty(texts: list[str], placeholder: str, what: str, why: str) -> list[str]:
    """Replace empty texts by `placeholder`, logging a warning with their count."""
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        log.warning("graph: %d of %d %s are empty (%s): embedded as %r", empty, len(texts), what, why, placeholder)
    return [t if t.strip() else placeholder for t in texts]


def candidate_codes(run: RunDir, data: RunData, rows: pd.DataFrame,
                    table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """For each candidate row of `table`: the position of its example in `rows` and its item code. A code
    of -1 would silently index the last row or item, so a candidate outside either is an error."""
    where = pd.MultiIndex.from_frame(rows[[schema.USER, schema.HISTORY_LEN]]).get_indexer(
        pd.MultiIndex.from_frame(table[[schema.USER, schema.HISTORY_LEN]]))
    items = pd.Index(data.items[schema.ITEM]).get_indexer(table[schema.ITEM])
    for codes, what in ((where, "examples"), (items, schema.ITEMS_FILE)):
        if (codes < 0).any():
            first = table.iloc[int(np.flatnonzero(codes < 0)[0])]
            raise ValueError(f"{run.path(schema.EXAMPLES_FILE)}: {int((codes < 0).sum())} candidates not found in "
                             f"{what} (the first: user {first[schema.USER]}, history_len {first[schema.HISTORY_LEN]}, "
                             f"item {first[schema.ITEM]}): re-run `msr data prepare`")
    return where, items


def split_rows(data: RunData, split: str) -> pd.DataFrame:
    """The examples of one split, keeping their examples.parquet row index (the user-text row)."""
    return data.examples[data.examples[schema.SPLIT] == split]


def history_matrix(data: RunData, rows: pd.DataFrame) -> sp.csr_matrix:
    """Each example's history (positions [0, history_len), the items before its cutoff) as a sparse
    indicator, masked in ranking."""
    return prefix_matrix(data, rows["user_code"].to_numpy(), rows[schema.HISTORY_LEN].to_numpy())
