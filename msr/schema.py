"""Column names and file names of every table msr writes: the only place they are spelled.

Ids (users and items) are always strings in msr's tables, whatever the raw dataset used.
"""

from __future__ import annotations

# items.parquet
ITEM = "item_id"
TITLE = "title"
DESCRIPTION = "description"
BRAND = "brand"
CATEGORIES = "categories"
IMAGE = "image_path"  # absolute path of a verified readable image, or null
ITEM_COLUMNS = (ITEM, TITLE, DESCRIPTION, BRAND, CATEGORIES, IMAGE)

# interactions.parquet (sorted by user, then time, then item id)
USER = "user_id"
TIMESTAMP = "timestamp"  # integer, the dataset's own unit (ms for MicroLens and Amazon 2023, s for 2018)
POSITION = "position"  # 0-based index of the interaction in the user's chronological sequence
RATING = "rating"  # the user's explicit rating (float), only for formats that have one (movielens, recbole)
INTERACTION_COLUMNS = (USER, ITEM, TIMESTAMP, POSITION)

# examples.parquet: one row per (user, target); the history is the user's first HISTORY_LEN interactions
SPLIT = "split"
TARGET = "target_item_id"
HISTORY_LEN = "history_len"  # == POSITION of the target: the history is positions [0, HISTORY_LEN)
CUTOFF_TS = "cutoff_ts"  # timestamp of the target; global statistics may use only timestamps < CUTOFF_TS
NEGATIVES = "negatives"  # list of item ids the user never interacted with, seeded
EXAMPLE_COLUMNS = (USER, SPLIT, TARGET, HISTORY_LEN, CUTOFF_TS, NEGATIVES)
# optional example columns (data prepare writes them; a table without them means 0 and 1)
HISTORY_START = "history_start"  # what every method sees is positions [HISTORY_START, HISTORY_LEN) (a window)
TARGET_LABEL = "target_label"  # 1, or the user's own label of the target under explicit labels (rating > threshold)
SPLIT_METADATA = "msr.split"  # examples.parquet's schema metadata: how data prepare chose the targets (`split`)
LIKED = "liked"  # interactions.parquet under explicit labels: rating > threshold, for marks in prompts

TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS = (TRAIN, VALID, TEST)

# file names inside a run directory
ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"
EXAMPLES_FILE = "examples.parquet"
DATA_STATS_FILE = "data_stats.json"
MANIFEST_FILE = "manifest.json"
ITEM_SUMMARIES_FILE = "item_summaries.jsonl"  # append-only cache, one record per (item, model, prompt, settings)
ITEM_SUMMARY_TABLE = "item_summaries.parquet"  # the current summary of every item (item_id, summary)
USER_STATES_FILE = "user_states.jsonl"  # append-only cache, one record per user per block cutoff
USER_SUMMARIES_FILE = "user_summaries.parquet"  # the preference text of every example's history

SFT_DIR = "sft"
# the command that writes each input a later stage requires (named when it is missing)
PRODUCED_BY = {ITEMS_FILE: "msr data prepare", INTERACTIONS_FILE: "msr data prepare",
               EXAMPLES_FILE: "msr data prepare", ITEM_SUMMARY_TABLE: "msr summarize items",
               USER_SUMMARIES_FILE: "msr summarize users", SFT_DIR: "msr data sft"}
MODEL_CARD_FILE = "README.md"  # beside trained weights: base model, data, arguments, metrics  # sft/{split}: `datasets` on disk, TRL prompt/completion rows

# item_summaries.parquet (ITEM as above) and user_summaries.parquet (USER, HISTORY_LEN as above)
SUMMARY = "summary"
# sft rows, besides TRL's images/prompt/completion
LABEL = "label"
# scored candidate tables (user, history_len, item, label + a score): `msr score` writes p_yes, any other
# recommender (the graph recommender, your own) writes score; higher means more likely
P_YES = "p_yes"
SCORE = "score"
# retrieval tables (a retriever's top-K items per example, for `msr score --candidates` and full-ranking
# evaluation): USER, HISTORY_LEN, ITEM, SCORE (the retriever's own) and RANK (1-based, by that score, the
# user's history masked); the target is not forced in, so a target outside the top K is a miss. Optional
# TIED_OUT: how many items tied with the list's last score the cut left out (msr's retrievers write it); a target
# at that score did not make the top K under pessimistic ties and counts as not retrieved
RANK = "rank"
TIED_OUT = "tied_out"

# the run's own tables and records, which no stage's output option may name
RUN_FILES = (ITEMS_FILE, INTERACTIONS_FILE, EXAMPLES_FILE, ITEM_SUMMARY_TABLE, USER_SUMMARIES_FILE, MANIFEST_FILE,
             DATA_STATS_FILE)


def check_output_table(option: str, value: str) -> None:
    """Refuse an output option that is not a .parquet file or names one of the run's own tables (it would
    overwrite them)."""
    if not str(value).endswith(".parquet") or str(value).replace("\\", "/").rsplit("/", 1)[-1] in RUN_FILES:
        raise ValueError(f"{option} must be a .parquet file other than the run's own tables, got {value!r}")
