"""The training loop: it keeps the best validation epoch's weights, and a seed fixes the result."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from msr import schema
from msr.baselines.data import training_windows
from msr.baselines.train import build_model, draw_negatives, fit
from msr.graph.data import RunData
from msr.graph.ranking import NonFiniteScoresError
from tests.baselines.conftest import small_config


def _data(users: int = 6, length: int = 7, items: int = 10) -> RunData:
    seq = np.random.default_rng(0).integers(0, items, users * length)
    return RunData(items=pd.DataFrame({schema.ITEM: [str(i) for i in range(items)]}), users=pd.Index(range(users)),
                   seq_items=seq, seq_start=np.arange(users) * length, seq_len=np.full(users, length),
                   train_len=np.full(users, length), examples=pd.DataFrame())


def _train(validate, loss: str = "ce", seed: int = 0, **overrides: object) -> tuple[torch.nn.Module, dict]:
    data = _data()
    cfg = small_config("unused", model="sasrec", loss=loss, seed=seed, dropout=0.2, **overrides)
    model = build_model(cfg, data.n_items)
    record = fit(model, training_windows(data, cfg.max_len), validate, cfg, data.n_items, torch.device("cpu"))
    return model, record


def test_early_stopping_keeps_the_best_epochs_weights() -> None:
    scores, snapshots = iter([0.1, 0.5, 0.3, 0.2, 0.9]), []

    def validate(model: torch.nn.Module) -> float:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    model, record = _train(validate, patience=2)
    assert (record["epoch"], record["best_epoch"], record["best"]) == (4, 2, 0.5)  # stopped before the 0.9
    assert [h["valid"] for h in record["history"]] == [0.1, 0.5, 0.3, 0.2]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][name], rtol=0, atol=0)
    assert not torch.equal(snapshots[1]["items.weight"], snapshots[3]["items.weight"])


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_a_seed_fixes_the_weights_and_another_seed_changes_them(loss: str) -> None:
    torch.manual_seed(123)
    outside = torch.rand(1)
    first = _train(lambda m: 0.0, loss, max_epochs=2)[0].state_dict()
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), outside)  # the caller's random state is left alone
    again = _train(lambda m: 0.0, loss, max_epochs=2)[0].state_dict()
    other = _train(lambda m: 0.0, loss, seed=1, max_epochs=2)[0].state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["items.weight"], other["items.weight"])


def test_negatives_are_never_the_target() -> None:
    targets = torch.tensor([[0, 4, 9], [3, -1, 5]])
    negatives = draw_negatives(targets, 10, 200, torch.Generator().manual_seed(0))
    assert negatives.shape == (2, 3, 200) and negatives.min() >= 0 and negatives.max() <= 9
    assert not (negatives == targets.unsqueeze(-1)).any()
    assert set(negatives[0, 1].tolist()) == set(range(10)) - {4}  # uniform over the other 9


def test_a_diverged_validation_names_the_epoch() -> None:
    def validate(model: torch.nn.Module) -> float:
        raise NonFiniteScoresError("NaN scores")

    with pytest.raises(NonFiniteScoresError, match="epoch 1 .*learning_rate"):
        _train(validate)
