"""The towers' training: the loss falls, negatives are never training items, runs are reproducible and resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from msr.graph import model
from msr.graph.model import (
    LAST_FILE,
    MODEL_FILE,
    NEGATIVES_STREAM,
    ORDER_STREAM,
    STATE_FILE,
    Pairs,
    draw_negatives,
    epoch_seed,
    fit,
    init_towers,
    train_epoch,
)
from msr.graph.ranking import NonFiniteScoresError


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


def test_random_streams_never_coincide() -> None:
    # the order and the negatives of every (seed, epoch) have their own seeds: formerly seed s's
    # negatives were seeded like seed s + 1's order
    seeds = [epoch_seed(s, e, stream) for s in range(5) for e in range(1, 6) for stream in (ORDER_STREAM, NEGATIVES_STREAM)]
    assert len(set(seeds)) == len(seeds)


def test_training_lowers_the_loss() -> None:
    items, pairs, _ = _problem()
    towers = init_towers(16, 32, 8, seed=0)
    optimizer = torch.optim.Adam(towers.parameters(), lr=1e-2)
    losses = [train_epoch(towers, optimizer, items, pairs, batch_size=32, seed=0, epoch=e) for e in range(1, 16)]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def _fit(out: Path, items: torch.Tensor, pairs: Pairs, validate, max_epochs: int = 6,
         resume: bool = True) -> tuple[dict, dict]:
    towers = init_towers(16, 32, 8, seed=3)
    record = fit(towers, items, pairs, validate, out, "digest", 1e-2, 32, max_epochs, patience=100, seed=3,
                 resume=resume)
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


def test_a_kill_between_checkpoint_and_state_json_resumes_once(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    items, pairs, _ = _problem()
    epochs = iter(range(100))

    def validate(towers) -> float:
        return -abs(next(epochs) % 6 - 3)

    record, weights = _fit(tmp_path / "a", items, pairs, validate)
    # killed after epoch 3's checkpoint was written, before its state.json
    writes = iter(range(100))
    real_write_json = model.write_json

    def killed_on_the_third(path: Path, value: dict) -> None:
        if next(writes) == 2:
            raise KeyboardInterrupt
        real_write_json(path, value)

    epochs = iter(range(100))
    monkeypatch.setattr(model, "write_json", killed_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "c", items, pairs, validate)
    monkeypatch.undo()
    assert json.loads((tmp_path / "c" / STATE_FILE).read_text())["epoch"] == 2  # stale: the weights are epoch 3's
    resumed, weights_resumed = _fit(tmp_path / "c", items, pairs, validate)
    # epoch 3 is not trained twice: the validation scores, losses and weights are the uninterrupted run's
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5, 6]
    assert [h["valid"] for h in resumed["history"]] == [h["valid"] for h in record["history"]]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in record["history"]]
    assert all(torch.equal(weights[k], weights_resumed[k]) for k in weights)


def test_without_resume_an_interrupted_run_starts_over(tmp_path: Path) -> None:
    items, pairs, _ = _problem()
    calls = iter(range(100))

    def interrupted(towers) -> float:
        if next(calls) == 2:
            raise KeyboardInterrupt
        return 0.0

    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, items, pairs, interrupted)
    assert (tmp_path / LAST_FILE).exists()
    validations: list[int] = []
    record, _ = _fit(tmp_path, items, pairs, lambda towers: validations.append(0) or 0.0, resume=False)
    assert len(validations) == 6  # resuming after epoch 2 would validate 4 times
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4, 5, 6]


def test_divergence_stops_training_with_the_epoch(tmp_path: Path) -> None:
    items, pairs, _ = _problem()
    with pytest.raises(NonFiniteScoresError, match="epoch 1: the BPR loss is nan"):
        _fit(tmp_path / "a", items * torch.nan, pairs, lambda towers: 0.0)

    def diverged(towers) -> float:
        raise NonFiniteScoresError("NaN or infinite scores")

    with pytest.raises(NonFiniteScoresError, match=r"epoch 1 \(learning_rate 0.01\), validation: NaN"):
        _fit(tmp_path / "b", items, pairs, diverged)
