"""Fixtures of the baseline tests: a hand-made run whose users all walk one fixed cycle of items."""

from __future__ import annotations

from pathlib import Path

import pytest

from msr.baselines.config import BaselineConfig
from tests.graph.conftest import write_run

CYCLE = 12  # items i0 .. i11; every user's next item is the successor of its last one


def cycle_sequences(users: int = 24, length: int = 8) -> dict[str, list[str]]:
    """User u walks i(u), i(u+1), ... (mod CYCLE): distinct items, every transition seen in training."""
    return {f"u{u:02d}": [f"i{(u + p) % CYCLE}" for p in range(length)] for u in range(users)}


@pytest.fixture
def cycle_run(tmp_path: Path) -> Path:
    """24 users of 8 items each on the cycle: train_len 6, valid target at position 6, test at 7."""
    return write_run(tmp_path / "cycle", cycle_sequences(), n_items=CYCLE)


def small_config(run: Path, model: str = "sasrec", **overrides: object) -> BaselineConfig:
    """Settings that learn the cycle in a few epochs on a CPU (max_len 4: every position of an
    evaluation input has been trained)."""
    settings = {"hidden_size": 32, "dropout": 0.0, "learning_rate": 0.01, "batch_size": 8, "max_epochs": 40,
                "patience": 3, "stop_k": 1, "ks": [1, 5], "max_len": 4, "device": "cpu", "retrieve_k": 5, **overrides}
    return BaselineConfig(run_dir=str(run), model=model, **settings)
