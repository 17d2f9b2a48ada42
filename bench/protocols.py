"""A published protocol's baselines over seeds: prepare, train and evaluate SASRec, GRU4Rec and popularity once per
seed from a preset (recipes/movielens/*.yaml; seed 0 in the preset's own run directory), then `msr spread` over the seeds with the preset's published verdicts.
Prints the spread as JSON (and leaves spread.md beside it). Each seed's run is a run directory of its own, so a
re-run resumes: finished stages are skipped.

    python bench/protocols.py --preset recipes/movielens/llara.yaml --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

MODELS = {"sasrec": [], "gru4rec": ["--layers", "1"]}


def msr(*args: str) -> None:
    """One msr command, its output kept out of the JSON; a failure stops the benchmark naming the command."""
    done = subprocess.run([sys.executable, "-m", "msr.cli", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"msr {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    base = yaml.safe_load(Path(args.preset).read_text(encoding="utf-8"))["data prepare"]["run_dir"]
    runs, seconds = [], {}
    for seed in args.seeds:
        run = base if seed == 0 else f"{base}-seed{seed}"  # seed 0 is the preset's own run
        common = ["--config", args.preset, "--run_dir", run, "--seed", str(seed)]
        t0 = time.perf_counter()
        msr("data", "prepare", *common)
        for model in args.models:
            msr("baselines", "train", *common, "--model", model, *MODELS[model])
            msr("baselines", "evaluate", *common, "--model", model, *MODELS[model])
        msr("evaluate", *common, "--methods", *(f"{m}={m}_scores.parquet" for m in args.models),
            "--baselines", "random", "popularity")
        seconds[seed] = round(time.perf_counter() - t0, 1)
        runs.append(run)
    msr("spread", "--runs", *runs, "--out_dir", f"{base}-spread", "--published", args.preset)
    out = json.loads(Path(f"{base}-spread/spread.json").read_text(encoding="utf-8"))
    print(json.dumps({"benchmark": "protocols", "preset": args.preset, "seeds": args.seeds, "seconds_per_seed": seconds,
                      **out}))


if __name__ == "__main__":
    main()
