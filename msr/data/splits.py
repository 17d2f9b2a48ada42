"""k-core filtering, chronological order, leave-last-out targets and seeded negatives.

Everything works on integer codes (users 0..U-1, items 0..I-1) with numpy, so a MicroLens-1M-sized
log (10M interactions) splits in seconds. Determinism: the same inputs and seed give the same
arrays, bit for bit; no step depends on hash order or wall-clock time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST = 0, 1, 2


def kcore(users: np.ndarray, items: np.ndarray, user_min: int, item_min: int,
          n_users: int, n_items: int) -> tuple[np.ndarray, int]:
    """Mask of interactions that survive iterative k-core filtering, and the number of rounds.

    Repeats until every kept user has >= user_min and every kept item >= item_min interactions."""
    keep = np.ones(len(users), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        user_deg = np.bincount(users[keep], minlength=n_users)
        item_deg = np.bincount(items[keep], minlength=n_items)
        drop = keep & ((user_deg[users] < user_min) | (item_deg[items] < item_min))
        if not drop.any():
            return keep, rounds
        keep &= ~drop


def chronological_order(users: np.ndarray, timestamps: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Permutation sorting by user, then timestamp, then item code (the deterministic tie-break
    for equal timestamps, independent of row order in the raw file)."""
    return np.lexsort((items, timestamps, users))


def positions_in_runs(sorted_users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For users sorted into contiguous runs: each row's 0-based position in its run, the run
    starts and the run lengths."""
    n = len(sorted_users)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    boundary = np.flatnonzero(np.diff(sorted_users)) + 1
    starts = np.concatenate(([0], boundary)).astype(np.int64)
    lengths = np.diff(np.concatenate((starts, [n]))).astype(np.int64)
    pos = np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)
    return pos, starts, lengths


def keep_last(sorted_users: np.ndarray, max_len: int) -> np.ndarray:
    """Mask keeping each user's most recent `max_len` interactions (rows sorted chronologically)."""
    pos, starts, lengths = positions_in_runs(sorted_users)
    return pos >= np.repeat(lengths, lengths) - max_len


@dataclass
class Targets:
    """Leave-last-out targets: row index (into the sorted log) and split code of each example."""

    rows: np.ndarray
    split: np.ndarray
    users_too_short: int


def leave_last_out(starts: np.ndarray, lengths: np.ndarray, train_per_user: int,
                   min_history: int) -> Targets:
    """Last interaction = test, second-last = validation, up to `train_per_user` before that =
    training (-1: every position with at least `min_history` interactions before it).

    Users with fewer than min_history + 2 interactions get no example and are counted."""
    ok = lengths >= min_history + 2
    starts, lengths = starts[ok], lengths[ok]
    first_train = np.full_like(lengths, min_history)
    if train_per_user >= 0:
        first_train = np.maximum(first_train, lengths - 2 - train_per_user)
    n_train = np.maximum(lengths - 2 - first_train, 0)
    train_rows = np.repeat(starts + first_train, n_train) + (
        np.arange(n_train.sum()) - np.repeat(np.cumsum(n_train) - n_train, n_train))
    rows = np.concatenate((train_rows, starts + lengths - 2, starts + lengths - 1))
    split = np.concatenate((np.full(len(train_rows), SPLIT_TRAIN, dtype=np.int8),
                            np.full(len(starts), SPLIT_VALID, dtype=np.int8),
                            np.full(len(starts), SPLIT_TEST, dtype=np.int8)))
    order = np.argsort(rows, kind="stable")
    return Targets(rows[order], split[order], int((~ok).sum()))


def seen_keys(users: np.ndarray, items: np.ndarray, user_codes: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
    """The sorted unique keys user * n_items + item, in the dense codes of `user_codes` / `item_codes` (the sorted
    original codes that survive), of every (user, item) pair given; pairs of a user or item that did not survive are
    left out (such an item can never be drawn as a negative)."""
    n_items = len(item_codes)
    u = np.minimum(np.searchsorted(user_codes, users), max(len(user_codes) - 1, 0))
    i = np.minimum(np.searchsorted(item_codes, items), max(n_items - 1, 0))
    kept = (user_codes[u] == users) & (item_codes[i] == items) if len(user_codes) and n_items else \
        np.zeros(len(users), dtype=bool)
    return np.unique(u[kept].astype(np.int64) * n_items + i[kept])


def sample_negatives(example_users: np.ndarray, counts: np.ndarray, seen_keys: np.ndarray,
                     user_degree: np.ndarray, n_items: int, seed: int,
                     chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw `counts[e]` distinct items that user `example_users[e]` never interacted with.

    `seen_keys` is the sorted array of user * n_items + item over all of a user's interactions.
    Uniform without replacement among the unseen items. Returns (flat item codes, offsets of each
    example's slice, mask of examples that could be filled: a user who has seen nearly every item
    cannot get `counts[e]` negatives and is reported, not padded)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    fillable = n_items - user_degree[example_users] >= counts
    lengths = np.where(fillable, counts, 0).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    flat = np.empty(offsets[-1], dtype=np.int64)
    for k in np.unique(lengths[lengths > 0]):
        idx = np.flatnonzero(lengths == k)
        for lo in range(0, len(idx), chunk):
            rows = idx[lo:lo + chunk]
            drawn = _draw_unseen(rng, example_users[rows], int(k), seen_keys, n_items)
            flat[(offsets[rows][:, None] + np.arange(k)).ravel()] = drawn.ravel()
    return flat, offsets, fillable


def _is_seen(users: np.ndarray, items: np.ndarray, seen_keys: np.ndarray, n_items: int) -> np.ndarray:
    """Elementwise: has users[r] interacted with items[r, j]? (items is 2-D, one row per user)"""
    keys = users.astype(np.int64)[:, None] * n_items + items
    at = np.minimum(np.searchsorted(seen_keys, keys), len(seen_keys) - 1)
    return seen_keys[at] == keys


def _draw_unseen(rng: np.random.Generator, users: np.ndarray, k: int, seen_keys: np.ndarray,
                 n_items: int, max_rounds: int = 8) -> np.ndarray:
    """k distinct unseen items per user, by vectorised rejection; rows that keep failing (users
    who have seen most of the catalog) are finished by exact sampling from their complement."""
    result = np.full((len(users), k), -1, dtype=np.int64)
    todo = np.arange(len(users))
    width = 2 * k + 8
    for _ in range(max_rounds):
        if len(todo) == 0:
            return result
        cand = rng.integers(0, n_items, size=(len(todo), width), dtype=np.int64)
        valid = ~_is_seen(users[todo], cand, seen_keys, n_items)
        order = np.argsort(cand, axis=1, kind="stable")
        sorted_cand = np.take_along_axis(cand, order, axis=1)
        repeat = np.zeros_like(valid)
        np.put_along_axis(repeat, order[:, 1:], sorted_cand[:, 1:] == sorted_cand[:, :-1], axis=1)
        valid &= ~repeat
        taken = valid & (np.cumsum(valid, axis=1) <= k)
        done = taken.sum(axis=1) == k
        result[todo[done]] = cand[done][taken[done]].reshape(-1, k)
        todo = todo[~done]
    for r in todo:
        lo = np.searchsorted(seen_keys, users[r] * n_items)
        hi = np.searchsorted(seen_keys, (users[r] + 1) * n_items)
        unseen = np.setdiff1d(np.arange(n_items), seen_keys[lo:hi] - users[r] * n_items)
        result[r] = rng.choice(unseen, size=k, replace=False)
    return result


def parse_ratio(text: str) -> tuple[int, int, int]:
    """`"8:1:1"` -> (8, 1, 1): the train, validation and test shares of a ratio split (non-negative integers,
    a positive test share and a positive sum); a ValueError naming the value otherwise."""
    parts = text.split(":")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts) or int(parts[2]) == 0:
        raise ValueError(f"split_ratio: expected three whole shares train:valid:test with test > 0 (e.g. 8:1:1), "
                         f"got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _ratio_cuts(n: int, ratio: tuple[int, int, int]) -> tuple[int, int]:
    """Where a list of n cut into train | valid | test by `ratio` (floors for train and valid; test gets the rest,
    as LLaRA's 943 users give 754 | 94 | 95)."""
    total = sum(ratio)
    n_train = n * ratio[0] // total
    return n_train, n_train + n * ratio[1] // total


def _rows(starts: np.ndarray, first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Row indices starts[u] + first[u] + 0 .. count[u] - 1, user after user."""
    count = np.maximum(count, 0)
    return np.repeat(starts + first, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))


def _targets(rows: np.ndarray, split: np.ndarray, too_short: int) -> Targets:
    order = np.argsort(rows, kind="stable")
    return Targets(rows[order], split[order].astype(np.int8), too_short)


def user_ratio_split(starts: np.ndarray, lengths: np.ndarray, last_ts: np.ndarray, ratio: tuple[int, int, int],
                     train_per_user: int, min_history: int) -> Targets:
    """Users in chronological order (by their last interaction, ties by user code) cut by `ratio` (LLaRA's 8:1:1
    of sequences): a validation or test user's one target is their last interaction; a training user's targets
    are up to `train_per_user` of their last positions (-1: every position with >= min_history before it).

    Every training interaction is then at or before the first validation and test user's last interaction, so no
    model learns from anything later than a held-out target. Users with fewer than min_history + 1 interactions
    get no example and are counted."""
    ok = np.flatnonzero(lengths >= min_history + 1)
    ok = ok[np.lexsort((ok, last_ts[ok]))]
    n_train, n_valid = _ratio_cuts(len(ok), ratio)
    train, held = ok[:n_train], ok[n_train:]
    first = np.full(len(train), min_history)
    if train_per_user >= 0:
        first = np.maximum(first, lengths[train] - train_per_user)
    train_rows = _rows(starts[train], first, lengths[train] - first)
    held_rows = starts[held] + lengths[held] - 1
    split = np.concatenate((np.full(len(train_rows), SPLIT_TRAIN), np.full(n_valid - n_train, SPLIT_VALID),
                            np.full(len(held) - (n_valid - n_train), SPLIT_TEST)))
    return _targets(np.concatenate((train_rows, held_rows)), split, int(len(lengths) - len(ok)))


def sample_list_split(starts: np.ndarray, lengths: np.ndarray, user_order: np.ndarray, ratio: tuple[int, int, int],
                      min_history: int, max_samples: int) -> tuple[Targets, int]:
    """TALLRec's sample list: every position with >= min_history interactions before it is a sample, listed user
    after user in `user_order` (their order in the raw file) and by time within a user; the last `max_samples`
    are kept (0: all) and cut in list order by `ratio`. Returns the targets and how many samples the cap left out.
    Users with no such position get no example and are counted."""
    count = np.maximum(lengths - min_history, 0)
    users = user_order[count[user_order] > 0]
    rows = _rows(starts[users], np.full(len(users), min_history), count[users])
    beyond = max(0, len(rows) - max_samples) if max_samples else 0
    rows = rows[beyond:]
    n_train, n_valid = _ratio_cuts(len(rows), ratio)
    split = np.full(len(rows), SPLIT_TEST)
    split[:n_valid], split[:n_train] = SPLIT_VALID, SPLIT_TRAIN
    return _targets(rows, split, int((count == 0).sum())), beyond


def k_shot(targets: Targets, k: int, seed: int) -> tuple[Targets, int]:
    """Keep a seeded subset of `k` training targets (TALLRec's few-shot 16 / 64 / 256; all when k is 0 or more
    than there are), every validation and test target; returns them and how many training targets were left out.
    The draw has its own random stream, so it does not move the negatives drawn with the same seed."""
    train = np.flatnonzero(targets.split == SPLIT_TRAIN)
    if not k or k >= len(train):
        return targets, 0
    rng = np.random.Generator(np.random.PCG64([seed, 1]))
    drop = np.setdiff1d(train, rng.choice(train, size=k, replace=False))
    keep = np.ones(len(targets.rows), dtype=bool)
    keep[drop] = False
    return Targets(targets.rows[keep], targets.split[keep], targets.users_too_short), len(drop)
