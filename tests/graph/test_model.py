"""The towers' training: the loss falls, negatives are never training items, runs are reproducible and resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from msr.graph.model import (
    MODEL_FILE,
    STATE_FILE,
    Pairs,
    draw_negatives,
    fit,
    init_towers,
    train_epoch,
)


def _problem(seed: int = 0) -> tuple[torch.Tensor, Pairs, list[set[int]]]:
    """5 clusters of 12 items; 40 users, each with a text near one cluster and 3 positives in it."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 16))
    items = np.repeat(centres, 12, axis=0) + 0.3 * rng.normal(size=(60, 16))
    users = np.repeat(np.arange(40), 3)
    clusters = np.arange(40) % 5
    positives = clusters[users] * 12 + rng.integers(0, 12, size=len(users))
    seen = [set(positives[users == u].tolist()) | {int(rng.integers(0, 60))} for u in range(40)]
    keys = np.sort(np.array([u * 60 + i for u in range(40) for i in seen[u]], dtype=np.int64))
    features = centres[clusters[users]] + 0.3 * rng.normal(size=(len(users), 16))
    pairs = Pairs(user_features=torch.tensor(features, dtype=torch.float32), users=users, items=positives,
                  seen_keys=keys, n_items=60)
    return torch.tensor(items, dtype=torch.float32), pairs, seen


def test_negatives_are_never_training_items() -> None:
    _, pairs, seen = _problem()
    for epoch in (1, 2, 3):
        negative = draw_negatives(pairs, seed=0, epoch=epoch)
        assert (negative >= 0).all()
        assert not any(int(n) in seen[u] for u, n in zip(pairs.users, negative))
    assert (draw_negatives(pairs, 0, 1) == draw_negatives(pairs, 0, 1)).all()
    assert (draw_negatives(pairs, 0, 1) != draw_negatives(pairs, 0, 2)).any()


def test_training_lowers_the_loss() -> None:
    items, pairs, _ = _problem()
    towers = init_towers(16, 32, 8, seed=0)
    optimizer = torch.optim.Adam(towers.parameters(), lr=1e-2)
    losses = [train_epoch(towers, optimizer, items, pairs, batch_size=32, seed=0, epoch=e) for e in range(1, 16)]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def _fit(out: Path, items: torch.Tensor, pairs: Pairs, validate, max_epochs: int = 6) -> tuple[dict, dict]:
    towers = init_towers(16, 32, 8, seed=3)
    record = fit(towers, items, pairs, validate, out, "digest", 1e-2, 32, max_epochs, patience=100, seed=3)
    return record, {k: v.clone() for k, v in towers.state_dict().items()}


def test_fit_is_deterministic_and_resumes_exactly(tmp_path: Path) -> None:
    items, pairs, _ = _problem()
    epochs = iter(range(100))

    def validate(towers) -> float:  # a made-up validation score that peaks at epoch 4
        return -abs(next(epochs) % 6 - 3)

    record, weights = _fit(tmp_path / "a", items, pairs, validate)
    assert record["best_epoch"] == 4 and record["epoch"] == 6 and record["done"]
    epochs = iter(range(100))
    again, weights_again = _fit(tmp_path / "b", items, pairs, validate)
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in record["history"]]
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)

    # interrupted after epoch 3, then run again: the same history and weights as without the interruption
    epochs = iter(range(100))
    calls = iter(range(100))

    def interrupted(towers) -> float:
        if next(calls) == 3:
            raise KeyboardInterrupt
        return validate(towers)

    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "c", items, pairs, interrupted)
    assert json.loads((tmp_path / "c" / STATE_FILE).read_text())["epoch"] == 3
    resumed, weights_resumed = _fit(tmp_path / "c", items, pairs, interrupted)
    # a restart from scratch would see the validation scores shifted by the three already consumed
    assert [h["valid"] for h in resumed["history"]] == [h["valid"] for h in record["history"]]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in record["history"]]
    assert all(torch.equal(weights[k], weights_resumed[k]) for k in weights)
    best = load_file(str(tmp_path / "c" / MODEL_FILE))
    assert all(torch.equal(best[k], load_file(str(tmp_path / "a" / MODEL_FILE))[k]) for k in best)
    assert not (tmp_path / "c" / "last.safetensors").exists()
