"""k-core, ordering, leave-last-out and negatives against hand-computed cases."""

from __future__ import annotations

import numpy as np

from msr.data import splits


def test_kcore_hand_computed() -> None:
    # user 0: items 0,1,2   user 1: items 0,1   user 2: item 2   (2-core on both sides)
    # round 1: user 2 has 1 interaction -> out; item 2 has 2 (users 0, 2) -> stays this round
    # round 2: item 2 now has 1 (user 0) -> out;  round 3: user 0 has 2, user 1 has 2 -> stable
    users = np.array([0, 0, 0, 1, 1, 2])
    items = np.array([0, 1, 2, 0, 1, 2])
    keep, rounds = splits.kcore(users, items, 2, 2, n_users=3, n_items=3)
    assert keep.tolist() == [True, True, False, True, True, False]
    assert rounds == 3


def test_kcore_can_empty_everything() -> None:
    keep, _ = splits.kcore(np.array([0, 1]), np.array([0, 1]), 2, 1, 2, 2)
    assert not keep.any()


def test_chronological_order_breaks_ties_by_item_not_row_order() -> None:
    users = np.array([1, 0, 0, 0])
    stamps = np.array([5, 9, 3, 3])
    items = np.array([0, 1, 7, 2])
    order = splits.chronological_order(users, stamps, items)
    assert order.tolist() == [3, 2, 1, 0]


def test_positions_and_keep_last() -> None:
    users = np.array([0, 0, 0, 1, 1, 2])
    pos, starts, lengths = splits.positions_in_runs(users)
    assert pos.tolist() == [0, 1, 2, 0, 1, 0]
    assert starts.tolist() == [0, 3, 5] and lengths.tolist() == [3, 2, 1]
    assert splits.keep_last(users, 2).tolist() == [False, True, True, True, True, True]


def test_leave_last_out() -> None:
    # user A: 6 interactions at rows 0..5, user B: 3 at rows 6..8, user C: 2 at rows 9..10 (too short)
    starts, lengths = np.array([0, 6, 9]), np.array([6, 3, 2])
    t = splits.leave_last_out(starts, lengths, train_per_user=2, min_history=1)
    assert t.users_too_short == 1
    got = list(zip(t.rows.tolist(), t.split.tolist()))
    assert got == [(2, 0), (3, 0), (4, 1), (5, 2), (7, 1), (8, 2)]
    t_all = splits.leave_last_out(starts, lengths, train_per_user=-1, min_history=2)
    assert list(zip(t_all.rows.tolist(), t_all.split.tolist())) == [(2, 0), (3, 0), (4, 1), (5, 2)]
    assert t_all.users_too_short == 2


def _seen(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return np.unique(users.astype(np.int64) * n_items + items)


def test_negatives_unseen_distinct_and_seeded() -> None:
    n_items = 50
    rng = np.random.default_rng(1)
    inter_users = np.repeat(np.arange(20), 10)
    inter_items = np.concatenate([rng.choice(n_items, 10, replace=False) for _ in range(20)])
    seen = _seen(inter_users, inter_items, n_items)
    degree = np.bincount(inter_users, minlength=20)
    ex_users = np.repeat(np.arange(20), 3)
    counts = np.tile([1, 1, 20], 20)
    flat, offsets, fillable = splits.sample_negatives(ex_users, counts, seen, degree, n_items, seed=7)
    assert fillable.all()
    assert np.diff(offsets).tolist() == counts.tolist()
    for e, u in enumerate(ex_users):
        negs = flat[offsets[e]:offsets[e + 1]]
        assert len(set(negs.tolist())) == len(negs)
        assert not set(negs.tolist()) & set(inter_items[inter_users == u].tolist())
    again = splits.sample_negatives(ex_users, counts, seen, degree, n_items, seed=7)
    assert np.array_equal(flat, again[0])
    other = splits.sample_negatives(ex_users, counts, seen, degree, n_items, seed=8)
    assert not np.array_equal(flat, other[0])


def test_negatives_for_users_who_saw_almost_everything() -> None:
    # user 0 saw 27 of 30 items: exactly 3 unseen; user 1 saw 29: cannot get 3 -> reported, not padded
    n_items = 30
    users = np.array([0] * 27 + [1] * 29)
    items = np.concatenate([np.arange(3, 30), np.arange(1, 30)])
    flat, offsets, fillable = splits.sample_negatives(
        np.array([0, 1]), np.array([3, 3]), _seen(users, items, n_items), np.array([27, 29]), n_items, seed=0)
    assert fillable.tolist() == [True, False]
    assert sorted(flat[offsets[0]:offsets[1]].tolist()) == [0, 1, 2]
    assert offsets[2] == offsets[1]
