"""Benchmark: `msr summarize` on CPU: batched generation, and the model calls the caches save.

On the embedded dataset, offline:

1. batched_speedup: the same N user-summary prompts (msr's own templates filled with titles from
   the embedded dataset, ~85-190 tokens) generated greedily one prompt per call, then
   all prompts in one call, which `TransformersBackend` cuts into batches of `--batch_size`
   prompts of similar length (left padding, a static cache), as msr's summarizers send them, through `TransformersBackend` loading a
   random-weight Llama of ~21M parameters saved to a temp dir (the real `from_pretrained` path).
   One warm-up, then `--repeats` interleaved rounds; the median times are reported, with the
   fraction of prompts whose batched text equals the one-at-a-time text.
2. rerun_model_calls: `summarize_items` + `summarize_users` (recurrent) with msr's tiny VLM / LM,
   then both again with fresh backends: a re-run makes no model call.
3. append_block_model_calls: K users whose largest cutoff is on a block boundary gain
   `block_size` new interactions and a test example at that cutoff + `block_size` (one new
   block, whose parent state is cached); `summarize_users` again must make one call per user.

Prints one JSON object on its last line.

    python bench/summarize.py
    python bench/summarize.py --prompts 64 --batch_size 32   # more prompts, a larger batch
    python bench/summarize.py --threads 1                    # e.g. to compare thread counts
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from common import add_model_arguments, matmul_ms
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.utils import logging as hf_logging

from msr import schema
from msr.data.prepare import PrepareConfig, prepare
from msr.data.synthetic import (
    CATEGORIES,
    COLOURS,
    COVERS_DIR,
    PAIRS_FILE,
    PATTERNS,
    TITLES_FILE,
    SynthConfig,
    generate,
    load_truth,
)
from msr.prompts import load_prompt
from msr.rundir import JsonlLog, RunDir
from msr.summarize.backends import GenerationSettings, Request, TransformersBackend
from msr.summarize.config import SummarizeConfig
from msr.summarize.items import item_keys, summarize_items
from msr.summarize.users import (
    format_items,
    history_cutoffs,
    plan_states,
    summarize_users,
)
from msr.tiny import build_tiny_lm, build_tiny_vlm, train_tokenizer

USER_PROMPTS = ("user_summary_first", "user_summary_update")


# --------------------------------------------------------------------------- data


def make_run(root: Path, users: int, items: int, seed: int) -> tuple[Path, Path]:
    """The embedded dataset, generated and prepared; returns (raw dir, run dir)."""
    raw = generate(SynthConfig(out_dir=str(root / "raw"), num_users=users, num_items=items, seed=seed))
    run_dir = root / "run"
    prepare(PrepareConfig(run_dir=str(run_dir), interactions=str(raw / PAIRS_FILE), items=str(raw / TITLES_FILE),
                          image_dir=str(raw / COVERS_DIR), seed=seed))
    return raw, run_dir


def item_descriptions(raw: Path) -> dict[str, str]:
    """item id -> the kind of line a VLM would write about it (from the generator's truth)."""
    colours = tuple(COLOURS)
    out = {}
    for item, a in load_truth(raw).items.items():
        colour = colours[a.colour]
        article = "an" if colour[0] in "aeiou" else "a"
        out[str(item)] = f"{article} {colour} {CATEGORIES[a.category]} with a {PATTERNS[a.pattern]} pattern"
    return out


# --------------------------------------------------------------------------- 1. batched speedup


def benchmark_prompts(run_dir: Path, descriptions: dict[str, str], n: int, seed: int) -> list[str]:
    """N user-summary prompts as `summarize users` renders them: first blocks and updates of 1-3 items
    (a full block, or an example's partial last block), updates with a previous preference text of
    one to three sentences, so that lengths vary and padding matters."""
    rng = np.random.default_rng(seed)
    items = pd.read_parquet(run_dir / schema.ITEMS_FILE, columns=[schema.ITEM, schema.TITLE])
    titles = dict(zip(items[schema.ITEM], items[schema.TITLE]))
    inter = pd.read_parquet(run_dir / schema.INTERACTIONS_FILE, columns=[schema.USER, schema.ITEM])
    sequences = list(inter.groupby(schema.USER, sort=True)[schema.ITEM].agg(list).values)
    first, update = (load_prompt(name) for name in USER_PROMPTS)
    prompts = []
    for k in range(n):
        seq = sequences[k % len(sequences)]
        size = int(rng.integers(1, 4))
        if k % 4 == 0:  # the first block of a history
            prompts.append(first.render(items=format_items(tuple(seq[:size]), titles, descriptions)))
            continue
        start = 3 * int(rng.integers(1, (len(seq) - size) // 3 + 1))
        liked = [descriptions[i].split(" with ")[0].split(" ", 1)[1] for i in seq[start - 3:start]]
        sentences = [f"The user likes {liked[0]}s and {liked[1]}s.",
                     f"They keep coming back to {liked[2]}s and bold colours.",
                     "Lately they have picked more patterned items."][:int(rng.integers(1, 4))]
        listing = format_items(tuple(seq[start:start + size]), titles, descriptions, start + 1)
        prompts.append(update.render(previous=" ".join(sentences), items=listing))
    return prompts


def build_text_model(out_dir: Path, texts: list[str], hidden: int, layers: int, intermediate: int, heads: int,
                     seed: int) -> int:
    """A random-weight Llama with msr's tiny text tokenizer, saved for `from_pretrained`; returns its size."""
    tokenizer = train_tokenizer(texts, "text")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return sum(p.numel() for p in model.parameters())




def batched_speedup(root: Path, run_dir: Path, descriptions: dict[str, str], args: argparse.Namespace) -> dict:
    items = pd.read_parquet(run_dir / schema.ITEMS_FILE, columns=[schema.TITLE])
    # the tokenizer also learns the prompts' wording, so a prompt takes about as many tokens as with a
    # real LLM's tokenizer (a 1024-token BPE that never saw it splits most of its words into letters)
    texts = (items[schema.TITLE].tolist() + sorted(set(descriptions.values()))
             + [load_prompt(name).text for name in USER_PROMPTS])
    model_dir = root / "lm"
    params = build_text_model(model_dir, texts, args.hidden, args.layers, args.intermediate, args.heads, args.seed)
    backend = TransformersBackend(str(model_dir), batch_size=args.batch_size, dtype="float32", device="cpu")
    requests = [Request(p) for p in benchmark_prompts(run_dir, descriptions, args.prompts, args.seed)]
    tokenizer = backend.loaded.tokenizer
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": r.prompt}], add_generation_prompt=True,
                                           tokenize=False) for r in requests]
    lengths = [len(ids) for ids in tokenizer(chats, add_special_tokens=False)["input_ids"]]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=False)

    probe_before = matmul_ms()
    backend.generate(requests[:args.batch_size], settings)  # warm-up: first-call allocations
    single_s, batched_s, single_texts, batched_texts = [], [], [], []
    for _ in range(args.repeats):  # interleaved, so that a slow spell of the machine hits both
        t0 = time.perf_counter()
        single_texts.append([backend.generate([r], settings)[0] for r in requests])
        single_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batched_texts.append(backend.generate(requests, settings))
        batched_s.append(time.perf_counter() - t0)
    probe_after = matmul_ms()
    single, batched = statistics.median(single_s), statistics.median(batched_s)
    same = [a == b for a, b in zip(single_texts[0], batched_texts[0])]
    return {"params": params, "prompts": len(requests), "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
            "prompt_tokens": {"min": min(lengths), "mean": round(float(np.mean(lengths)), 1), "max": max(lengths)},
            "one_at_a_time_seconds": round(single, 2), "batched_seconds": round(batched, 2),
            "batched_speedup": round(single / batched, 2),
            "outputs_identical": round(sum(same) / len(same), 3),
            "repeats_reproduce": (all(t == single_texts[0] for t in single_texts)
                                  and all(t == batched_texts[0] for t in batched_texts)),
            "all_seconds": {"one_at_a_time": [round(s, 2) for s in single_s],
                            "batched": [round(s, 2) for s in batched_s]},
            "matmul_probe_ms": [probe_before, probe_after],
            "_differing": [(r.prompt, a, b) for r, a, b, ok in zip(requests, single_texts[0], batched_texts[0], same)
                           if not ok]}


# --------------------------------------------------------------------------- 2./3. cache


def append_one_block(run_dir: Path, k: int, block: int, negatives: int, seed: int) -> dict[str, int]:
    """Give `k` users whose largest cutoff h is a multiple of `block` (so the state at h is cached and
    is the parent of the state at h + block) `block` new interactions, later than their last, of items
    they have not seen, and a test example whose target is the last of them: cutoff h + block. The
    schema and the sort order of interactions.parquet and examples.parquet are kept.
    Returns user -> new cutoff."""
    rng = np.random.default_rng(seed)
    inter = pq.read_table(run_dir / schema.INTERACTIONS_FILE)
    examples = pq.read_table(run_dir / schema.EXAMPLES_FILE)
    all_items = pq.read_table(run_dir / schema.ITEMS_FILE, columns=[schema.ITEM])[schema.ITEM].to_pylist()
    frame = inter.to_pandas()
    top = examples.to_pandas().groupby(schema.USER)[schema.HISTORY_LEN].max()
    eligible = sorted(u for u, h in top.items() if h > 0 and h % block == 0)
    if len(eligible) < k:
        raise SystemExit(f"only {len(eligible)} users have a largest cutoff on a block boundary; "
                         f"lower --append_users or raise --users")
    chosen = sorted(str(u) for u in rng.choice(eligible, size=k, replace=False))
    new_inter, new_examples, cutoffs = [], [], {}
    for user in chosen:
        rows = frame[frame[schema.USER] == user]
        length, last_ts = len(rows), int(rows[schema.TIMESTAMP].max())
        if int(rows[schema.POSITION].max()) != length - 1 or int(top[user]) != length - 1:
            raise RuntimeError(f"user {user}: the test target is not the last interaction")
        unseen = [i for i in all_items if i not in set(rows[schema.ITEM])]
        added = [str(i) for i in rng.choice(unseen, size=block, replace=False)]
        stamps = [last_ts + 3_600_000 * (j + 1) for j in range(block)]  # an hour apart, after the last
        new_inter += [{schema.USER: user, schema.ITEM: item, schema.TIMESTAMP: ts, schema.POSITION: length + j}
                      for j, (item, ts) in enumerate(zip(added, stamps))]
        cutoffs[user] = int(top[user]) + block  # == length + block - 1, the position of the last new item
        pool = [i for i in unseen if i not in added]
        new_examples.append({schema.USER: user, schema.SPLIT: schema.TEST, schema.TARGET: added[-1],
                             schema.HISTORY_LEN: cutoffs[user], schema.CUTOFF_TS: stamps[-1],
                             schema.NEGATIVES: [str(i) for i in rng.choice(pool, size=min(negatives, len(pool)),
                                                                           replace=False)]})
    # sorted by user, then position (= time, then item id within a user), as prepare writes them
    inter = pa.concat_tables([inter, pa.Table.from_pylist(new_inter, schema=inter.schema)]).sort_by(
        [(schema.USER, "ascending"), (schema.POSITION, "ascending")])
    examples = pa.concat_tables([examples, pa.Table.from_pylist(new_examples, schema=examples.schema)]).sort_by(
        [(schema.USER, "ascending"), (schema.HISTORY_LEN, "ascending")])
    pq.write_table(inter, run_dir / schema.INTERACTIONS_FILE)
    pq.write_table(examples, run_dir / schema.EXAMPLES_FILE)
    return cutoffs


def planned_states(cfg: SummarizeConfig) -> set[tuple[str, int, str]]:
    """(user, prefix length, key) of every state the run's cutoffs need, from the summarizer's own
    plan. The chain's root is a constant here: which states are new depends only on the chain."""
    run = RunDir(cfg.run_dir)
    sequences, cutoffs = history_cutoffs(run)
    states = plan_states(sequences, cutoffs, item_keys(run, cfg), "bench", cfg.block_size, cfg.mode)
    return {(s.user, s.prefix_len, s.key) for s in states.values()}


def cache_calls(root: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    texts = pd.read_parquet(run_dir / schema.ITEMS_FILE, columns=[schema.TITLE])[schema.TITLE].tolist()
    vlm = build_tiny_vlm(root / "tiny_vlm", "llava", texts, args.seed)
    lm = build_tiny_lm(root / "tiny_lm", texts, args.seed)
    cfg = SummarizeConfig(run_dir=str(run_dir), item_model=str(vlm), user_model=str(lm), mode="recurrent",
                          block_size=args.block_size, batch_size=8, max_new_tokens=args.tiny_new_tokens,
                          dtype="float32", device="cpu")

    def backend(model: Path) -> TransformersBackend:
        return TransformersBackend(str(model), cfg.batch_size, cfg.dtype, cfg.device)

    def run_both() -> tuple[int, int, dict]:
        items, users = backend(vlm), backend(lm)
        summarize_items(cfg, items)
        user_stats = summarize_users(cfg, users)
        return items.calls, users.calls, user_stats

    t0 = time.perf_counter()
    first_items, first_users, user_stats = run_both()
    first_seconds = time.perf_counter() - t0
    rerun_items, rerun_users, _ = run_both()

    before = planned_states(cfg)
    cached_before = JsonlLog(run_dir / schema.USER_STATES_FILE, key="key")
    cutoffs = append_one_block(run_dir, args.append_users, args.block_size, args.negatives, args.seed)
    new_planned = sorted((user, h) for user, h, _ in planned_states(cfg) - before)
    users = backend(lm)
    summarize_users(cfg, users)
    # what was actually generated: one state per chosen user, at its new cutoff, chained onto a cached state
    fresh = [r for key, r in JsonlLog(run_dir / schema.USER_STATES_FILE, key="key").records.items()
             if key not in cached_before]
    fresh_ok = (sorted((r[schema.USER], r["prefix_len"]) for r in fresh) == sorted(cutoffs.items())
                and all(r["prev_key"] in cached_before for r in fresh))
    summaries = pd.read_parquet(run_dir / schema.USER_SUMMARIES_FILE)
    return {"first_run_model_calls": {"items": first_items, "users": first_users},
            "first_run_seconds": round(first_seconds, 2), "user_states": user_stats["states"],
            "rerun_model_calls": rerun_items + rerun_users,
            "users_gained_block": len(cutoffs), "planned_new_states": len(new_planned),
            "planned_new_states_are_the_new_cutoffs": new_planned == sorted(cutoffs.items()),
            "append_block_model_calls": users.calls, "new_states_chain_onto_cached": fresh_ok,
            "user_summary_rows": len(summaries)}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=64,
                        help="msr's own default is 200; batching speeds up decoding, not the prompt's forward")
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds (median reported).")
    add_model_arguments(parser, vocab_size=False)
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--block_size", type=int, default=3)
    parser.add_argument("--append_users", type=int, default=10)
    parser.add_argument("--negatives", type=int, default=20, help="Negatives of each appended test example.")
    parser.add_argument("--tiny_new_tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", action="store_true", help="Print the prompts whose two outputs differ.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw, run_dir = make_run(root, args.users, args.items, args.seed)
        speed = batched_speedup(root, run_dir, item_descriptions(raw), args)
        differing = speed.pop("_differing")
        if args.show:
            for prompt, single, batched in differing:
                print(json.dumps({"prompt": prompt, "one_at_a_time": single, "batched": batched}))
        cache = cache_calls(root, run_dir, args)
    print(json.dumps({"bench": "summarize", "threads": args.threads, **speed, **cache,
                      "seconds": round(time.perf_counter() - start, 2)}))


if __name__ == "__main__":
    main()
