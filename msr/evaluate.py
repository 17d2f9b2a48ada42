"""`msr evaluate`: scored candidates -> metrics per method, side by side with baselines, with uncertainty.

Sampled candidates: every method is measured on the very same candidates (each example's target and
negatives): the scored tables of `msr score` (the fine-tuned model, the zero-shot base model, ...) or of
any other recommender (`msr graph evaluate`, `msr baselines evaluate`: a generic `score` column instead of
`p_yes`) and the baselines computed here: random (seeded), popularity (interactions of the candidate
strictly before the example's cutoff, over all users: no leakage from the future) and, for the embedded
dataset, the oracle of its true preference model.

Full ranking (`retrieval`): a retriever's top-K list per example (a retrieval table), ranked by the
retriever itself and reordered by each reranker (`msr score --candidates`); a target outside the list is
a miss. Every figure gets a 95% bootstrap interval over users and a paired bootstrap p-value against a
reference (msr.uncertainty). Writes metrics.json, eval_scores.parquet (every sampled candidate with every
method's score), report.md and roc.png.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from msr import schema
from msr.data.sft import candidates
from msr.metrics import (
    DEFAULT_KS,
    example_metrics,
    full_ranking_metrics,
    mean_metrics,
    retrieved_ranks,
    roc_auc,
    roc_curve,
)
from msr.provenance import one_writer
from msr.published import read_published, verdicts
from msr.report import model_card_path, report, update_model_card
from msr.rundir import RunDir, write_json, write_parquet
from msr.scored import CANDIDATE_KEY, EXAMPLE_KEY, check_producer, read_retrieval, read_scores, retrieved_for
from msr.uncertainty import LEVEL, PooledAuc, annotate, best_of, bootstrap, mean_statistic, stacked

log = logging.getLogger(__name__)
METRICS_FILE, EVAL_SCORES_FILE, REPORT_FILE, ROC_FILE = "metrics.json", "eval_scores.parquet", "report.md", "roc.png"
BASELINES = ("random", "popularity", "oracle")
REFERENCE_BASELINES = ("random", "popularity")  # the oracle is an upper bound, not a baseline to beat
_RESERVED = (schema.USER, schema.HISTORY_LEN, schema.CUTOFF_TS, schema.ITEM, schema.LABEL, schema.SCORE)


def _pairs(option: str, values: list[str], taken: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Parse name=file values, refusing a missing name, a name given twice or one in `taken`."""
    pairs: list[tuple[str, str]] = []
    for value in values:
        name, _, file = value.partition("=")
        if not name or not file:
            raise ValueError(f"{option}: {value!r} is not name=file")
        if name in taken:
            raise ValueError(f"{option}: {name!r} is taken by a baseline or a column ({', '.join(taken)}): "
                             "give the method another name")
        if name in dict(pairs):
            raise ValueError(f"{option}: {name!r} is given twice: give each method its own name")
        pairs.append((name, file))
    return pairs


@dataclass
class EvaluateConfig:
    """What to compare, on which split, and how sure the comparison is."""

    run_dir: str = field(metadata={"help": "Run directory."})
    split: str = field(default="test", metadata={"help": "Examples to evaluate."})
    methods: list[str] = field(default_factory=lambda: ["sft=scores.parquet"], metadata={
        "help": "name=file pairs: scored tables inside the run directory, from `msr score` (p_yes) or "
                "`msr graph evaluate` / `msr baselines evaluate` (score)."})
    baselines: list[str] = field(default_factory=lambda: list(BASELINES), metadata={
        "help": f"Any of {', '.join(BASELINES)} (oracle only where truth.json exists)."})
    truth: str | None = field(default=None, metadata={"help": "truth.json of the embedded dataset "
                              "(default: RUN_DIR/raw/truth.json when present)."})
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS), metadata={"help": "Cut-offs K."})
    seed: int = field(default=0, metadata={"help": "Seed of the random baseline and of the bootstrap."})
    resamples: int = field(default=1000, metadata={
        "help": "Bootstrap resamples of users for the 95 percent intervals and paired p-values (0: none)."})
    compare_to: list[str] = field(default_factory=list, metadata={
        "help": "Methods (names from `methods`) that count as baselines besides random and popularity: the "
                "best of them all by `compare_metric` is the reference of every p-value."})
    compare_metric: str = field(default="auc", metadata={
        "help": "The figure that picks the best baseline (auc, user_auc, hr@K, ndcg@K, mrr@K)."})
    retrieval: str | None = field(default=None, metadata={
        "help": "name=file: a retrieval table of the run (a retriever's top-K per example), for full-ranking "
                "Recall/NDCG@K of the retriever and of `rerank_methods`."})
    rerank_methods: list[str] = field(default_factory=list, metadata={
        "help": "name=file pairs: tables that scored the retrieved items (`msr score --candidates`)."})
    full_ks: list[int] = field(default_factory=lambda: [10, 20], metadata={
        "help": "Full-ranking cut-offs K (at most the retrieval depth)."})
    published: str | None = field(default=None, metadata={
        "help": "A YAML file with a `published:` block (a preset of recipes/movielens): each published figure beside "
                "ours with its 95 percent interval, and whether it lies inside."})
    model_card: str | None = field(default=None, metadata={
        "help": "A trained model's directory (adapter or merged): its README.md model card gets this "
                "evaluation's table, replacing the one an earlier evaluation of the same split wrote."})

    def validate(self) -> None:
        """Refuse unknown baselines, method names that would collide in the merged tables (a method named
        like a baseline or a key column would be overwritten or break the merge), and options that name
        nothing evaluated."""
        if self.split not in schema.SPLITS:
            raise ValueError(f"split: {self.split!r} is not one of {', '.join(schema.SPLITS)}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks: cut-offs must be >= 1, got {self.ks}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"baselines: {sorted(unknown)} not among {', '.join(BASELINES)}")
        names = [name for name, _ in _pairs("methods", self.methods, BASELINES + _RESERVED)]
        if self.resamples < 0:
            raise ValueError("resamples must be >= 0 (0: no intervals or p-values)")
        stray = sorted(set(self.compare_to) - set(names))
        if stray:
            raise ValueError(f"compare_to: {stray} are not among the methods ({', '.join(names) or 'none'})")
        figures = ["auc", "user_auc"] + [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in self.ks]
        if self.compare_metric not in figures:
            raise ValueError(f"compare_metric: {self.compare_metric!r} is not one of {', '.join(figures)}")
        if self.rerank_methods and not self.retrieval:
            raise ValueError("rerank_methods: name the retrieval table they reranked (retrieval: name=file)")
        rerankers = _pairs("rerank_methods", self.rerank_methods, _RESERVED + (schema.RANK,))
        if self.retrieval:
            (retriever, _), = _pairs("retrieval", [self.retrieval])
            if retriever in dict(rerankers):
                raise ValueError(f"rerank_methods: {retriever!r} names the retriever: give the reranker another name")
        if not self.full_ks or min(self.full_ks) < 1:
            raise ValueError("full_ks: cut-offs must be >= 1")


def candidate_table(run: RunDir, split: str) -> pd.DataFrame:
    """One row per (example, candidate) of the split: the rows every method is scored on."""
    examples = pd.read_parquet(run.path(schema.EXAMPLES_FILE))
    rows = [(e[schema.USER], e[schema.HISTORY_LEN], e[schema.CUTOFF_TS], item, label)
            for e in examples[examples[schema.SPLIT] == split].to_dict("records") for item, label in candidates(e)]
    return pd.DataFrame(rows, columns=[schema.USER, schema.HISTORY_LEN, schema.CUTOFF_TS, schema.ITEM, schema.LABEL])


def popularity_before(run: RunDir, table: pd.DataFrame) -> np.ndarray:
    """For each row: how many interactions its item had strictly before the row's cutoff."""
    inter = pd.read_parquet(run.path(schema.INTERACTIONS_FILE), columns=[schema.ITEM, schema.TIMESTAMP])
    stamps = {item: np.sort(g.to_numpy()) for item, g in inter.groupby(schema.ITEM)[schema.TIMESTAMP]}
    empty = np.zeros(0, dtype=np.int64)
    return np.array([np.searchsorted(stamps.get(item, empty), ts, side="left")
                     for item, ts in zip(table[schema.ITEM], table[schema.CUTOFF_TS])], dtype=np.float64)


def _oracle(run: RunDir, truth_path: Path, table: pd.DataFrame) -> np.ndarray:
    from msr.data.synthetic import PAIRS_FILE, load_truth, oracle_score

    pairs = truth_path.parent / PAIRS_FILE
    prepared = run.manifest()["stages"].get("data.prepare", {}).get("inputs", {}).get("interactions", {}).get("digest")
    if not pairs.is_file() or run.content_digest(pairs) != prepared:
        raise ValueError(f"{truth_path} is not the truth of the data this run was prepared from: the {PAIRS_FILE} beside "
                         f"it {'differs from' if pairs.is_file() else 'is missing, unlike'} the interactions "
                         "`msr data prepare` read; give the truth.json generated with them")
    truth = load_truth(truth_path)
    return np.array([oracle_score(truth, u, i, ts) for u, i, ts in
                     zip(table[schema.USER], table[schema.ITEM], table[schema.CUTOFF_TS])])


def scored_table(run: RunDir, cfg: EvaluateConfig) -> tuple[pd.DataFrame, list[str]]:
    """The split's sampled candidates with one score column per method and baseline, and their names."""
    table = candidate_table(run, cfg.split)
    for name, file in _pairs("methods", cfg.methods):
        run.require(file)
        check_producer(run, file)
        scored = read_scores(run.path(file), CANDIDATE_KEY).rename(columns={schema.SCORE: name})
        table = table.merge(scored, on=CANDIDATE_KEY, how="left")
        missing = int(table[name].isna().sum())
        if missing:
            raise ValueError(f"{file} lacks scores for {missing} of {len(table)} {cfg.split} candidates: "
                             f"run `msr score --split {cfg.split} --output {file}` (or `msr graph evaluate`) "
                             "to completion")
        if "_label" in table:
            wrong = int((table.pop("_label") != table[schema.LABEL]).sum())
            if wrong:
                raise ValueError(f"{run.path(file)}: {wrong} of {len(table)} {cfg.split} candidates have another label than in "
                                 f"{schema.EXAMPLES_FILE}: was it scored on another run's or an older prepare's "
                                 "examples? Score this run's split again")
    if "random" in cfg.baselines:
        table["random"] = np.random.default_rng(cfg.seed).random(len(table))
    if "popularity" in cfg.baselines:
        table["popularity"] = popularity_before(run, table)
    truth = Path(cfg.truth) if cfg.truth else run.path("raw/truth.json")
    if cfg.truth and not truth.exists():
        raise FileNotFoundError(f"truth file not found: {truth}")
    if "oracle" in cfg.baselines and truth.exists():
        table["oracle"] = _oracle(run, truth, table)
    return table, [name for name, _ in _pairs("methods", cfg.methods)] + [b for b in BASELINES if b in table.columns]


def _with_uncertainty(points: dict[str, dict], statistics: dict, columns: list[str], example_users: np.ndarray,
                      reference: str | None, cfg: EvaluateConfig) -> dict[str, dict]:
    """`points` with intervals and p-values against `reference` added (none when resamples is 0)."""
    if cfg.resamples and points:
        annotate(points, bootstrap(statistics, example_users, cfg.resamples, cfg.seed), columns, reference)
    return points


def sampled_metrics(table: pd.DataFrame, names: list[str], cfg: EvaluateConfig) -> tuple[dict, dict]:
    """Every method's figures on the sampled candidates, with intervals and p-values against the best
    reference baseline (random, popularity and `compare_to`, by `compare_metric`); and how they were got."""
    if table.empty:
        raise ValueError(f"split {cfg.split!r} has no examples to evaluate")
    examples = table.groupby(EXAMPLE_KEY, sort=True).ngroup().to_numpy()
    example_users = np.zeros(examples.max() + 1, dtype=np.int64)
    example_users[examples] = pd.factorize(table[schema.USER])[0]
    labels = table[schema.LABEL].to_numpy()
    pointwise = is_pointwise(table)
    points, statistics, columns = {}, {}, ["auc"]
    for name in names:
        scores = table[name].to_numpy(dtype=np.float64)
        if pointwise:  # one candidate per example, labelled by the user: AUC over all of them is the figure
            if not np.isfinite(scores).all():
                raise ValueError(f"{name}: {int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
            points[name] = {"users": int(examples.max()) + 1, "auc": roc_auc(scores, labels)}
            statistics[name] = PooledAuc(scores, labels, examples)
            continue
        per_example = example_metrics(scores, labels, examples, cfg.ks)
        points[name] = mean_metrics(per_example, roc_auc(scores, labels))
        statistics[name] = stacked(mean_statistic(np.column_stack(list(per_example.values()))),
                                   PooledAuc(scores, labels, examples))
        columns = list(per_example) + ["auc"]
    metric = "auc" if pointwise else cfg.compare_metric
    among = [n for n in (*REFERENCE_BASELINES, *cfg.compare_to) if n in points]
    reference = best_of(points, among, metric)
    how = {"resamples": cfg.resamples, "level": LEVEL, "seed": cfg.seed, "unit": "user", "reference": reference,
           "reference_metric": metric, "reference_among": among, "labels": "explicit" if pointwise else "sampled",
           "examples": len(example_users), "users": int(example_users.max()) + 1}
    return _with_uncertainty(points, statistics, columns, example_users, reference, cfg), how


def _reranker_ranks(run: RunDir, name: str, file: str, rows: pd.DataFrame, n_examples: int) -> np.ndarray:
    """Each example's target rank among its retrieved items by the reranker's scores in `file`, which must
    score exactly the retrieved items of the split's examples (more would mean another retrieval)."""
    run.require(file)
    check_producer(run, file)
    scored = read_scores(run.path(file), CANDIDATE_KEY).rename(columns={schema.SCORE: name})
    scored = scored.drop(columns="_label", errors="ignore").merge(rows[EXAMPLE_KEY].drop_duplicates(), on=EXAMPLE_KEY)  # this split's examples only
    merged = rows.merge(scored, on=CANDIDATE_KEY, how="left")
    missing, extra = int(merged[name].isna().sum()), len(scored) - int(merged[name].notna().sum())
    if missing or extra:
        raise ValueError(f"rerank_methods: {file} ({name}) lacks scores for {missing} of {len(rows)} retrieved "
                         f"items and scores {extra} items that were not retrieved: score the retrieval with "
                         f"`msr score --split SPLIT --candidates RETRIEVAL --output {file}`")
    return retrieved_ranks(merged[name].to_numpy(), merged[schema.LABEL].to_numpy(), merged["_example"].to_numpy(),
                           n_examples)


def full_ranking(run: RunDir, cfg: EvaluateConfig) -> dict:
    """Recall/NDCG@K over the whole catalog via the retrieval table: the retriever by its own scores, each
    reranker by its scores of the retrieved items; a target outside the list is a miss. Every example of
    the split must have a retrieved list, and every K must be within the retrieval depth."""
    (retriever, file), = _pairs("retrieval", [cfg.retrieval])
    examples = pd.read_parquet(run.path(schema.EXAMPLES_FILE))
    examples = examples[examples[schema.SPLIT] == cfg.split].reset_index(drop=True)
    rows = retrieved_for(read_retrieval(run, file), examples, file)
    keys = examples[EXAMPLE_KEY].astype({schema.HISTORY_LEN: "int64"}).assign(_example=range(len(examples)))
    rows = rows.merge(keys, on=EXAMPLE_KEY)
    depth = int(rows.groupby("_example").size().max())
    too_deep = [k for k in cfg.full_ks if k > depth]
    if too_deep:
        raise ValueError(f"full_ks: {too_deep} exceed the retrieval depth {depth} of {file}: beyond it every target "
                         "the retriever did not return would count as a miss; retrieve deeper or lower K")
    # the retriever ranked by its own scores, ties against the target as for every reranker (its RANK column
    # breaks ties by item code, which would favour a target tied with the items above it)
    ranks = {retriever: retrieved_ranks(rows[schema.SCORE].to_numpy(), rows[schema.LABEL].to_numpy(),
                                        rows["_example"].to_numpy(), len(examples))}
    for name, scores_file in _pairs("rerank_methods", cfg.rerank_methods):
        ranks[name] = _reranker_ranks(run, name, scores_file, rows, len(examples))
    points, statistics, columns = {}, {}, []
    for name, rank in ranks.items():
        per_example = full_ranking_metrics(rank, cfg.full_ks)
        points[name] = {"examples": len(examples), **{m: float(v.mean()) for m, v in per_example.items()}}
        statistics[name] = mean_statistic(np.column_stack(list(per_example.values())))
        columns = list(per_example)
    methods = _with_uncertainty(points, statistics, columns, pd.factorize(examples[schema.USER])[0], retriever, cfg)
    return {"retriever": retriever, "file": file, "depth": depth, "examples": len(examples), "ks": list(cfg.full_ks),
            "target_retrieved": float(np.isfinite(ranks[retriever]).mean()), "methods": methods}


def is_pointwise(table: pd.DataFrame) -> bool:
    """Explicit labels (`msr data prepare --label_threshold`): every example has one candidate, its target,
    labelled by the user's own rating, and the labels are not all alike."""
    return bool(_negatives(table)[1] == 0 and table[schema.LABEL].nunique() == 2)


def _negatives(table: pd.DataFrame) -> list[int]:
    """The fewest and most sampled negatives an example has."""
    sizes = table.groupby(EXAMPLE_KEY).size() - 1
    return [int(sizes.min()), int(sizes.max())]


@one_writer("evaluate")
def evaluate(cfg: EvaluateConfig) -> dict:
    """Compute and write every method's metrics; return the metrics mapping."""
    cfg.validate()
    if cfg.model_card:
        model_card_path(cfg.model_card)  # a wrong folder fails before any work, not after it
    published = read_published(cfg.published) if cfg.published else None
    run = RunDir(cfg.run_dir)
    run.require(schema.EXAMPLES_FILE, schema.INTERACTIONS_FILE)
    table, names = scored_table(run, cfg)
    if not table.empty and _negatives(table)[0] == 0 and not is_pointwise(table):
        raise ValueError(f"{run.path(schema.EXAMPLES_FILE)}: some {cfg.split} examples have no sampled negatives, so "
                         f"they cannot be ranked: re-run `msr data prepare` with negatives_{cfg.split} >= 1")
    methods, how = sampled_metrics(table, names, cfg)
    out = {"split": cfg.split, "methods": methods, "negatives": _negatives(table), "uncertainty": how}
    if cfg.retrieval:
        out["full_ranking"] = full_ranking(run, cfg)
    if published:
        out["published"] = verdicts(published, methods)
    write_json(run.path(METRICS_FILE), out)
    write_parquet(run.path(EVAL_SCORES_FILE), pa.Table.from_pandas(table, preserve_index=False))
    _plot_roc(run.path(ROC_FILE), table, names)
    run.path(REPORT_FILE).write_text(report(out, cfg.ks), encoding="utf-8")
    if cfg.model_card:
        update_model_card(cfg.model_card, out, cfg.ks, run.root)
    log.info("evaluate: %s", {n: round(r["auc"], 4) for n, r in methods.items()})
    return out


def _plot_roc(path: Path, table: pd.DataFrame, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name in names:
        fpr, tpr = roc_curve(table[name].to_numpy(), table[schema.LABEL].to_numpy())
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
