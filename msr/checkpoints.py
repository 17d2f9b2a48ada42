"""Training checkpoints: which `checkpoint-N` folders are complete enough to resume from.

The Trainer writes a checkpoint's weights, then its optimizer, scheduler and RNG states, and
`trainer_state.json` last (not atomically): a run killed while saving leaves a folder that
`get_last_checkpoint` would pick and resuming would fail on, or silently restart the optimizer from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from transformers.trainer import (
    FSDP_MODEL_NAME,
    OPTIMIZER_NAME,
    OPTIMIZER_NAME_BIN,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

log = logging.getLogger(__name__)
INCOMPLETE_PREFIX = "incomplete-"  # an incomplete checkpoint-N is moved aside to incomplete-checkpoint-N

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")  # as transformers' get_last_checkpoint
_WEIGHTS = {SAFE_WEIGHTS_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME,
            ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME}


def _readable_state(path: Path) -> bool:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or truncated (the Trainer does not write it atomically)
        return False
    return isinstance(state, dict) and isinstance(state.get("global_step"), int)


def checkpoint_gaps(path: str | Path) -> list[str]:
    """What a checkpoint folder lacks for resuming (empty: it is complete). See last_complete_checkpoint."""
    path = Path(path)
    try:
        names = set(os.listdir(path))
    except OSError:
        return ["the folder itself"]
    folders = {n for n in names if (path / n).is_dir()}
    deepspeed = any(n.startswith("global_step") for n in folders)  # DeepSpeed keeps its states there
    gaps = [] if _readable_state(path / TRAINER_STATE_NAME) else [f"a readable {TRAINER_STATE_NAME}"]
    adapters = any((path / n / w).is_file() for n in folders for w in (ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME))
    if not (names & _WEIGHTS or adapters or deepspeed or any(FSDP_MODEL_NAME in n for n in names)):
        gaps.append("model or adapter weights")
    if not ({OPTIMIZER_NAME, OPTIMIZER_NAME_BIN} & names or deepspeed
            or any(OPTIMIZER_NAME_BIN.split(".")[0] in n for n in folders)):  # FSDP's sharded optimizer_0
        gaps.append(OPTIMIZER_NAME)
    if SCHEDULER_NAME not in names and not deepspeed:
        gaps.append(SCHEDULER_NAME)
    return gaps


def _checkpoints(out_dir: str | Path) -> list[Path]:
    """The checkpoint-N folders in `out_dir`, newest (highest N) first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), out / n) for n in os.listdir(out) if (m := _CHECKPOINT.match(n)) and (out / n).is_dir()]
    return [path for _, path in sorted(found, reverse=True)]


def last_complete_checkpoint(out_dir: str | Path) -> str | None:
    """The newest checkpoint in `out_dir` that can be resumed, or None.

    A run killed while saving leaves its newest `checkpoint-N` half written, and transformers'
    `get_last_checkpoint` would still pick it (resuming then fails with "Can't find a valid
    checkpoint", or worse, silently starts a fresh optimizer). Trainer._save_checkpoint writes the
    weights, then optimizer.pt and scheduler.pt (and scaler, RNG states), and trainer_state.json
    LAST, not atomically; resuming needs the weights (`_load_from_checkpoint`), trainer_state.json
    (the step, the log history), the optimizer and the scheduler (a fresh scheduler restarts the
    learning-rate schedule). So a checkpoint is complete when trainer_state.json parses and the
    weights, optimizer and scheduler files are there (DeepSpeed keeps the latter inside its
    global_step* folder, FSDP may shard them into folders). Incomplete ones are skipped, with a
    warning; `train` moves them aside. A save_only_model checkpoint has no optimizer: it is not
    resumable either."""
    for path in _checkpoints(out_dir):
        gaps = checkpoint_gaps(path)
        if not gaps:
            return str(path)
        log.warning("%s is incomplete (no %s; a run stopped while saving it?): not resumed", path,
                    ", ".join(gaps))
    return None


def set_aside_incomplete_checkpoints(out_dir: str | Path) -> list[Path]:
    """Rename every incomplete checkpoint-N in `out_dir` to incomplete-checkpoint-N (replacing an
    older one of that name), so that neither the Trainer's next save into checkpoint-N mixes with
    its stale files nor a later launch picks it; return the new paths. Its weights stay readable."""
    moved = []
    for path in _checkpoints(out_dir):
        gaps = checkpoint_gaps(path)
        if gaps:
            target = path.with_name(INCOMPLETE_PREFIX + path.name)
            shutil.rmtree(target, ignore_errors=True)
            path.rename(target)
            log.warning("%s lacks %s: moved aside to %s", path, ", ".join(gaps), target)
            moved.append(target)
    return moved
