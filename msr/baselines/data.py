"""The sequences a sequential baseline reads: training windows and example histories, as padded batches.

Leakage is ruled out here, as in msr.graph.data (whose `load_run` and `train_len` this reuses):
training windows lie inside each user's training prefix, positions [0, train_len), and predict
every position of it from the positions before it; an example at history_len h sees positions
[0, h) only, cut to the last max_len. Nothing else of a run enters a sequential model.

A window's inputs are the positions [a, b) of one user and its targets the positions [a + 1, b];
a prefix of n training positions becomes ceil((n - 1) / max_len) windows that end at n - 1,
n - 1 - max_len, ..., so every position 1 .. n - 1 is a target exactly once (the first targets of a
later window see fewer than max_len items before them; one window per user whenever n <= max_len + 1,
the common case). Batches are right-padded with 0 (item code c is token c + 1), so a causal model's
output at a real position never depends on padding, and cut to the longest row of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from msr.graph.data import RunData

PAD = 0


@dataclass
class Sequences:
    """Rows of consecutive items of one user each: row r is items[start[r] : start[r] + length[r]]."""

    items: np.ndarray  # item codes of all interactions, sorted by user then position (RunData.seq_items)
    start: np.ndarray
    length: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def inputs(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (len(rows) x longest row, at least 1; item code + 1, PAD after the row's end) and each
        row's length. An empty row (an example without history) is a single PAD."""
        return self._gather(rows, 0)

    def targets(self, rows: np.ndarray) -> torch.Tensor:
        """The item code after each input position (-1 at padding): the next-item labels of a window."""
        tokens, _ = self._gather(rows, 1)
        return tokens - 1

    def _gather(self, rows: np.ndarray, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.length[rows]
        width = max(1, int(length.max(initial=0)))
        steps = np.arange(width)
        inside = steps < length[:, None]
        at = np.where(inside, self.start[rows][:, None] + steps + shift, 0)
        tokens = np.where(inside, self.items[at] + 1, PAD)
        return torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(length.astype(np.int64))


def training_windows(data: RunData, max_len: int) -> Sequences:
    """The windows of every user's training prefix (positions [0, train_len)), as the module says."""
    n = data.train_len.astype(np.int64)
    count = np.where(n >= 2, -(-(n - 1) // max_len), 0)
    user = np.repeat(np.arange(len(n)), count)
    back = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)  # 0: the last window
    end = n[user] - 1 - back * max_len
    begin = np.maximum(0, end - max_len)
    return Sequences(items=data.seq_items, start=data.seq_start[user] + begin, length=end - begin)


def history_rows(data: RunData, users: np.ndarray, history_len: np.ndarray, max_len: int,
                 history_start: np.ndarray | None = None) -> Sequences:
    """The input of each example: its user's positions [max(start, h - max_len), h) for history_len h and the
    example's history window start (0 without one)."""
    h = np.asarray(history_len, dtype=np.int64)
    start = np.zeros_like(h) if history_start is None else np.asarray(history_start, dtype=np.int64)
    length = np.minimum(h - start, max_len)
    return Sequences(items=data.seq_items, start=data.seq_start[np.asarray(users)] + h - length, length=length)
