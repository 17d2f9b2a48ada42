"""Benchmark: how much the quickstart's figures move with the seed and the CPU thread count.

Runs `msr quickstart` (reduced size by default: the six runs take ~23 minutes on 2 cores) for
every seed x thread count, each in its own process and run directory (torch reads OMP_NUM_THREADS at
start), and prints, per method, the mean, min and max of its test AUC and NDCG@10 over the runs, plus
every run's figures. One seed's runs differ only in the thread count: whatever moves there is float
reduction order amplified by training, not data.

    python bench/quickstart_spread.py                                # 3 seeds x 1 and 2 threads
    python bench/quickstart_spread.py --seeds 0 --threads 2 --num_users 120   # one quick run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METRICS = ("auc", "ndcg@10")


def run_once(root: Path, seed: int, threads: int, args: argparse.Namespace) -> dict:
    """One quickstart in a fresh process and run directory; its test metrics per method and its time."""
    run_dir = root / f"seed{seed}-threads{threads}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "msr.cli", "quickstart", "--run_dir", str(run_dir), "--seed", str(seed),
               "--num_users", str(args.num_users), "--num_items", str(args.num_items), "--epochs", str(args.epochs)]
    start = time.perf_counter()
    with (root / f"{run_dir.name}.log").open("w") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    methods = json.loads((run_dir / "metrics.json").read_text())["methods"]
    return {"seed": seed, "threads": threads, "seconds": round(seconds, 1),
            "methods": {name: {m: round(values[m], 4) for m in METRICS if m in values}
                        for name, values in methods.items()}}


def spread(runs: list[dict]) -> dict:
    """Per method and metric: mean, min and max over the runs."""
    names = list(runs[0]["methods"])
    out: dict = {}
    for name in names:
        out[name] = {}
        for metric in METRICS:
            values = np.array([r["methods"][name][metric] for r in runs if metric in r["methods"].get(name, {})])
            if len(values):
                out[name][metric] = {"mean": round(float(values.mean()), 4), "min": round(float(values.min()), 4),
                                     "max": round(float(values.max()), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num_users", type=int, default=150)
    parser.add_argument("--num_items", type=int, default=120)
    parser.add_argument("--epochs", type=float, default=9.0)
    parser.add_argument("--keep", default=None, help="Keep the run directories and logs here (default: a temp dir).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="msr-spread-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        runs = [run_once(root, seed, threads, args) for seed in args.seeds for threads in args.threads]
        print(json.dumps({"benchmark": "quickstart_spread", "num_users": args.num_users, "num_items": args.num_items,
                          "epochs": args.epochs, "seeds": args.seeds, "threads": args.threads,
                          "seconds": round(time.perf_counter() - start, 1), "spread": spread(runs), "runs": runs}))


if __name__ == "__main__":
    main()
