"""The MLLMRec model and its training loop: two MLP towers, a dot product, BPR with one negative.

Items: the graph-refined frozen embeddings e* = e + M e through 384 -> 256 -> 64 (LeakyReLU);
users: the preference-text embedding through a tower of the same shape. Every random draw of an
epoch comes from its own stream, seeded by (seed, epoch, stream): the pair order and the negatives
never share draws, within a run or across seeds. So training is deterministic and an interrupted
run resumes from its last finished epoch with the same result as an uninterrupted one: after each
epoch the weights, Adam's state and the training record (epoch, early-stopping counters, digest)
are saved together in one safetensors file, the record in its metadata, so the weights and the
counters a resume reads can never disagree (never pickle); state.json is a readable copy of the
record, and the best weights so far are kept in their own file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from msr.data.splits import sample_negatives
from msr.graph.ranking import NonFiniteScoresError
from msr.rundir import atomic_path, write_json

log = logging.getLogger(__name__)
MODEL_FILE, STATE_FILE, LAST_FILE = "model.safetensors", "state.json", "last.safetensors"
ORDER_STREAM, NEGATIVES_STREAM = 1, 2


class Towers(nn.Module):
    """Item and user towers: Linear -> LeakyReLU -> Linear each."""

    def __init__(self, in_dim: int, hidden_dim: int = 256, embed_dim: int = 64):
        super().__init__()
        self.item = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, embed_dim))
        self.user = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, embed_dim))


def init_towers(in_dim: int, hidden_dim: int, embed_dim: int, seed: int) -> Towers:
    """Towers with weights drawn from `seed`, without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Towers(in_dim, hidden_dim, embed_dim)


def bpr_loss(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Mean -log sigmoid(<u, i+> - <u, i->)."""
    return -F.logsigmoid((users * positives).sum(-1) - (users * negatives).sum(-1)).mean()


@dataclass
class Pairs:
    """Training pairs (user text at a cutoff -> the target after it) and what negatives must avoid."""

    user_features: torch.Tensor  # (pairs, dim): embedding of each pair's user text
    users: np.ndarray  # (pairs,): user code of each pair
    items: np.ndarray  # (pairs,): positive item code
    seen_keys: np.ndarray  # sorted user * n_items + item over each user's training interactions
    n_items: int
    user_degree: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        users = self.seen_keys // self.n_items
        self.user_degree = np.bincount(users, minlength=int(self.users.max(initial=-1)) + 1)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """The seed of one stream of one epoch's draws (ORDER_STREAM, NEGATIVES_STREAM): independent
    for every (seed, epoch, stream), so no two streams share draws (not even seed s's negatives and
    seed s + 1's order) and resuming at any epoch replays exactly the draws an uninterrupted run
    would make."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def draw_negatives(pairs: Pairs, seed: int, epoch: int) -> np.ndarray:
    """One negative per pair, uniform over the items its user never interacted with in training
    (-1 for a user who has seen every item); seeded by (seed, epoch, NEGATIVES_STREAM)."""
    negatives, offsets, fillable = sample_negatives(pairs.users, np.ones(len(pairs.users), dtype=np.int64),
                                                    pairs.seen_keys, pairs.user_degree, pairs.n_items,
                                                    epoch_seed(seed, epoch, NEGATIVES_STREAM))
    negative = np.full(len(pairs.users), -1, dtype=np.int64)
    negative[fillable] = negatives[offsets[:-1][fillable]]
    return negative


def train_epoch(towers: Towers, optimizer: torch.optim.Optimizer, item_features: torch.Tensor, pairs: Pairs,
                batch_size: int, seed: int, epoch: int) -> float:
    """One pass over the pairs in a seeded order, one negative each (`draw_negatives`); returns the
    mean BPR loss."""
    rng = np.random.default_rng(epoch_seed(seed, epoch, ORDER_STREAM))
    negative = draw_negatives(pairs, seed, epoch)
    device = item_features.device
    order = torch.from_numpy(rng.permutation(np.flatnonzero(negative >= 0))).to(device)
    positive = torch.from_numpy(np.array(pairs.items, dtype=np.int64)).to(device)
    negative = torch.from_numpy(negative).to(device)
    towers.train()
    total = 0.0
    for lo in range(0, len(order), batch_size):
        batch = order[lo:lo + batch_size]
        users = towers.user(pairs.user_features[batch])
        pos = towers.item(item_features[positive[batch]])
        neg = towers.item(item_features[negative[batch]])
        loss = bpr_loss(users, pos, neg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    return total / max(len(order), 1)


def _save_state(path: Path, towers: Towers, optimizer: torch.optim.Optimizer, record: dict) -> None:
    """Weights, Adam's state and the training record (as JSON metadata), in one atomic file."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in towers.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optim.{index}.{k}": torch.as_tensor(v).cpu().contiguous() for k, v in state.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"record": json.dumps(record)})


def _saved_record(path: Path) -> dict | None:
    """The training record stored with the checkpoint at `path`, None when it has none."""
    with safe_open(str(path), framework="pt") as f:
        text = (f.metadata() or {}).get("record")
    return json.loads(text) if text else None


def _load_state(path: Path, towers: Towers, optimizer: torch.optim.Optimizer) -> None:
    """Restore the weights and Adam's state written by `_save_state`."""
    tensors = load_file(str(path))
    towers.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def save_weights(path: Path, towers: Towers) -> None:
    """The towers' weights as safetensors, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in towers.state_dict().items()}, str(tmp))


def fit(towers: Towers, item_features: torch.Tensor, pairs: Pairs, validate: Callable[[Towers], float],
        out_dir: Path, digest: str, learning_rate: float, batch_size: int, max_epochs: int, patience: int,
        seed: int, resume: bool = True) -> dict:
    """Train with early stopping on `validate` (higher is better); return the training record.

    `out_dir` receives model.safetensors (the best weights so far), last.safetensors (weights,
    Adam's state and the record, to resume a run with the same `digest` when `resume`; without it
    a partial run is dropped and training starts from scratch) and state.json (a readable copy of
    the record); a finished run leaves its record in state.json and deletes last.safetensors. A
    NaN loss or non-finite validation scores stop training with an error naming the epoch."""
    optimizer = torch.optim.Adam(towers.parameters(), lr=learning_rate)
    state_path, last_path, best_path = out_dir / STATE_FILE, out_dir / LAST_FILE, out_dir / MODEL_FILE
    record = {"digest": digest, "epoch": 0, "best_epoch": 0, "best": None, "history": [], "done": False}
    if not resume:
        last_path.unlink(missing_ok=True)
    if last_path.exists() and best_path.exists():
        saved = _saved_record(last_path)
        if saved is not None and saved["digest"] == digest and not saved["done"]:
            record = saved
            _load_state(last_path, towers, optimizer)
            log.info("graph: resuming after epoch %d", record["epoch"])
    while record["epoch"] < max_epochs and record["epoch"] - record["best_epoch"] < patience:
        epoch = record["epoch"] + 1
        t0 = time.perf_counter()
        loss = train_epoch(towers, optimizer, item_features, pairs, batch_size, seed, epoch)
        if not np.isfinite(loss):
            raise NonFiniteScoresError(f"epoch {epoch}: the BPR loss is {loss}: training diverged; train again "
                                       f"with a learning_rate below {learning_rate:g}")
        try:
            with torch.no_grad():
                metric = validate(towers)
        except NonFiniteScoresError as err:
            raise NonFiniteScoresError(f"epoch {epoch} (learning_rate {learning_rate:g}), validation: {err}") from err
        record["history"].append({"epoch": epoch, "loss": loss, "valid": metric,
                                  "seconds": round(time.perf_counter() - t0, 3)})
        if record["best"] is None or metric > record["best"]:
            record["best"], record["best_epoch"] = metric, epoch
            save_weights(best_path, towers)
        record["epoch"] = epoch
        _save_state(last_path, towers, optimizer, record)
        write_json(state_path, record)
        log.info("graph: epoch %d loss %.4f valid %.4f (best %.4f at %d)", epoch, loss, metric, record["best"],
                 record["best_epoch"])
    record["done"] = True
    write_json(state_path, record)
    last_path.unlink(missing_ok=True)
    return record
