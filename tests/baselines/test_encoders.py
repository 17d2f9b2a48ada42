"""SASRec and GRU4Rec encoders: causal (an output never reads later items) and blind to padding."""

from __future__ import annotations

import pytest
import torch

from msr.baselines.gru4rec import GRU4Rec
from msr.baselines.sasrec import SASRec


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "sasrec":
        model = SASRec(n_items=20, hidden_size=16, layers=2, heads=2, dropout=0.3, max_len=8)
    else:
        model = GRU4Rec(n_items=20, hidden_size=16, layers=2, dropout=0.3)
    return model.eval()


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_the_output_at_a_position_ignores_later_items(kind: str) -> None:
    model = _model(kind)
    tokens = torch.tensor([[3, 7, 1, 9, 4, 12], [5, 5, 2, 8, 20, 6]])
    changed = tokens.clone()
    changed[:, 3:] = torch.tensor([[11, 2, 17], [1, 14, 3]])
    before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3:], after[:, 3:])


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec"])
def test_padding_and_batch_neighbours_do_not_change_a_row(kind: str) -> None:
    model = _model(kind)
    alone = model(torch.tensor([[3, 7, 1, 9]]))
    padded = model(torch.tensor([[3, 7, 1, 9, 0, 0, 0, 0], [2, 4, 6, 8, 10, 12, 14, 16]]))
    torch.testing.assert_close(padded[0, :4], alone[0], rtol=1e-5, atol=1e-5)

