"""`msr data sft`: examples + summaries -> TRL prompt/completion rows, one per (example, candidate).

`recommendation_parts` / `recommendation_messages` are the single place the recommender's question is built: these rows
train the model and the scorer asks exactly the same question, so the two can never drift apart
(in the MLLM-MSR code they did). Each row holds the candidate's image, the user's preference
text at the example's cutoff, optionally the titles of the last `history_titles` items before
the cutoff, the candidate's title (and item summary), and the answer "Yes" or "No".

`CandidatePrompts` checks every item image again before any prompt carries it (`msr.data.recheck`):
one corrupted, replaced or deleted after `msr data prepare` is counted (`items_image_<reason>`, in
the counts `msr data sft` returns), logged by item, and its candidates are asked without an image,
in training rows and in scoring alike. The stage records the image folder by content, so once the
file is repaired the rows are rewritten with it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pandas as pd

from msr import schema
from msr.data.prepare import STAGE as PREPARE_STAGE
from msr.data.recheck import pixel_cap, recheck_images
from msr.data.tables import EXAMPLE_COLUMNS, check_examples, example_extras, read_table
from msr.prompts import Prompt, load_prompt, prompt_path
from msr.provenance import Stage, one_writer, stage_config
from msr.rundir import RunDir

log = logging.getLogger(__name__)
STAGE = "data.sft"
ANSWERS = {1: "Yes", 0: "No"}


@dataclass
class SftDataConfig:
    """Which examples become training rows and what their prompts show."""

    run_dir: str = field(metadata={"help": "Run directory (after `msr summarize users`)."})
    splits: list[str] = field(default_factory=lambda: ["train", "valid"],
                              metadata={"help": "Example splits to write rows for."})
    user_summary: bool = field(default=True, metadata={"help": "Show the user's preference text "
                               "(from `msr summarize users`)."})
    history_titles: int = field(default=0, metadata={"help": "Also show the titles of the last N items "
                                "before the cutoff (0 in the paper; an ablation)."})
    candidate_summary: bool = field(default=True, metadata={"help": "Show the candidate's item summary "
                                    "after its title."})
    prompt_dir: str | None = field(default=None, metadata={"help": "Folder with your own templates."})
    force: bool = field(default=False, metadata={"help": "Rewrite even if the rows are current."})

    def validate(self) -> None:
        unknown = set(self.splits) - set(schema.SPLITS)
        if unknown or not self.splits:
            raise ValueError(f"splits: {sorted(unknown) or 'none'} not among {', '.join(schema.SPLITS)}")
        if self.history_titles < 0:
            raise ValueError("history_titles must be >= 0")


def recommendation_parts(prompts: tuple[Prompt, Prompt], user_text: str, history: list[str], title: str,
                         summary: str) -> tuple[str, str]:
    """The recommender's question for one candidate, as training and scoring both ask it: the user
    part (shared by all of a user's candidates at one cutoff) and the candidate part."""
    user_prompt, candidate_prompt = prompts
    user = user_prompt.render(
        user=f"What we know about the user: {user_text}\n" if user_text else "",
        history=f"The user's most recent items, oldest first: {'; '.join(history)}\n" if history else "")
    candidate = candidate_prompt.render(
        candidate=f'Title: "{title}".' + (f" Description: {summary}" if summary else ""))
    return user, candidate


def recommendation_messages(user_part: str, candidate_part: str, has_image: bool) -> list[dict]:
    """The user turn: the user part, then the candidate's image (if any), then the candidate part.

    The user part comes first so that every candidate of a user shares one token prefix, which
    the scorer computes once."""
    content = [{"type": "text", "text": user_part + "\n"}] if user_part else []
    content += [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": candidate_part})
    return [{"role": "user", "content": content}]


def answer_messages(label: int) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": ANSWERS[label]}]}]


def load_prompts(cfg: SftDataConfig) -> tuple[Prompt, Prompt]:
    """The user part's and the candidate part's templates of the question."""
    return load_prompt("recommend_user", cfg.prompt_dir), load_prompt("recommend_candidate", cfg.prompt_dir)


class CandidatePrompts:
    """Everything needed to ask the question for any (example, candidate) of a run.

    `images` holds the items whose image is usable now (each checked again, once); `bad_images` counts
    the others by `items_image_<reason>`."""

    def __init__(self, run: RunDir, cfg: SftDataConfig):
        run.require(schema.ITEMS_FILE, schema.INTERACTIONS_FILE, schema.EXAMPLES_FILE)
        self.cfg = cfg
        self.prompts = load_prompts(cfg)
        items = read_table(run, schema.ITEMS_FILE, [schema.ITEM, schema.TITLE, schema.IMAGE])
        self.titles = dict(zip(items[schema.ITEM], items[schema.TITLE]))
        self.images, self.bad_images = recheck_images(
            {i: p for i, p in zip(items[schema.ITEM], items[schema.IMAGE]) if isinstance(p, str)}, "candidate prompts",
            pixel_cap(run))
        self.item_summaries: dict[str, str] = {}
        if cfg.candidate_summary:
            run.require(schema.ITEM_SUMMARY_TABLE)
            table = pd.read_parquet(run.path(schema.ITEM_SUMMARY_TABLE))
            self.item_summaries = dict(zip(table[schema.ITEM], table[schema.SUMMARY]))
        self.user_summaries: dict[tuple[str, int], str] = {}
        if cfg.user_summary:
            run.require(schema.USER_SUMMARIES_FILE)
            table = pd.read_parquet(run.path(schema.USER_SUMMARIES_FILE))
            self.user_summaries = dict(zip(zip(table[schema.USER], table[schema.HISTORY_LEN]), table[schema.SUMMARY]))
        self.sequences: dict[str, list[str]] = {}
        self.starts: dict[tuple[str, int], int] = {}
        if cfg.history_titles:
            inter = pd.read_parquet(run.path(schema.INTERACTIONS_FILE))
            marks = {True: " (liked)", False: " (disliked)"}
            inter["_shown"] = inter[schema.ITEM].map(self.titles) + (
                inter[schema.LIKED].map(marks) if schema.LIKED in inter.columns else "")
            self.sequences = inter.groupby(schema.USER, sort=False)["_shown"].agg(list).to_dict()
            examples = pd.read_parquet(run.path(schema.EXAMPLES_FILE))
            if schema.HISTORY_START in examples.columns:
                self.starts = dict(zip(zip(examples[schema.USER], examples[schema.HISTORY_LEN]),
                                       examples[schema.HISTORY_START]))

    def user_part(self, user: str, history_len: int) -> tuple[str, list[str]]:
        """The preference text and recent titles for a cutoff: only what came before it, within the example's
        history window (`history_start`), each title marked (liked) / (disliked) under explicit labels."""
        text = ""
        if self.cfg.user_summary:
            key = (user, history_len)
            if key not in self.user_summaries:
                raise FileNotFoundError(f"no user summary for user {user} at cutoff {history_len}: "
                                        "run `msr summarize users` on this run first")
            text = self.user_summaries[key]
        recent = []
        if self.cfg.history_titles:
            start = max(int(self.starts.get((user, history_len), 0)), history_len - self.cfg.history_titles)
            recent = self.sequences[user][max(0, start):history_len]
        return text, recent

    def messages(self, user: str, history_len: int, item: str) -> tuple[list[dict], str | None]:
        """The prompt messages for one candidate, and its image path (None without one)."""
        text, recent = self.user_part(user, history_len)
        user_part, candidate_part = recommendation_parts(self.prompts, text, recent, self.titles[item],
                                                         self.item_summaries.get(item, ""))
        image = self.images.get(item)
        return recommendation_messages(user_part, candidate_part, image is not None), image


def candidates(example: dict) -> list[tuple[str, int]]:
    """(item, label) pairs of an example: the target (1, or its own label under explicit labels) then its
    negatives (0)."""
    label = int(example.get(schema.TARGET_LABEL, 1))
    return [(example[schema.TARGET], label)] + [(str(n), 0) for n in example[schema.NEGATIVES]]


def question_inputs(run: RunDir, cfg: SftDataConfig) -> dict[str, Path]:
    """Every file the recommender's question reads under `cfg` (training rows and scoring alike): the tables,
    the summaries it shows, the prompt templates and the item images (the folder `msr data prepare` read)."""
    inputs = {"items": run.path(schema.ITEMS_FILE), "examples": run.path(schema.EXAMPLES_FILE)}
    if cfg.history_titles:
        inputs["interactions"] = run.path(schema.INTERACTIONS_FILE)
    if cfg.user_summary:
        inputs["user_summaries"] = run.path(schema.USER_SUMMARIES_FILE)
    if cfg.candidate_summary:
        inputs["item_summaries"] = run.path(schema.ITEM_SUMMARY_TABLE)
    for name in ("recommend_user", "recommend_candidate"):
        inputs[f"prompt {name}"] = prompt_path(name, cfg.prompt_dir)
    image_dir = run.manifest()["stages"].get(PREPARE_STAGE, {}).get("config", {}).get("image_dir")
    if image_dir and Path(image_dir).is_dir():
        inputs["image_dir"] = Path(image_dir)
    run.require(*(str(p.relative_to(run.root)) for p in inputs.values() if p.parent == run.root))
    return inputs


def sft_stage(run: RunDir, cfg: SftDataConfig) -> Stage:
    return Stage(run, STAGE, stage_config(cfg), question_inputs(run, cfg),
                 outputs=[f"{schema.SFT_DIR}/{split}" for split in cfg.splits])


@one_writer(STAGE)
def write_sft_rows(cfg: SftDataConfig) -> dict:
    """Write `sft/{split}` datasets; return the row counts per split, and when this run found item images no
    longer usable, their counts by `items_image_<reason>` (those candidates' rows have no image)."""
    cfg.validate()
    load_prompts(cfg)  # the templates are checked before anything is read
    run = RunDir(cfg.run_dir)
    stage = sft_stage(run, cfg)
    if stage.is_current(cfg.force):
        return {split: len(load_sft_split(run.root, split)) for split in cfg.splits}
    prompts = CandidatePrompts(run, cfg)
    examples = read_table(run, schema.EXAMPLES_FILE, EXAMPLE_COLUMNS + example_extras(run))
    check_examples(run, examples[examples[schema.SPLIT].isin(cfg.splits)], set(prompts.titles))
    counts = {}
    for split in cfg.splits:
        rows = []
        for example in examples[examples[schema.SPLIT] == split].to_dict("records"):
            for item, label in candidates(example):
                messages, image = prompts.messages(example[schema.USER], example[schema.HISTORY_LEN], item)
                rows.append({"images": [image] if image else [], "prompt": messages,
                             "completion": answer_messages(label), schema.USER: example[schema.USER],
                             schema.ITEM: item, schema.LABEL: label})
        if not rows:
            raise ValueError(f"split {split!r} has no examples in {run.path(schema.EXAMPLES_FILE)}")
        dataset = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
        target = run.path(f"{schema.SFT_DIR}/{split}")
        tmp = target.with_name(f".{split}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        dataset.save_to_disk(str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        counts[split] = len(rows)
        log.info("data sft: %d %s rows (%d with an image) -> %s", len(rows), split,
                 sum(1 for r in rows if r["images"]), target)
    stage.commit()
    return {**counts, **prompts.bad_images}


def load_sft_split(run_dir: str | Path, split: str) -> datasets.Dataset:
    """The rows of one split, written by `msr data sft`."""
    path = RunDir(run_dir).path(f"{schema.SFT_DIR}/{split}")
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `msr data sft --run_dir {run_dir}` first")
    return datasets.load_from_disk(str(path))
