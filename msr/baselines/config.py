"""`msr baselines train|evaluate` configuration: one dataclass serves both commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from msr import schema

MODELS = ("sasrec", "gru4rec", "popularity")
LOSSES = ("ce", "bce")
METRICS = ("ndcg", "recall")
@dataclass
class BaselineConfig:
    """Which classical sequential recommender, how it trains, what it writes.

    Defaults follow SASRec (Kang & McAuley, 2018): 2 self-attention blocks, 1 head, dropout 0.2,
    the last 50 items, Adam(W) lr 1e-3, batch 128 (hidden 64 instead of the paper's 50). The loss
    defaults to the full softmax over all items (`ce`), which trains better than the paper's one
    sampled negative and costs (positions x items) logits per step: fine for tens of thousands of
    items; for a catalog of ~100k items take `bce` (SASRec's binary cross-entropy with `negatives`
    uniformly sampled negatives per position)."""

    run_dir: str = field(metadata={"help": "Run directory (after `msr data prepare`)."})
    model: str = field(default="sasrec", metadata={"help": f"One of {', '.join(MODELS)} (popularity: "
                       "interactions before each example's cutoff, nothing to train)."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the item embeddings and of the "
                             "sequence encoder (its output is dotted with the item embeddings)."})
    layers: int = field(default=2, metadata={"help": "Self-attention blocks (sasrec) or GRU layers (gru4rec; "
                        "1 in the GRU4Rec paper)."})
    heads: int = field(default=1, metadata={"help": "Attention heads (sasrec); hidden_size must divide by it."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout on the embeddings and inside the encoder "
                           "(0.2 dense data, 0.5 sparse data in the SASRec paper)."})
    max_len: int = field(default=50, metadata={"help": "An example sees the last max_len items of its history; "
                         "training sequences are cut into windows of max_len."})
    batch_size: int = field(default=128, metadata={"help": "Training windows per optimiser step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay."})
    loss: str = field(default="ce", metadata={"help": "ce: softmax cross-entropy over all items (small and "
                      "medium catalogs); bce: binary cross-entropy against sampled negatives (large catalogs)."})
    negatives: int = field(default=1, metadata={"help": "bce: negatives per position, uniform over the items "
                           "other than the target."})
    max_epochs: int = field(default=200, metadata={"help": "Upper bound on training epochs."})
    patience: int = field(default=10, metadata={"help": "Stop after this many epochs without a better "
                          "validation metric@stop_k."})
    stop_k: int = field(default=10, metadata={"help": "K of the validation metric early stopping watches."})
    metric: str = field(default="ndcg", metadata={"help": "ndcg or recall: the full-ranking validation metric "
                        "(history masked) that picks the best epoch."})
    ks: list[int] = field(default_factory=lambda: [10, 20], metadata={"help": "Cut-offs of full-ranking "
                          "Recall@K and NDCG@K."})
    retrieve_k: int = field(default=50, metadata={"help": "Items per example in the retrieval table."})
    seed: int = field(default=0, metadata={"help": "Seed (>= 0) of the initial weights, the batch order, "
                      "dropout and the negatives."})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:N."})
    output: str | None = field(default=None, metadata={"help": "Scored candidates of the valid and test "
                               "examples, for `msr evaluate --methods NAME=FILE` (default MODEL_scores.parquet)."})
    retrieval: str | None = field(default=None, metadata={"help": "Top retrieve_k items of every valid and test "
                                  "example (default: the output's stem, _scores replaced by _retrieval)."})
    force: bool = field(default=False, metadata={"help": "Redo even if the outputs are current."})

    def __post_init__(self) -> None:
        if self.output is None:
            self.output = f"{self.model}_scores.parquet"
        if self.retrieval is None:
            self.retrieval = f"{self.name}_retrieval.parquet"

    @property
    def name(self) -> str:
        """The baseline's name: its stage names (baselines.NAME.train, baselines.NAME) and its folder
        baselines/NAME/ (the output's stem without a trailing _scores)."""
        return Path(str(self.output)).stem.removesuffix("_scores")

    def validate(self) -> None:
        """Refuse settings that would crash mid-run, train on nothing or overwrite a run's tables."""
        for name, allowed in (("model", MODELS), ("loss", LOSSES), ("metric", METRICS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("hidden_size", "layers", "heads", "max_len", "batch_size", "negatives", "max_epochs",
                     "patience", "stop_k", "retrieve_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.model == "sasrec" and self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} does not divide by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise ValueError("learning_rate must be > 0 and weight_decay >= 0")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be cut-offs >= 1, got {self.ks}")
        for name in ("output", "retrieval"):
            schema.check_output_table(name, str(getattr(self, name)))
        if self.output == self.retrieval:
            raise ValueError(f"output and retrieval are the same file ({self.output})")
