"""The Markdown of `msr evaluate` (report.md, the printed summary, the model card's section), from metrics.json.

Two sections, never mixed: the sampled table (each example's target among its own 1 + N candidates) and,
when a retrieval table was evaluated, the full-ranking table (the target over the whole catalog, via the
retriever's top K). Each figure shows its bootstrap interval when there is one, and each section ends
with the p-values of its rows against the row it names.
"""

from __future__ import annotations

from pathlib import Path

from msr import schema
from msr.published import published_section
from msr.rundir import atomic_path


def _cell(figures: dict, column: str) -> str:
    """A figure with its interval, `0.6123 [0.5801, 0.6402]`, or alone when there is none."""
    bounds = figures.get("ci", {}).get(column)
    return f"{figures[column]:.4f}" + (f" [{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds else "")


def _p(p: float, resamples: int) -> str:
    """A p-value, or `<= 1/(B+1)` where it is the smallest that B resamples can give."""
    floor = 1 / (resamples + 1)
    return f"<= {floor:.2g}" if p <= floor * (1 + 1e-9) else f"{p:.3f}"


def _table(methods: dict, columns: list[str], cell, label=lambda name: name) -> list[str]:
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    return lines + [f"| {label(name)} | " + " | ".join(cell(figures, c) for c in columns) + " |"
                    for name, figures in methods.items()]


def _uncertainty(methods: dict, columns: list[str], how: dict, reference: str | None, why: str) -> list[str]:
    """The sentence on the intervals, then the p-values against `reference` (`why` says why it is that row)."""
    resamples = how.get("resamples", 0)
    if not resamples:
        return ["No intervals or p-values (resamples 0).", ""]
    lines = [f"[lo, hi]: {how['level']:.0%} percentile bootstrap interval over users ({resamples} resamples of the "
             f"users with replacement, seed {how['seed']}).", ""]
    if reference is None:
        return lines + [f"No p-values: {why}.", ""]
    compared = {name: figures for name, figures in methods.items() if "p_value" in figures}
    lines += [f"### p-values against {reference}", "",
              f"{why}. Two-sided paired bootstrap of each figure's difference from {reference} (the same resampled "
              f"users for both); the smallest p {resamples} resamples can give is 1/{resamples + 1}, written "
              f"{_p(0, resamples)}.", ""]
    return lines + _table(compared, columns, lambda figures, c: _p(figures["p_value"][c], resamples)) + [""]


def _sampled(metrics: dict, ks: list[int]) -> list[str]:
    columns = ["auc", "user_auc"] + [f"{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in ks]
    low, high = metrics.get("negatives", ["N", "N"])
    negatives = f"{low}" if low == high else f"{low} to {high}"
    how = metrics.get("uncertainty", {})
    explicit = how.get("labels") == "explicit"
    if explicit:
        columns = ["auc"]
    reference = how.get("reference")
    among = ", ".join(how.get("reference_among", [])) or "none"
    if reference:
        why = (f"{reference} is the best baseline by {how.get('reference_metric')} among {among} (the oracle is an "
               "upper bound, not a baseline)")
    else:
        why = "no baseline to compare against (random, popularity or compare_to)"
    lines = [f"## Sampled candidates: 1 positive + {negatives} negatives per example", "",
             "Each example's target among its own sampled negatives, the same candidates for every method (not a "
             "ranking over the catalog). AUC pools all candidate pairs; user_auc averages each user's AUC. Ties rank "
             "the positive below the negatives it ties with. ROC curves: roc.png.", ""]
    if explicit:
        lines = ["## Explicit labels: one candidate per example, labelled by the user's own rating", "",
                 "Each example's target, positive when the user rated it above the threshold of `msr data prepare "
                 "--label_threshold`. AUC over every (liked, disliked) pair of the split; ties count one half. ROC "
                 "curves: roc.png.", ""]
    return lines + _table(metrics["methods"], columns, _cell) + [""] + _uncertainty(metrics["methods"], columns, how,
                                                                                     reference, why)


def _full(full: dict, how: dict) -> list[str]:
    columns = [f"{m}@{k}" for k in full["ks"] for m in ("recall", "ndcg")]
    retriever, depth = full["retriever"], full["depth"]
    lines = [f"## Full ranking: {retriever}'s top {depth}, reranked", "",
             f"Each example's target ranked over the whole catalog (its history masked): by the retriever "
             f"{retriever} (`{full['file']}`, its top {depth} items per example), and by each reranker reordering "
             f"those {depth} items. The target is not added to the list: a target outside it is a miss at every K "
             f"(rank > K, adds 0), so no reranker's Recall@K exceeds the share of targets retrieved, "
             f"{full['target_retrieved']:.4f}. Ties rank the target below the items it ties with; Recall@K is the "
             "share of targets in the top K.", ""]
    lines += _table(full["methods"], columns, _cell, lambda n: f"{n} (retriever)" if n == retriever else n) + [""]
    return lines + _uncertainty(full["methods"], columns, how, retriever, f"{retriever} is the retriever")


def report(metrics: dict, ks: list[int]) -> str:
    """Markdown: the sampled table and, when there is one, the full-ranking table, each with its p-values."""
    methods = metrics["methods"]
    full = metrics.get("full_ranking")
    how = metrics.get("uncertainty", {})
    if "examples" in how and how["examples"] != how["users"]:  # several examples per user: say both
        size = f"{how['examples']} examples of {how['users']} users"
    else:
        size = f"{next(iter(methods.values()))['users'] if methods else (full['examples'] if full else 0)} users"
    lines = [f"# Evaluation: {metrics['split']} split, {size}", ""] + _sampled(metrics, ks)
    if full:
        lines += _full(full, metrics.get("uncertainty", {}))
    if metrics.get("published"):
        lines += published_section(metrics["published"])
    return "\n".join(lines)


def model_card_path(model_dir: str | Path) -> Path:
    """The model card of a trained model's folder, which must exist (recipes/sft.py writes it)."""
    card = Path(model_dir) / schema.MODEL_CARD_FILE
    if not card.is_file():
        raise FileNotFoundError(f"{card} not found: model_card must be a folder written by recipes/sft.py "
                                "(or msr quickstart)")
    return card


def update_model_card(model_dir: str | Path, metrics: dict, ks: list[int], run_dir: str | Path = "") -> Path:
    """Put this split's evaluation tables into the model card (README.md) of ``model_dir``, between
    markers and one heading level down, so re-evaluating replaces them and the rest of the card stays as
    training wrote it."""
    card = model_card_path(model_dir)
    begin, end = f"<!-- msr evaluate {metrics['split']} -->", f"<!-- /msr evaluate {metrics['split']} -->"
    source = f"From `msr evaluate` on the run `{run_dir}` (its report.md, metrics.json and roc.png).\n\n" if run_dir else ""
    tables = "\n".join("#" + line if line.startswith("#") else line for line in report(metrics, ks).split("\n"))
    section = f"{begin}\n{tables}\n{source}{end}\n"
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
