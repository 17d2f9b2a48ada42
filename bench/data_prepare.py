"""Benchmark: `msr data prepare` on a MicroLens-1M-shaped log (1M users, 100k items, 10M interactions).

Writes the log as MicroLens CSVs (not timed), then runs the real CLI in a child process and
reports its wall time and peak RSS. Prints one JSON object on its last line.

    python bench/data_prepare.py                 # full size
    python bench/data_prepare.py --users 100000  # smaller, for a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


def write_log(root: Path, n_users: int, n_items: int, mean_len: float, seed: int) -> int:
    """A MicroLens-layout log: sequence lengths 5 + geometric, Zipf-like item popularity."""
    rng = np.random.default_rng(seed)
    lengths = 5 + rng.geometric(1 / (mean_len - 4), size=n_users)
    users = np.repeat(np.arange(1, n_users + 1), lengths)
    popularity = 1 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=len(users), p=popularity / popularity.sum()) + 1
    stamps = 1_600_000_000_000 + rng.integers(0, 10**10, size=len(users))
    pacsv.write_csv(pa.table({"user": users, "item": items, "timestamp": stamps}), root / "pairs.csv")
    ids = np.arange(1, n_items + 1)
    titles = pa.array([f"Video number {i}" for i in ids])
    pacsv.write_csv(pa.table({"item": ids, "title": titles}), root / "titles.csv")
    return len(users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--mean_len", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        rows = write_log(root, args.users, args.items, args.mean_len, args.seed)
        gen_seconds = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "msr.cli", "data", "prepare", "--run_dir", str(root / "run"),
               "--interactions", str(root / "pairs.csv"), "--items", str(root / "titles.csv"),
               "--user_min", "5", "--item_min", "5"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"prepare failed:\n{done.stderr}")
        peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        stats = json.loads((root / "run" / "data_stats.json").read_text())
    print(json.dumps({
        "bench": "data_prepare", "rows": rows, "seconds": round(seconds, 2),
        "peak_rss_gb": round(peak_rss_gb, 2), "generate_seconds": round(gen_seconds, 2),
        "users_out": stats["users"], "items_out": stats["items"], "interactions_out": stats["interactions"],
        "examples": stats["examples"], "dropped": stats["dropped"],
    }))


if __name__ == "__main__":
    main()
