"""`msr summarize users`: the preference text of every example's history, before its cutoff.

Recurrent mode (the method): the history is folded in chronological blocks of `block_size`
items; block 1 is summarized from scratch, each later block from the previous text plus the new
items (title + item summary). The state after every block boundary, and after each example's
partial last block, is cached under a hash chain: its key covers the previous state's key and
the block's items and item summaries. So a later cutoff of the same user reuses the earlier
blocks, a user who gains one block costs one call, and changing an item summary (hence the item
VLM), a prompt, the user LM's weights/processor files or its dtype/4-bit setting recomputes exactly
the states downstream of it. Direct mode (the ablation) summarizes each
example's whole history in one call.

By construction a state for a cutoff at position h reads only the user's first h interactions:
nothing at or after the target can reach its prompt.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import pyarrow as pa
from tqdm.auto import tqdm

from msr import schema
from msr.data.tables import read_table, refuse_window
from msr.prompts import load_prompt
from msr.provenance import Stage, one_writer
from msr.rundir import JsonlLog, RunDir, digest, write_parquet
from msr.summarize.backends import Backend, Request
from msr.summarize.config import SummarizeConfig, make_backend
from msr.summarize.items import load_item_summaries

log = logging.getLogger(__name__)
STAGE = "summarize.users"


@dataclass(frozen=True)
class State:
    """The preference text of `user` after their first `prefix_len` interactions."""

    user: str
    prefix_len: int
    key: str
    prev: State | None
    block: tuple[str, ...]  # item ids folded in by this state (the whole history in direct mode)


def format_items(ids: tuple[str, ...], titles: dict[str, str], summaries: dict[str, str], start: int = 1) -> str:
    """The block as the prompts show it: one `N. title: item summary` line per item, numbered
    by position in the history."""
    lines = []
    for n, item_id in enumerate(ids, start):
        summary = summaries[item_id]
        lines.append(f"{n}. {titles[item_id]}: {summary}" if summary else f"{n}. {titles[item_id]}")
    return "\n".join(lines)


def plan_states(sequences: dict[str, list[str]], cutoffs: dict[str, list[int]], item_keys: dict[str, str],
                root: str, block_size: int, mode: str) -> dict[tuple[str, int], State]:
    """Every state the cutoffs need, keyed by (user, prefix length); parents before children."""
    states: dict[tuple[str, int], State] = {}
    for user, hs in cutoffs.items():
        seq = sequences[user]
        top = max(hs)
        base = State(user, 0, digest(root, user), None, ())
        if mode == "direct":
            prefixes = sorted(set(h for h in hs if h > 0))
        else:
            prefixes = sorted(set(range(block_size, top + 1, block_size)) | {h for h in hs if h > 0})
        for p in prefixes:
            start = 0 if mode == "direct" else ((p - 1) // block_size) * block_size
            prev = states[(user, start)] if start else base
            block = tuple(seq[start:p])
            key = digest(prev.key, block, [item_keys[i] for i in block])
            states[(user, p)] = State(user, p, key, prev if start else None, block)
    return states


def _depth(state: State) -> int:
    return 0 if state.prev is None else 1 + _depth(state.prev)


def history_cutoffs(run: RunDir) -> tuple[dict[str, list[str]], dict[str, list[int]]]:
    """Each user's item sequence (chronological) and the sorted history lengths of their examples."""
    run.require(schema.INTERACTIONS_FILE, schema.EXAMPLES_FILE)
    inter = read_table(run, schema.INTERACTIONS_FILE, [schema.USER, schema.ITEM])
    examples = read_table(run, schema.EXAMPLES_FILE, [schema.USER, schema.HISTORY_LEN])
    sequences = inter.groupby(schema.USER, sort=False)[schema.ITEM].agg(list).to_dict()
    cutoffs = examples.groupby(schema.USER)[schema.HISTORY_LEN].agg(lambda s: sorted(set(s))).to_dict()
    return sequences, cutoffs


@one_writer("summarize.users")
def summarize_users(cfg: SummarizeConfig, backend: Backend | None = None) -> dict:
    """Compute every missing state, then write the summary of every example's history."""
    cfg.validate()
    run = RunDir(cfg.run_dir)
    names = ("user_summary_direct",) if cfg.mode == "direct" else ("user_summary_first", "user_summary_update")
    prompts = {name: load_prompt(name, cfg.prompt_dir) for name in names}  # checked before anything is read
    run.require(schema.EXAMPLES_FILE)
    refuse_window(run, "msr summarize users")
    records = load_item_summaries(run, cfg)
    item_keys = {item: record["key"] for item, record in records.items()}
    summaries = {item: record[schema.SUMMARY] for item, record in records.items()}
    titles_frame = read_table(run, schema.ITEMS_FILE, [schema.ITEM, schema.TITLE])
    titles = dict(zip(titles_frame[schema.ITEM], titles_frame[schema.TITLE]))
    model, settings = cfg.model_for("users"), cfg.settings
    # the user LM's identity and output-changing backend settings (`SummarizeConfig.model_key`) are in the root;
    # the item summaries' keys (which carry the item VLM's) are in every state's key
    root = digest("user", cfg.mode, model, settings.key(), cfg.block_size, [p.hash for p in prompts.values()],
                  cfg.model_key("users"))

    sequences, cutoffs = history_cutoffs(run)
    states = plan_states(sequences, cutoffs, item_keys, root, cfg.block_size, cfg.mode)
    cache = JsonlLog(run.path(schema.USER_STATES_FILE), key="key")
    pending = [s for s in states.values() if s.key not in cache]
    stats = {"users": len(cutoffs), "states": len(states), "cached": len(states) - len(pending), "generated": 0}

    def request(state: State) -> Request:
        start = 1 if state.prev is None else state.prev.prefix_len + 1
        listing = format_items(state.block, titles, summaries, start)
        if cfg.mode == "direct":
            return Request(prompts["user_summary_direct"].render(items=listing))
        if state.prev is None:
            return Request(prompts["user_summary_first"].render(items=listing))
        previous = cache.get(state.prev.key)[schema.SUMMARY]
        return Request(prompts["user_summary_update"].render(previous=previous, items=listing))

    if pending:
        backend = backend or make_backend(cfg, model)
        by_depth: dict[int, list[State]] = {}
        for state in pending:
            by_depth.setdefault(_depth(state), []).append(state)
        with tqdm(total=len(pending), desc="user summaries", unit="state") as bar:
            for depth in sorted(by_depth):
                wave = by_depth[depth]
                requests = [request(s) for s in wave]
                for chunk in backend.batches(requests):
                    batch = [wave[i] for i in chunk]
                    texts = backend.generate([requests[i] for i in chunk], settings)
                    cache.append([{"key": s.key, schema.USER: s.user, "prefix_len": s.prefix_len,
                                   "prev_key": s.prev.key if s.prev else None, "block": list(s.block),
                                   "mode": cfg.mode, schema.SUMMARY: text} for s, text in zip(batch, texts)])
                    stats["generated"] += len(batch)
                    bar.update(len(batch))

    rows = [(user, h, cache.get(states[(user, h)].key)[schema.SUMMARY] if h else "")
            for user, hs in cutoffs.items() for h in hs]
    write_parquet(run.path(schema.USER_SUMMARIES_FILE), pa.table({
        schema.USER: pa.array([r[0] for r in rows], pa.string()),
        schema.HISTORY_LEN: pa.array([r[1] for r in rows], pa.int32()),
        schema.SUMMARY: pa.array([r[2] for r in rows], pa.string())}))
    # the table's provenance: what it read is in `root` (model identity, settings, prompts) and in each state's
    # chained key (items and their summary keys), which the cache checks state by state
    Stage(run, STAGE, dataclasses.asdict(cfg), values={"states": root}, outputs=[schema.USER_SUMMARIES_FILE]).commit()
    log.info("user summaries (%s): %s", cfg.mode, stats)
    return stats
