"""Training windows and example histories by hand, and no leakage: held-out items never reach training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from msr import schema
from msr.baselines.data import history_rows, training_windows
from msr.baselines.pipeline import train_baseline
from msr.graph.data import RunData
from tests.baselines.conftest import cycle_sequences, small_config
from tests.graph.conftest import write_run


def _data(lengths: list[int], train_len: list[int]) -> RunData:
    """Users whose item at flat offset j is code j (so a window's codes are its offsets)."""
    seq_len = np.array(lengths)
    return RunData(items=pd.DataFrame({schema.ITEM: [str(i) for i in range(seq_len.sum())]}), users=pd.Index(range(len(lengths))),
                   seq_items=np.arange(seq_len.sum()), seq_start=np.concatenate(([0], np.cumsum(seq_len)[:-1])),
                   seq_len=seq_len, train_len=np.array(train_len), examples=pd.DataFrame())


def test_windows_cover_every_training_position_once() -> None:
    # user 0: 8 items, 7 of them training (offsets 0..6); user 1: 1 training item (no target); user 2: 3 of 4
    data = _data([8, 2, 4], [7, 1, 3])
    windows = training_windows(data, max_len=2)
    tokens, length = windows.inputs(np.arange(len(windows)))
    # user 0 ends at 6, 4, 2 (inputs [4, 6), [2, 4), [0, 2)); user 2 (offsets 10..12): inputs [10, 12)
    assert tokens.tolist() == [[5, 6], [3, 4], [1, 2], [11, 12]]  # code + 1
    assert windows.targets(np.arange(len(windows))).tolist() == [[5, 6], [3, 4], [1, 2], [11, 12]]
    assert length.tolist() == [2, 2, 2, 2]
    ragged = training_windows(_data([8], [6]), max_len=2)  # 6 training items: targets 1..5 in 3 windows
    assert ragged.targets(np.arange(len(ragged))).tolist() == [[4, 5], [2, 3], [1, -1]]
    assert ragged.inputs(np.array([2]))[0].tolist() == [[1]]  # the batch is as wide as its longest row


def test_an_example_sees_the_last_max_len_items_strictly_before_its_target() -> None:
    data = _data([8, 3], [6, 1])
    rows = history_rows(data, np.array([0, 0, 1]), np.array([7, 2, 0]), max_len=3)
    tokens, length = rows.inputs(np.arange(3))
    assert tokens.tolist() == [[5, 6, 7], [1, 2, 0], [0, 0, 0]] and length.tolist() == [3, 2, 0]


def _rerun_with_other_held_out_items(root: Path) -> dict[str, torch.Tensor]:
    """Every user's positions from train_len on (its valid and test targets) replaced by other items."""
    sequences = {user: seq[:6] + [f"i{(int(seq[0][1:]) + 9) % 12}", f"i{(int(seq[0][1:]) + 10) % 12}"]
                 for user, seq in cycle_sequences().items()}
    run = write_run(root, sequences, n_items=12)
    train_baseline(small_config(run, max_epochs=1))
    return load_file(str(run / "baselines" / "sasrec" / "model.safetensors"))


def test_held_out_targets_and_later_items_do_not_change_the_trained_weights(cycle_run: Path, tmp_path: Path) -> None:
    train_baseline(small_config(cycle_run, max_epochs=1))  # one epoch: the best epoch cannot depend on valid
    weights = load_file(str(cycle_run / "baselines" / "sasrec" / "model.safetensors"))
    other = _rerun_with_other_held_out_items(tmp_path / "other")
    assert weights.keys() == other.keys()
    for name in weights:
        torch.testing.assert_close(weights[name], other[name], rtol=0, atol=0)
