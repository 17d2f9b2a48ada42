"""`msr spread`: one protocol repeated over seeds, summarised: the spread across seeds beside the interval over users.

A bootstrap interval over users says how much a figure would move with other users of the same population; it says
nothing of the seed that drew the split, the candidates, the few-shot subset and the initial weights. Run the
protocol once per seed into its own run directory (recipes/movielens/README.md gives the loop), evaluate each, and
this reads their metrics.json: per method and metric, the mean, the standard deviation and the range across seeds
and the mean width of the per-seed 95% intervals. With `--published`, each published figure gets its verdict in
every seed ("inside in 3 of 5"). Writes spread.json and spread.md in `--out_dir`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msr.published import read_published, verdicts
from msr.rundir import write_json

SPREAD_JSON, SPREAD_MD = "spread.json", "spread.md"


@dataclass
class SpreadConfig:
    """Which evaluated runs are the seeds of one protocol."""

    runs: list[str] = field(metadata={"help": "Run directories, one per seed, each evaluated by `msr evaluate`."})
    out_dir: str = field(metadata={"help": "Where spread.json and spread.md go."})
    published: str | None = field(default=None, metadata={"help": "A preset with a `published:` block: each "
                                  "figure's verdict in every seed."})

    def validate(self) -> None:
        if len(self.runs) < 2:
            raise ValueError("runs: give at least two run directories (one per seed) to measure a spread")


def _metrics(run: str) -> dict:
    path = Path(run) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `msr evaluate --run_dir {run}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def spread(cfg: SpreadConfig) -> dict:
    """The spread of every figure the runs share, and the published verdicts per seed."""
    cfg.validate()
    runs = [_metrics(r) for r in cfg.runs]
    splits = {m["split"] for m in runs}
    if len(splits) > 1:
        raise ValueError(f"runs: they evaluated different splits ({', '.join(sorted(splits))}); evaluate one split")
    methods = sorted(set.intersection(*(set(m["methods"]) for m in runs)))
    out: dict = {"runs": cfg.runs, "split": splits.pop(), "methods": {}}
    for name in methods:
        figures = [m["methods"][name] for m in runs]
        shared = [k for k, v in figures[0].items() if isinstance(v, float) and all(k in f for f in figures)]
        out["methods"][name] = {}
        for metric in shared:
            values = np.array([f[metric] for f in figures])
            widths = [f["ci"][metric][1] - f["ci"][metric][0] for f in figures if metric in f.get("ci", {})]
            out["methods"][name][metric] = {
                "mean": float(values.mean()), "sd": float(values.std(ddof=1)), "min": float(values.min()),
                "max": float(values.max()), "per_seed": values.tolist(),
                "mean_interval_width": float(np.mean(widths)) if widths else None}
    if cfg.published:
        published = read_published(cfg.published)
        per_seed = [verdicts(published, m["methods"])["rows"] for m in runs]
        out["published"] = [dict(row, inside=sum(s[i]["verdict"] == "inside" for s in per_seed), seeds=len(runs),
                                 verdicts=[s[i]["verdict"] for s in per_seed])
                            for i, row in enumerate(published["rows"])]
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    write_json(Path(cfg.out_dir) / SPREAD_JSON, out)
    (Path(cfg.out_dir) / SPREAD_MD).write_text(spread_report(out), encoding="utf-8")
    return out


def spread_report(out: dict) -> str:
    """Markdown: per method and metric, mean and sd across seeds, their range, and the interval over users."""
    n = len(out["runs"])
    lines = [f"# Spread over {n} seeds: {out['split']} split", "",
             "Across seeds: mean +- standard deviation, and the range. Over users: the mean width of the seeds' 95% "
             "bootstrap intervals. A spread across seeds near the interval's width means the seed matters as much "
             "as the users do.", "", "| method | metric | mean +- sd across seeds | range | 95% interval width over "
             "users |", "|---|---|---|---|---|"]
    for name, metrics in out["methods"].items():
        for metric, s in metrics.items():
            width = f"{s['mean_interval_width']:.4f}" if s["mean_interval_width"] is not None else "-"
            lines.append(f"| {name} | {metric} | {s['mean']:.4f} +- {s['sd']:.4f} | [{s['min']:.4f}, {s['max']:.4f}] "
                         f"| {width} |")
    if out.get("published"):
        lines += ["", "| method (paper's name) | metric | published | inside our interval in |", "|---|---|---|---|"]
        lines += [f"| {r['method']} ({r['as']}) | {r['metric']} | {r['value']:.4f} | "
                  + (f"{r['inside']} of {r['seeds']} seeds |" if "not run" not in r["verdicts"] else "not run |")
                  for r in out["published"]]
    return "\n".join(lines) + "\n"
