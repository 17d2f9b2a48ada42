"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018).

Item embeddings (scaled by sqrt(d)) plus learned absolute positions (0 = the first item of the
row), dropout, a stack of causal pre-norm self-attention blocks (`nn.TransformerEncoderLayer`,
point-wise feed-forward of width d, ReLU, as in the paper) and a final LayerNorm. The output at
position t reads positions 0..t only (a causal mask, no key-padding mask needed with right padding);
its dot product with the shared item embeddings scores the next item.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msr.baselines.embedding import item_embedding, small_init


class SASRec(nn.Module):
    """Causal self-attention over the last `max_len` items."""

    def __init__(self, n_items: int, hidden_size: int, layers: int, heads: int, dropout: float, max_len: int):
        super().__init__()
        self.items = item_embedding(n_items, hidden_size)
        self.positions = nn.Embedding(max_len, hidden_size)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(hidden_size, heads, dim_feedforward=hidden_size, dropout=dropout,
                                           activation="relu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.scale = math.sqrt(hidden_size)
        small_init(self.positions)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (batch x length x hidden) of right-padded tokens (item code + 1, PAD = 0)."""
        width = tokens.shape[1]
        steps = torch.arange(width, device=tokens.device)
        x = self.dropout(self.items(tokens) * self.scale + self.positions(steps))
        causal = nn.Transformer.generate_square_subsequent_mask(width, device=tokens.device)
        return self.norm(self.encoder(x, mask=causal, is_causal=True))

    def item_vectors(self) -> torch.Tensor:
        """The embedding of every item (n_items x hidden), in item-code order (PAD left out)."""
        return self.items.weight[1:]
