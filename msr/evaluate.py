"""`msr evaluate`: scored candidates -> metrics per method, side by side with baselines.

Every method is measured on the very same candidates (each example's target and negatives):
the scored tables of `msr score` (the fine-tuned model, the zero-shot base model, ...) or of any
other recommender (`msr graph evaluate`: a generic `score` column instead of `p_yes`) and the
baselines computed here: random (seeded), popularity (interactions of the candidate strictly
before the example's cutoff, over all users: no leakage from the future) and, for the embedded
dataset, the oracle of its true preference model. Writes metrics.json, eval_scores.parquet (every
candidate with every method's score), report.md and roc.png.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from msr import schema
from msr.data.sft import candidates
from msr.metrics import DEFAULT_KS, ranking_metrics, roc_curve
from msr.provenance import one_writer, require_current
from msr.rundir import RunDir, atomic_path, write_json, write_parquet

log = logging.getLogger(__name__)
METRICS_FILE, EVAL_SCORES_FILE, REPORT_FILE, ROC_FILE = "metrics.json", "eval_scores.parquet", "report.md", "roc.png"
BASELINES = ("random", "popularity", "oracle")
_RESERVED = (schema.USER, schema.HISTORY_LEN, schema.CUTOFF_TS, schema.ITEM, schema.LABEL, schema.SCORE)


@dataclass
class EvaluateConfig:
    """What to compare, on which split."""

    run_dir: str = field(metadata={"help": "Run directory."})
    split: str = field(default="test", metadata={"help": "Examples to evaluate."})
    methods: list[str] = field(default_factory=lambda: ["sft=scores.parquet"], metadata={
        "help": "name=file pairs: scored tables inside the run directory, from `msr score` (p_yes) or "
                "`msr graph evaluate` (score)."})
    baselines: list[str] = field(default_factory=lambda: list(BASELINES), metadata={
        "help": f"Any of {', '.join(BASELINES)} (oracle only where truth.json exists)."})
    truth: str | None = field(default=None, metadata={"help": "truth.json of the embedded dataset "
                              "(default: RUN_DIR/raw/truth.json when present)."})
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS), metadata={"help": "Cut-offs K."})
    seed: int = field(default=0, metadata={"help": "Seed of the random baseline."})
    model_card: str | None = field(default=None, metadata={
        "help": "A trained model's directory (adapter or merged): its README.md model card gets this "
                "evaluation's table, replacing the one an earlier evaluation of the same split wrote."})

    def validate(self) -> None:
        """Refuse unknown baselines and method names that would collide in the merged table: a
        method named like a baseline or a key column would be overwritten or break the merge."""
        unknown = set(self.baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"baselines: {sorted(unknown)} not among {', '.join(BASELINES)}")
        names: set[str] = set()
        for method in self.methods:
            name = method.split("=", 1)[0]
            if "=" not in method or not name:
                raise ValueError(f"methods: {method!r} is not name=file")
            if name in BASELINES + _RESERVED:
                raise ValueError(f"methods: {name!r} is taken by a baseline or a column "
                                 f"({', '.join(BASELINES + _RESERVED)}): give the method another name")
            if name in names:
                raise ValueError(f"methods: {name!r} is given twice: give each method its own name")
            names.add(name)


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


def _oracle(truth_path: Path, table: pd.DataFrame) -> np.ndarray:
    from msr.data.synthetic import load_truth, oracle_score

    truth = load_truth(truth_path)
    return np.array([oracle_score(truth, u, i, ts) for u, i, ts in
                     zip(table[schema.USER], table[schema.ITEM], table[schema.CUTOFF_TS])])


def read_scores(path: Path, key: list[str]) -> pd.DataFrame:
    """A scored table's key columns and its score, renamed SCORE: `p_yes` from `msr score`, or the
    generic `score` column any other recommender writes (exactly one of the two). Each key must occur
    once: a duplicate would multiply candidate rows in the merge."""
    present = [c for c in (schema.P_YES, schema.SCORE) if c in pq.read_schema(path).names]
    if len(present) != 1:
        raise ValueError(f"{path}: expected one score column, {schema.P_YES} or {schema.SCORE}; found {present or 'none'}")
    scored = pd.read_parquet(path, columns=key + present).rename(columns={present[0]: schema.SCORE})
    duplicated = scored.duplicated(key, keep=False)
    if duplicated.any():
        first = scored[duplicated].iloc[0]
        raise ValueError(f"{path}: {int(duplicated.sum())} rows share their ({', '.join(key)}) with another row "
                         f"(the first: {', '.join(str(first[c]) for c in key)}): one score per candidate; "
                         "was the file appended to twice? Score the split again into a fresh file")
    return scored


def check_producer(run: RunDir, file: str) -> None:
    """Refuse a score table whose producing stage is stale (its examples, summaries, prompts or model
    changed since it scored, or the table itself was edited), naming the command that redoes it. A table
    no stage of this run wrote (an external baseline) cannot be checked, and is said to be so."""
    producers = [name for name, entry in run.manifest()["stages"].items() if file in entry.get("outputs", {})]
    if not producers:
        log.warning("%s was not written by a stage of %s: msr cannot tell whether it is current", file, run.root)
        return
    for name in producers:
        command = ("msr graph evaluate" if name.startswith("graph.") else
                   f"msr score --output {file} (with the model and adapter it scored)")
        require_current(run, name, command)


@one_writer("evaluate")
def evaluate(cfg: EvaluateConfig) -> dict:
    """Compute and write every method's metrics; return the metrics mapping."""
    cfg.validate()
    if cfg.model_card:
        model_card_path(cfg.model_card)  # a wrong folder fails before any work, not after it
    run = RunDir(cfg.run_dir)
    run.require(schema.EXAMPLES_FILE, schema.INTERACTIONS_FILE)
    table = candidate_table(run, cfg.split)
    key = [schema.USER, schema.HISTORY_LEN, schema.ITEM]
    for method in cfg.methods:
        name, file = method.split("=", 1)
        run.require(file)
        check_producer(run, file)
        scored = read_scores(run.path(file), key).rename(columns={schema.SCORE: name})
        table = table.merge(scored, on=key, how="left")
        missing = int(table[name].isna().sum())
        if missing:
            raise ValueError(f"{file} lacks scores for {missing} of {len(table)} {cfg.split} candidates: "
                             f"run `msr score --split {cfg.split} --output {file}` (or `msr graph evaluate`) "
                             "to completion")
    if "random" in cfg.baselines:
        table["random"] = np.random.default_rng(cfg.seed).random(len(table))
    if "popularity" in cfg.baselines:
        table["popularity"] = popularity_before(run, table)
    truth = Path(cfg.truth) if cfg.truth else run.path("raw/truth.json")
    if cfg.truth and not truth.exists():
        raise FileNotFoundError(f"truth file not found: {truth}")
    if "oracle" in cfg.baselines and truth.exists():
        table["oracle"] = _oracle(truth, table)
    names = [m.split("=", 1)[0] for m in cfg.methods] + [b for b in BASELINES if b in table.columns]
    groups = table.groupby([schema.USER, schema.HISTORY_LEN], sort=True)
    results = {n: ranking_metrics(((g[n].to_numpy(), g[schema.LABEL].to_numpy()) for _, g in groups), cfg.ks)
               for n in names}
    out = {"split": cfg.split, "methods": results}
    write_json(run.path(METRICS_FILE), out)
    write_parquet(run.path(EVAL_SCORES_FILE), pa.Table.from_pandas(table, preserve_index=False))
    _plot_roc(run.path(ROC_FILE), table, names)
    run.path(REPORT_FILE).write_text(report(out, cfg.ks), encoding="utf-8")
    if cfg.model_card:
        update_model_card(cfg.model_card, out, cfg.ks, run.root)
    log.info("evaluate: %s", {n: round(r["auc"], 4) for n, r in results.items()})
    return out


def report(metrics: dict, ks: list[int]) -> str:
    """A Markdown table of every method side by side."""
    columns = ["auc", "user_auc"] + [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in ks]
    methods = metrics["methods"]
    users = next(iter(methods.values()))["users"] if methods else 0
    lines = [f"# Evaluation: {metrics['split']} split, {users} users, 1 positive + N negatives each", "",
             "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in methods.items():
        lines.append(f"| {name} | " + " | ".join(f"{values[c]:.4f}" for c in columns) + " |")
    lines += ["", ("AUC pools all candidate pairs; user_auc averages each user's AUC. Ties rank the positive below "
                   "the negatives it ties with. ROC curves: roc.png."), ""]
    return "\n".join(lines)


def model_card_path(model_dir: str | Path) -> Path:
    """The model card of a trained model's folder, which must exist (recipes/sft.py writes it)."""
    card = Path(model_dir) / schema.MODEL_CARD_FILE
    if not card.is_file():
        raise FileNotFoundError(f"{card} not found: model_card must be a folder written by recipes/sft.py "
                                "(or msr quickstart)")
    return card


def update_model_card(model_dir: str | Path, metrics: dict, ks: list[int], run_dir: str | Path = "") -> Path:
    """Put this split's evaluation table into the model card (README.md) of ``model_dir``, between
    markers, so re-evaluating replaces it and the rest of the card stays as training wrote it."""
    card = model_card_path(model_dir)
    begin, end = f"<!-- msr evaluate {metrics['split']} -->", f"<!-- /msr evaluate {metrics['split']} -->"
    source = f"From `msr evaluate` on the run `{run_dir}` (its report.md, metrics.json and roc.png).\n\n" if run_dir else ""
    section = f"{begin}\n## {report(metrics, ks).removeprefix('# ')}{source}{end}\n"
    text = card.read_text(encoding="utf-8")
    start, stop = text.find(begin), text.find(end)
    if (start < 0) != (stop < 0) or stop < start:
        raise ValueError(f"{card}: the markers {begin} ... {end} are incomplete or out of order; repair or "
                         "remove them by hand")
    if start >= 0:
        text = text[:start] + section + text[stop + len(end):].removeprefix("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with atomic_path(card) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return card


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
