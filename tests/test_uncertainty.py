"""Bootstrap intervals and paired p-values on hand-checkable cases: identical methods, uniformly better
ones, weights that equal replicated data, more users giving narrower intervals, seeded determinism."""

from __future__ import annotations

import numpy as np
import pytest

from msr import uncertainty
from msr.metrics import roc_auc
from msr.uncertainty import (
    PooledAuc,
    annotate,
    best_of,
    bootstrap,
    mean_statistic,
    paired_p_values,
    percentile_interval,
    resample_weights,
)

B = 200


def _replicates(values: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    users = np.arange(len(next(iter(values.values()))))
    return bootstrap({name: mean_statistic(v) for name, v in values.items()}, users, B, seed)


def test_a_method_identical_to_its_reference_gets_p_one() -> None:
    values = np.random.default_rng(0).random((50, 3))
    reps = _replicates({"a": values, "b": values.copy()})
    p = paired_p_values(values.mean(0), values.mean(0), reps["a"], reps["b"])
    assert p.tolist() == [1.0, 1.0, 1.0]


def test_a_method_better_on_every_user_gets_the_smallest_p() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(200)
    better = base + rng.uniform(0.05, 0.15, 200)  # better by 0.05 to 0.15 on every user
    reps = _replicates({"a": better, "b": base})
    p = paired_p_values([better.mean()], [base.mean()], reps["a"], reps["b"])
    assert p.tolist() == [1 / (B + 1)]  # no resample comes near a zero difference: below 1/B resolution
    worse = paired_p_values([base.mean()], [better.mean()], reps["b"], reps["a"])
    assert worse.tolist() == [1 / (B + 1)]  # two-sided


def test_a_noisy_tie_is_not_significant() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random(300), rng.random(300)  # the same distribution, independent noise
    reps = _replicates({"a": a, "b": b})
    assert paired_p_values([a.mean()], [b.mean()], reps["a"], reps["b"])[0] > 0.05


def test_intervals_contain_the_estimate_and_shrink_with_more_users() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (40, 4000):
        hits = (rng.random(n) < 0.3).astype(float)
        (lo, hi), = percentile_interval(_replicates({"a": hits})["a"])
        assert lo <= hits.mean() <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 5  # ~1/sqrt(n): 10x narrower for 100x the users


def test_the_same_seed_draws_the_same_users_whatever_the_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    users = np.arange(30)
    first = np.concatenate(list(resample_weights(users, B, seed=5)))
    monkeypatch.setattr(uncertainty, "_CHUNK_CELLS", 7)  # 1 resample per chunk instead of all at once
    again = list(resample_weights(users, B, seed=5))
    assert len(again) == B and np.array_equal(np.concatenate(again), first)
    assert not np.array_equal(np.concatenate(list(resample_weights(users, B, seed=6))), first)


def test_a_users_examples_travel_together() -> None:
    example_users = np.array([0, 0, 1, 2, 2, 2])
    for weights in resample_weights(example_users, 50, seed=0):
        assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
        # every resample draws 3 users: their example weights sum back to 3 draws
        assert ((weights[:, [0, 2, 3]]).sum(axis=1) == 3).all()


def test_weights_equal_replicated_data() -> None:
    rng = np.random.default_rng(7)
    examples = np.repeat(np.arange(6), 4)
    scores = rng.integers(0, 4, len(examples)).astype(float)  # many ties across and within examples
    labels = np.tile([1, 0, 0, 0], 6)
    labels[5] = 1  # example 1 has two positives: pooled AUC does not need one per example
    weights = np.array([[1.0, 0, 2, 1, 0, 3]])
    copies = np.repeat(np.arange(len(examples)), weights[0][examples].astype(int))
    assert PooledAuc(scores, labels, examples)(weights)[0, 0] == pytest.approx(roc_auc(scores[copies], labels[copies]))
    assert PooledAuc(scores, labels, examples)(np.ones((1, 6)))[0, 0] == pytest.approx(roc_auc(scores, labels))
    values = rng.random((6, 2))
    assert mean_statistic(values)(weights)[0] == pytest.approx(values[np.repeat(np.arange(6), [1, 0, 2, 1, 0, 3])].mean(0))


def test_the_reference_is_the_best_and_gets_no_p_value() -> None:
    points = {"sft": {"auc": 0.7}, "random": {"auc": 0.5}, "popularity": {"auc": 0.6}, "zero": {"auc": 0.6}}
    assert best_of(points, ["random", "popularity", "zero"], "auc") == "popularity"  # the first of a tie
    assert best_of(points, [], "auc") is None
    reps = {name: np.full((B, 1), figures["auc"]) for name, figures in points.items()}
    annotate(points, reps, ["auc"], "popularity")
    assert points["sft"]["ci"] == {"auc": [0.7, 0.7]} and points["sft"]["compared_to"] == "popularity"
    assert points["zero"]["p_value"] == {"auc": 1.0}
    assert "p_value" not in points["popularity"] and "compared_to" not in points["popularity"]
