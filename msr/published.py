"""A verdict against a paper's figures: is our figure's 95% interval wide enough to contain the published one?

`msr evaluate --published FILE` reads the `published` block of a preset (recipes/movielens/*.yaml):

    published:
      source: LLaRA (Liao et al., SIGIR 2024), Table 2, MovieLens
      rows:
        - {method: sasrec, metric: hr@1, value: 0.3444, test_size: 95, as: SASRec}

Each row names one of our methods (as `msr evaluate` names it), one of our metrics, the paper's value and the
size of the paper's test set; `as` is the paper's own name for the method (optional). A row whose method this
evaluation did not run is listed as "not run". The verdict is "inside" when the published value lies within
our bootstrap interval and "outside" otherwise; with the test-set sizes beside it, a figure of k/95 is read as
the coarse thing it is (one test sequence more or less moves it by 0.0105).
"""

from __future__ import annotations

import math
from pathlib import Path

from msr.config import ConfigError, read_yaml

_KEYS = {"method", "metric", "value", "test_size", "as"}


def read_published(path: str | Path) -> dict:
    """The `published` block of a YAML file: {"source": str, "rows": [...]}, each row checked."""
    data = read_yaml(path)
    block = data.get("published")
    if not isinstance(block, dict) or not isinstance(block.get("rows"), list) or not block["rows"]:
        raise ConfigError(f"{path}: no `published:` block with a list of `rows` (see msr/published.py)")
    rows = []
    for n, row in enumerate(block["rows"], 1):
        if not isinstance(row, dict) or not {"method", "metric", "value", "test_size"} <= set(row) or \
                set(row) - _KEYS:
            raise ConfigError(f"{path}: published row {n} must have method, metric, value, test_size (and "
                              f"optionally as), got {row!r}")
        value, size = row["value"], row["test_size"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"{path}: published row {n}: value must be a finite number and test_size a positive "
                              f"integer, got {value!r}, {size!r}")
        rows.append({"method": str(row["method"]), "metric": str(row["metric"]).lower(), "value": float(value),
                     "test_size": size, "as": str(row.get("as", row["method"]))})
    return {"source": str(block.get("source", path)), "file": str(path), "rows": rows}


def verdicts(published: dict, methods: dict) -> dict:
    """Each published row beside ours: our figure, its interval, our example count, and the verdict."""
    out = []
    for row in published["rows"]:
        ours = methods.get(row["method"])
        entry = dict(row)
        if ours is None:
            entry["verdict"] = "not run"
        elif row["metric"] not in ours:
            raise ValueError(f"{published['file']}: published metric {row['metric']!r} of {row['method']} is not "
                             f"one this evaluation computed ({', '.join(k for k in ours if k not in ('ci', 'p_value'))})")
        else:
            ci = ours.get("ci", {}).get(row["metric"])
            entry.update(ours=ours[row["metric"]], ci=ci, our_size=ours.get("users"))
            entry["verdict"] = "no interval" if ci is None else (
                "inside" if ci[0] <= row["value"] <= ci[1] else "outside")
        out.append(entry)
    return {"source": published["source"], "file": published["file"], "rows": out}


def published_section(block: dict) -> list[str]:
    """The report's table: ours with its interval beside the paper's figure, and the verdict."""
    lines = [f"## Against the published figures: {block['source']}", "",
             "Inside: the published value lies within our 95% interval (a bootstrap over users: few users behind many "
             "examples make it wide). Each figure is read with its test set's size: the paper's, and ours (examples).",
             "",
             "| method (paper's name) | metric | ours [95% interval] | our test size | published | paper's test size "
             "| verdict |", "|---|---|---|---|---|---|---|"]
    for r in block["rows"]:
        if "ours" in r:
            ci = f" [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}]" if r["ci"] else ""
            ours, size = f"{r['ours']:.4f}{ci}", str(r["our_size"])
        else:
            ours, size = "-", "-"
        lines.append(f"| {r['method']} ({r['as']}) | {r['metric']} | {ours} | {size} | {r['value']:.4f} | "
                     f"{r['test_size']} | {r['verdict']} |")
    return lines + [""]
