"""The item table both encoders share: token c + 1 for item code c, PAD (0) a zero row, small weights.

Weights are drawn from N(0, 0.02^2), as RecBole and BERT initialise them, instead of torch's N(0, 1):
the scores (encoder output . item embedding) then start near 0 and the full-softmax loss near
ln(items); with N(0, 1) it started above 20 on 19k items.
"""

from __future__ import annotations

from torch import nn

from msr.baselines.data import PAD

INIT_STD = 0.02


def small_init(*tables: nn.Embedding) -> None:
    """Redraw each table from N(0, INIT_STD^2), keeping its padding row at zero."""
    for table in tables:
        nn.init.normal_(table.weight, std=INIT_STD)
        if table.padding_idx is not None:
            nn.init.zeros_(table.weight[table.padding_idx])


def item_embedding(n_items: int, hidden_size: int) -> nn.Embedding:
    """The (n_items + 1) x hidden_size item table, PAD row zero (and without gradient)."""
    table = nn.Embedding(n_items + 1, hidden_size, padding_idx=PAD)
    small_init(table)
    return table
