"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks", ICLR 2016).

Item embeddings, dropout, a (stacked) `nn.GRU` and a linear projection back to the embedding
space; the output at position t, which has read positions 0..t only, is dotted with the shared
item embeddings to score the next item. msr trains it like SASRec (every position of a window,
the loss of the config) rather than with the paper's session-parallel mini-batches and TOP1 loss:
the same data and objective for both baselines, so they differ only in the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from msr.baselines.embedding import item_embedding


class GRU4Rec(nn.Module):
    """A recurrent encoder of the item sequence."""

    def __init__(self, n_items: int, hidden_size: int, layers: int, dropout: float):
        super().__init__()
        self.items = item_embedding(n_items, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_size, hidden_size, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.project = nn.Linear(hidden_size, hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (batch x length x hidden) of right-padded tokens (item code + 1, PAD = 0)."""
        out, _ = self.gru(self.dropout(self.items(tokens)))
        return self.project(self.dropout(out))

    def item_vectors(self) -> torch.Tensor:
        """The embedding of every item (n_items x hidden), in item-code order (PAD left out)."""
        return self.items.weight[1:]
