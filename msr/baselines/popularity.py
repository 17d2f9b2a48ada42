"""The popularity retriever: an item's interactions strictly before the example's cutoff, over all users.

The same score as msr.evaluate's popularity baseline (`popularity_before`), for all items at once:
examples are ranked in order of their cutoff, and the counts of one block of examples are the
counts at the block's first cutoff plus a running sum of the interactions between consecutive
cutoffs, so each interaction is added once over the whole pass and nothing at or after a cutoff
ever counts for it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from msr import schema
from msr.graph.data import RunData
from msr.rundir import RunDir


class PopularityScorer:
    """A `msr.graph.ranking.Scorer` over examples given in non-decreasing cutoff order, called on
    consecutive blocks from the first row (as `rank_all` calls it)."""

    def __init__(self, item_codes: np.ndarray, timestamps: np.ndarray, cutoffs: np.ndarray, n_items: int):
        cutoffs = np.asarray(cutoffs)
        if (np.diff(cutoffs) < 0).any():
            raise ValueError("PopularityScorer needs its examples sorted by cutoff")
        order = np.argsort(timestamps, kind="stable")
        self.items = torch.as_tensor(np.asarray(item_codes, dtype=np.int64)[order])
        self.ends = np.searchsorted(np.asarray(timestamps)[order], cutoffs, side="left")  # interactions < cutoff
        self.counts = torch.zeros(n_items, dtype=torch.float64)
        self.counted, self.next_row = 0, 0

    def __call__(self, lo: int, hi: int) -> torch.Tensor:
        if lo != self.next_row:
            raise ValueError(f"PopularityScorer: block {lo}..{hi} asked for, expected one starting at {self.next_row}")
        ends = self.ends[lo:hi]
        stop = int(ends[-1])  # >= self.counted: the cutoffs are sorted
        # interaction j counts from the first row whose cutoff is after it on
        first_row = np.searchsorted(ends, np.arange(self.counted, stop), side="right")
        delta = torch.zeros(hi - lo, len(self.counts), dtype=torch.float64)
        delta.index_put_((torch.as_tensor(first_row), self.items[self.counted:stop]),
                         torch.ones(stop - self.counted, dtype=torch.float64), accumulate=True)
        block = self.counts + delta.cumsum(0)
        self.counts, self.counted, self.next_row = block[-1].clone(), stop, hi
        return block


def popularity_scorer(run: RunDir, data: RunData, rows: pd.DataFrame) -> PopularityScorer:
    """The scorer of `rows` (examples sorted by CUTOFF_TS) on the run's interactions."""
    inter = pd.read_parquet(run.path(schema.INTERACTIONS_FILE), columns=[schema.ITEM, schema.TIMESTAMP])
    codes = pd.Index(data.items[schema.ITEM]).get_indexer(inter[schema.ITEM])
    return PopularityScorer(codes, inter[schema.TIMESTAMP].to_numpy(), rows[schema.CUTOFF_TS].to_numpy(), data.n_items)
