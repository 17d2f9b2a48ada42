"""`msr summarize items`: one paragraph per item from its image, title and description.

Results go to an append-only JSONL cache keyed by (item content, image bytes, model name, prompt,
generation settings, model identity and output-changing backend settings: see
`SummarizeConfig.model_key`), flushed after every batch: killing the process loses at most the batch in
flight, and a re-run generates only what is missing. A re-run with everything cached does not
even load the model.

Every image is checked again before it is read (`msr.data.recheck`): one that was corrupted, replaced
or deleted after `msr data prepare` is counted (`items_image_<reason>` in the stats) and its item is
summarized from the text-only prompt, under the text-only key. Once the file is repaired, the item's
key is the image's again, so its summary with the image is reused (same bytes) or generated.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from msr import schema
from msr.data.recheck import pixel_cap, recheck_images
from msr.prompts import Prompt, load_prompt
from msr.provenance import one_writer
from msr.rundir import JsonlLog, RunDir, digest, file_sha256, write_parquet
from msr.summarize.backends import Backend, GenerationSettings, Request
from msr.summarize.config import SummarizeConfig, make_backend

log = logging.getLogger(__name__)


def _file_digest(path: str | None) -> str:
    return file_sha256(path) if path else ""


def _description(item: dict) -> str:
    text = (item.get(schema.DESCRIPTION) or "").strip()
    return f" Description: {text}" if text else ""


class ItemPrompts:
    """The item prompts of a config and the cache key of each item under them."""

    def __init__(self, cfg: SummarizeConfig):
        self.with_image = load_prompt("item_summary", cfg.prompt_dir)
        self.text_only = load_prompt("item_summary_text_only", cfg.prompt_dir)
        self.model = cfg.model_for("items")
        self.settings: GenerationSettings = cfg.settings
        # the model's identity and the backend settings that change its outputs (max_pixels only matters
        # with an image); computed once, from the files, without loading the model
        self.model_keys = {True: cfg.model_key("items", with_image=True), False: cfg.model_key("items")}

    def prompt_for(self, item: dict) -> Prompt:
        return self.with_image if item[schema.IMAGE] else self.text_only

    def key(self, item: dict, image_digest: str) -> str:
        return digest("item", item[schema.ITEM], item[schema.TITLE], item[schema.DESCRIPTION], image_digest,
                      self.model, self.prompt_for(item).hash, self.settings.key(),
                      self.model_keys[bool(item[schema.IMAGE])])

    def request(self, item: dict) -> Request:
        text = self.prompt_for(item).render(title=item[schema.TITLE], description=_description(item))
        image = item[schema.IMAGE]
        return Request(text, Path(image) if image else None)


def _load_items(run: RunDir, stage: str) -> tuple[list[dict], Counter]:
    """The items as records, each image checked again (`recheck_images`): one no longer usable is None, as
    for an item prepare kept no image for. Also the count of those by `items_image_<reason>`."""
    run.require(schema.ITEMS_FILE)
    items = pd.read_parquet(run.path(schema.ITEMS_FILE))
    items[schema.IMAGE] = items[schema.IMAGE].astype(object).where(items[schema.IMAGE].notna(), None)
    records = items.to_dict("records")
    usable, bad = recheck_images({item[schema.ITEM]: item[schema.IMAGE] for item in records}, stage,
                                 pixel_cap(run))
    for item in records:
        item[schema.IMAGE] = usable.get(item[schema.ITEM])
    return records, bad


def item_keys(run: RunDir, cfg: SummarizeConfig) -> dict[str, str]:
    """item id -> the cache key its summary has under `cfg` (what later stages look up), with each image
    checked again as `summarize_items` checks it, so both agree on which items are text-only."""
    prompts = ItemPrompts(cfg)
    items, _ = _load_items(run, "item summary keys")
    return {item[schema.ITEM]: prompts.key(item, _file_digest(item[schema.IMAGE])) for item in items}


def load_item_summaries(run: RunDir, cfg: SummarizeConfig) -> dict[str, dict]:
    """item id -> its cached record under `cfg`; raises if any item has not been summarized."""
    cache = JsonlLog(run.path(schema.ITEM_SUMMARIES_FILE), key="key")
    keys = item_keys(run, cfg)
    missing = [item for item, key in keys.items() if key not in cache]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(keys)} items have no summary for model "
                                f"{cfg.model_for('items')!r} with these prompts/settings (e.g. item "
                                f"{missing[0]}): run `msr summarize items` with the same config first")
    return {item: cache.get(key) for item, key in keys.items()}


@one_writer("summarize.items")
def summarize_items(cfg: SummarizeConfig, backend: Backend | None = None) -> dict:
    """Summarize every item of the run that has no cached summary; return counts."""
    cfg.validate()
    run = RunDir(cfg.run_dir)
    prompts = ItemPrompts(cfg)  # the model's identity first: a wrong model path fails before the images are read
    items, bad_images = _load_items(run, "summarize items")
    cache = JsonlLog(run.path(schema.ITEM_SUMMARIES_FILE), key="key")
    if cache.torn_lines:
        log.warning("dropped a torn last line of %s (an interrupted write)", cache.path)
    keys = [prompts.key(item, _file_digest(item[schema.IMAGE])) for item in items]
    pending = [(key, item) for key, item in zip(keys, items) if key not in cache]
    stats = {"items": len(items), "cached": len(items) - len(pending), "generated": 0,
             "text_only": sum(1 for _, item in pending if not item[schema.IMAGE]), "empty": 0, **bad_images}
    if pending:
        backend = backend or make_backend(cfg, prompts.model)
        requests = [prompts.request(item) for _, item in pending]
        with tqdm(total=len(items), initial=stats["cached"], desc="item summaries", unit="item") as bar:
            for chunk in backend.batches(requests):
                batch = [pending[i] for i in chunk]
                texts = backend.generate([requests[i] for i in chunk], prompts.settings)
                cache.append([{"key": key, schema.ITEM: item[schema.ITEM], schema.SUMMARY: text,
                               "model": prompts.model, "model_key": prompts.model_keys[bool(item[schema.IMAGE])],
                               "prompt": prompts.prompt_for(item).name,
                               "has_image": bool(item[schema.IMAGE])} for (key, item), text in zip(batch, texts)])
                stats["generated"] += len(batch)
                stats["empty"] += sum(1 for t in texts if not t)
                bar.update(len(batch))
    current = [cache.get(key) for key in keys]
    write_parquet(run.path(schema.ITEM_SUMMARY_TABLE), pa.table({
        schema.ITEM: pa.array([r[schema.ITEM] for r in current], pa.string()),
        schema.SUMMARY: pa.array([r[schema.SUMMARY] for r in current], pa.string())}))
    log.info("item summaries: %s", stats)
    return stats
