"""Training of a sequential baseline: next-item loss on every window position, early stopping on validation.

Every random draw comes from the seed: the initial weights (`build_model`), the window order (`batches`)
and the negatives (one torch.Generator), dropout (the global generator, seeded inside `torch.random.fork_rng`
so the caller's random state is left as it was). The weights of the best validation epoch are kept
in memory and loaded back at the end; a NaN loss or non-finite validation scores stop training with
an error naming the epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from msr.baselines.config import BaselineConfig
from msr.baselines.data import Sequences
from msr.baselines.gru4rec import GRU4Rec
from msr.baselines.sasrec import SASRec
from msr.graph.ranking import NonFiniteScoresError

log = logging.getLogger(__name__)
EVAL_BATCH = 1024  # example rows per forward pass when computing user vectors
BUCKET_POOL = 50  # batches whose windows are sorted by length together


def build_model(cfg: BaselineConfig, n_items: int) -> nn.Module:
    """The configured model with weights drawn from `cfg.seed`, leaving the global random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.model == "sasrec":
            return SASRec(n_items, cfg.hidden_size, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len)
        if cfg.model == "gru4rec":
            return GRU4Rec(n_items, cfg.hidden_size, cfg.layers, cfg.dropout)
    raise ValueError(f"{cfg.model} has no trainable model")


def user_vectors(model: nn.Module, rows: Sequences, device: torch.device) -> torch.Tensor:
    """The model's output at the last item of each row (rows x hidden), in eval mode: the vector an
    example's scores are the dot products of. Rows go through in order of length, so each forward
    pass is about as wide as its rows."""
    model.eval()
    order = np.argsort(rows.length, kind="stable")
    out = torch.empty(len(rows), model.item_vectors().shape[1], device=device)
    with torch.no_grad():
        for lo in range(0, len(rows), EVAL_BATCH):
            batch = order[lo:lo + EVAL_BATCH]
            tokens, length = rows.inputs(batch)
            hidden = model(tokens.to(device))
            last = (length - 1).clamp(min=0).to(device)
            out[torch.as_tensor(batch, device=device)] = hidden[torch.arange(len(last), device=device), last]
    return out


def draw_negatives(targets: torch.Tensor, n_items: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` item codes per target, uniform over the items other than the target (-1 targets: any)."""
    negatives = torch.randint(0, n_items - 1, (*targets.shape, count), generator=generator)
    return negatives + (negatives >= targets.unsqueeze(-1)).long()


def window_loss(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor:
    """Mean next-item loss over the real positions of a batch: softmax cross-entropy over all items, or
    with `negatives` (batch x length x count) SASRec's -log s(pos) - sum log(1 - s(neg))."""
    hidden = model(tokens)
    real = targets >= 0
    h, t, items = hidden[real], targets[real], model.item_vectors()
    if negatives is None:
        return F.cross_entropy(h @ items.T, t)
    positive = (h * items[t]).sum(-1)
    negative = (h.unsqueeze(1) * items[negatives[real]]).sum(-1)
    return (F.softplus(-positive) + F.softplus(negative).sum(-1)).mean()


def batches(windows: Sequences, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """The window rows of each step of one epoch, drawn from `generator`: a random order, sorted by
    length within pools of BUCKET_POOL batches (so a batch, padded to its longest row, is mostly real
    positions: ~6x fewer wasted positions on MicroLens-like lengths), the batches then shuffled."""
    order = torch.randperm(len(windows), generator=generator).numpy()
    pool = batch_size * BUCKET_POOL
    for lo in range(0, len(order), pool):
        chunk = order[lo:lo + pool]
        order[lo:lo + pool] = chunk[np.argsort(windows.length[chunk], kind="stable")]
    steps = [order[lo:lo + batch_size] for lo in range(0, len(order), batch_size)]
    return [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, windows: Sequences, cfg: BaselineConfig,
                n_items: int, generator: torch.Generator, device: torch.device, desc: str = "steps") -> float:
    """One pass over the windows in `batches` drawn from `generator`; returns the mean loss per position."""
    model.train()
    total, positions = 0.0, 0
    for rows in tqdm(batches(windows, cfg.batch_size, generator), desc=desc, unit="step", leave=False):
        tokens, _ = windows.inputs(rows)
        targets = windows.targets(rows)
        negatives = draw_negatives(targets, n_items, cfg.negatives, generator).to(device) if cfg.loss == "bce" else None
        loss = window_loss(model, tokens.to(device), targets.to(device), negatives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        count = int((targets >= 0).sum())
        total, positions = total + loss.item() * count, positions + count
    return total / max(positions, 1)


def fit(model: nn.Module, windows: Sequences, validate: Callable[[nn.Module], float], cfg: BaselineConfig,
        n_items: int, device: torch.device) -> dict:
    """Train with early stopping on `validate` (higher is better: cfg.metric@cfg.stop_k); leave the best
    epoch's weights in `model` and return the training record (loss and validation per epoch, best epoch)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    record: dict = {"epoch": 0, "best_epoch": 0, "best": None, "history": [], "windows": len(windows),
                    "positions": int(windows.length.sum())}
    best_state: dict[str, torch.Tensor] = {}
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), tqdm(total=cfg.max_epochs, desc=f"{cfg.model} epochs", unit="epoch") as bar:
        torch.manual_seed(cfg.seed)
        while record["epoch"] < cfg.max_epochs and record["epoch"] - record["best_epoch"] < cfg.patience:
            epoch, t0 = record["epoch"] + 1, time.perf_counter()
            loss = train_epoch(model, optimizer, windows, cfg, n_items, generator, device, desc=f"epoch {epoch}")
            if not np.isfinite(loss):
                raise NonFiniteScoresError(f"epoch {epoch}: the loss is {loss}: training diverged; train again "
                                           f"with a learning_rate below {cfg.learning_rate:g}")
            try:
                metric = validate(model)
            except NonFiniteScoresError as err:
                raise NonFiniteScoresError(f"epoch {epoch} (learning_rate {cfg.learning_rate:g}), validation: "
                                           f"{err}") from err
            record["history"].append({"epoch": epoch, "loss": loss, "valid": metric,
                                      "seconds": round(time.perf_counter() - t0, 3)})
            if record["best"] is None or metric > record["best"]:
                record["best"], record["best_epoch"] = metric, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            record["epoch"] = epoch
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", valid=f"{metric:.4f}", best=f"{record['best']:.4f}")
            log.info("%s: epoch %d loss %.4f valid %s@%d %.4f (best %.4f at %d)", cfg.model, epoch, loss, cfg.metric,
                     cfg.stop_k, metric, record["best"], record["best_epoch"])
    model.load_state_dict(best_state)
    return record
