"""Embedded synthetic dataset in MicroLens layout, with a known preference model.

Why: the pipeline (image + title summaries, history folded block by block, fine-tuned yes/no
ranking) needs a dataset that runs on a CPU and whose ground truth is known, so a quickstart can
be checked against an oracle. Each item's colour and pattern appear only in its cover image and
its category only in its title, so a model must read both. Each user's taste drifts once,
mid-sequence, so reading the history in time order matters.

``generate`` writes ``MicroLens-50k_pairs.csv`` (user,item,timestamp in ms),
``MicroLens-50k_titles.csv`` (item,title), ``covers/{item}.jpg`` and ``truth.json`` into
``out_dir``. It builds everything in a hidden sibling directory and renames it into place, so
``out_dir`` either holds a complete dataset or nothing.
"""

import csv
import io
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PAIRS_FILE = "MicroLens-50k_pairs.csv"
TITLES_FILE = "MicroLens-50k_titles.csv"
COVERS_DIR = "covers"
TRUTH_FILE = "truth.json"
FORMAT_VERSION = 1

COLOURS = {"red": (214, 39, 40), "orange": (245, 140, 30), "yellow": (238, 204, 34),
           "green": (44, 160, 44), "blue": (31, 90, 200), "purple": (140, 60, 180)}
PATTERNS = ("solid", "stripes", "dots", "checks")
CATEGORIES = ("sneakers", "backpack", "mug", "lamp", "poster", "hat")
ADJECTIVES = ("Urban", "Classic", "Everyday", "Compact", "Deluxe",
              "Modern", "Travel", "Studio", "Weekend", "Heritage")
TITLE_TEMPLATES = ("{adj} {cat} no. {n}", "{adj} {cat}, model {n}", '"{adj}" {cat} #{n}')  # some need CSV quoting
_SIZES = (len(COLOURS), len(PATTERNS), len(CATEGORIES))

_START_MS = 1_609_459_200_000  # 2021-01-01T00:00:00Z
_DAY_MS = 86_400_000
_TIE_RATE = 0.05  # chance that an interaction shares the previous one's timestamp
_LIKED_WEIGHT = (1.5, 2.5)  # utility of a liked attribute value, uniform in this range
_OTHER_SD = 0.15  # utility of any other value ~ N(0, _OTHER_SD)
_BIAS_SD = 0.3  # per-item popularity term ~ N(0, _BIAS_SD)
_CORRUPT_BYTES = b"\xff\xd8\xff\xe0 not a JPEG"


@dataclass
class SynthConfig:
    """Size and seed of the embedded dataset."""

    out_dir: str = field(metadata={"help": "Directory to write the dataset into (MicroLens layout)."})
    num_users: int = field(default=300, metadata={"help": "Number of users (ids 1..num_users)."})
    num_items: int = field(default=240, metadata={"help": "Number of items (ids 1..num_items)."})
    min_seq_len: int = field(default=10, metadata={"help": "Shortest user sequence (>= 2)."})
    max_seq_len: int = field(default=20, metadata={"help": "Longest user sequence (<= num_items)."})
    image_size: int = field(default=64, metadata={"help": "Side of the square cover images, in pixels."})
    missing_image_rate: float = field(default=0.02, metadata={
        "help": "Fraction of items without a cover file (with >= 50 items, one more gets a corrupt one)."})
    temperature: float = field(
        default=0.5, metadata={"help": "Softmax temperature of the users' choices; lower is more predictable."})
    image_weight: float = field(default=1.0, metadata={
        "help": "Scale of the image-only attributes (colour, pattern) in the users' utilities; 1 makes them as "
                "strong as the title's category. The quickstart lowers it: its tiny model cannot learn to read "
                "images within a CPU budget, so the titles must carry most of the signal."})
    seed: int = field(default=0, metadata={"help": "Seed of every random draw."})

    def __post_init__(self) -> None:
        problems = [
            ("out_dir", bool(str(self.out_dir)), "must not be empty"),
            ("num_users", self.num_users >= 1, "must be >= 1"),
            ("num_items", self.num_items >= 2, "must be >= 2"),
            ("min_seq_len", self.min_seq_len >= 2, "must be >= 2 (one interaction before and one after the drift)"),
            ("max_seq_len", self.max_seq_len >= self.min_seq_len, "must be >= min_seq_len"),
            ("max_seq_len", self.max_seq_len <= self.num_items, "must be <= num_items (no item is seen twice)"),
            ("image_size", 32 <= self.image_size <= 1024, "must be in [32, 1024]"),
            ("missing_image_rate", 0.0 <= self.missing_image_rate <= 0.5, "must be in [0, 0.5]"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("image_weight", self.image_weight >= 0, "must be >= 0"),
            ("seed", self.seed >= 0, "must be >= 0"),
        ]
        for name, ok, rule in problems:
            if not ok:
                raise ValueError(f"SynthConfig.{name} {rule}, got {getattr(self, name)!r}")

    def identity(self) -> dict:
        """The fields that determine the dataset's content (everything but where it is written).
        `image_weight` appears only when it is not 1, so datasets written before it existed keep
        their identity (and their truth.json its bytes)."""
        return {k: v for k, v in asdict(self).items() if k != "out_dir" and not (k == "image_weight" and v == 1.0)}


@dataclass(frozen=True)
class ItemAttributes:
    """An item's hidden attributes (indices into COLOURS, PATTERNS, CATEGORIES) and popularity term."""

    colour: int
    pattern: int
    category: int
    bias: float


@dataclass(frozen=True)
class Phase:
    """One stretch of a user's taste: active from ``start_ts`` (ms) until the next phase starts."""

    start_ts: int
    colour: tuple[float, ...]
    pattern: tuple[float, ...]
    category: tuple[float, ...]

    def utility(self, item: ItemAttributes) -> float:
        """The user's true utility for ``item`` (choice probability is softmax(utility / temperature))."""
        return self.colour[item.colour] + self.pattern[item.pattern] + self.category[item.category] + item.bias


@dataclass
class Truth:
    """The generator's preference model, as loaded from truth.json."""

    config: dict
    items: dict[int, ItemAttributes]
    users: dict[int, list[Phase]]
    missing_images: list[int]
    corrupt_images: list[int]

    @property
    def temperature(self) -> float:
        return float(self.config["temperature"])

    def phase_at(self, user_id: str | int, timestamp: int) -> Phase:
        """The latest phase of the user that started at or before ``timestamp`` (the first if none did)."""
        phases = self.users[int(user_id)]
        return next((p for p in reversed(phases) if p.start_ts <= timestamp), phases[0])


def oracle_score(truth: Truth, user_id: str, item_id: str, timestamp: int) -> float:
    """True utility of ``item_id`` for ``user_id`` under the phase active at ``timestamp``,
    the timestamp of the target being predicted. Ids may be strings, as elsewhere in msr."""
    return truth.phase_at(user_id, timestamp).utility(truth.items[int(item_id)])


def load_truth(path: str | Path) -> Truth:
    """Load truth.json, given its path or the dataset directory."""
    path = Path(path)
    if path.is_dir():
        path = path / TRUTH_FILE
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported truth format {raw.get('format')!r}, expected {FORMAT_VERSION}")
    return Truth(
        config=raw["config"],
        items={int(k): ItemAttributes(*v) for k, v in raw["items"].items()},
        users={int(k): [Phase(p["start_ts"], tuple(p["colour"]), tuple(p["pattern"]), tuple(p["category"]))
                        for p in phases] for k, phases in raw["users"].items()},
        missing_images=raw["missing_images"],
        corrupt_images=raw["corrupt_images"],
    )


def generate(cfg: SynthConfig) -> Path:
    """Write the dataset into ``cfg.out_dir`` and return that path.

    Idempotent: a complete dataset already there with the same config is left untouched. Raises
    FileExistsError if ``out_dir`` holds a dataset with another config, or other non-empty content.
    """
    out = Path(cfg.out_dir).absolute()
    if _already_generated(out, cfg):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        _write_dataset(tmp, cfg)
        if out.exists():
            out.rmdir()  # empty, checked by _already_generated
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _already_generated(out, cfg):  # another process finished the same dataset first
            return out
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _already_generated(out: Path, cfg: SynthConfig) -> bool:
    """True if ``out`` holds this config's dataset, False if it is absent or empty; raises otherwise."""
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise FileExistsError(f"out_dir {out} cannot be a folder: {blocker} is a file; pass another out_dir")
    if not out.exists() or not any(out.iterdir()):
        return False
    truth_path = out / TRUTH_FILE
    if not truth_path.is_file():
        raise FileExistsError(f"{out} is not empty and holds no {TRUTH_FILE}; refusing to write a dataset into it")
    try:
        stored = json.loads(truth_path.read_text(encoding="utf-8"))["config"]
    except (ValueError, KeyError, TypeError):
        raise FileExistsError(f"{truth_path} is not the truth file of a synthetic dataset (not valid JSON, or no "
                              "config); delete the folder or choose another out_dir") from None
    wanted = cfg.identity()
    if stored != wanted:
        differing = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))
        raise FileExistsError(
            f"{out} holds a synthetic dataset generated with a different config (differs in: "
            f"{', '.join(differing)}); choose another out_dir or delete it")
    return True


def _write_dataset(out: Path, cfg: SynthConfig) -> None:
    item_seed, user_seed = np.random.SeedSequence(cfg.seed).spawn(2)
    items, titles, missing, corrupt = _draw_items(np.random.Generator(np.random.PCG64(item_seed)), cfg)
    users, pairs = _draw_users(np.random.Generator(np.random.PCG64(user_seed)), cfg, items)

    with open(out / TITLES_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["item", "title"])
        writer.writerows(zip(items, titles))
    with open(out / PAIRS_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["user", "item", "timestamp"])
        writer.writerows(pairs)

    covers = out / COVERS_DIR
    covers.mkdir()
    jpegs = {}
    for item_id, attrs in items.items():
        if item_id in missing:
            continue
        key = (attrs.colour, attrs.pattern)
        if key not in jpegs:
            jpegs[key] = _cover_jpeg(list(COLOURS.values())[attrs.colour], PATTERNS[attrs.pattern], cfg.image_size)
        (covers / f"{item_id}.jpg").write_bytes(_CORRUPT_BYTES if item_id in corrupt else jpegs[key])

    truth = {
        "format": FORMAT_VERSION,
        "config": cfg.identity(),
        "attributes": {"colour": list(COLOURS), "pattern": list(PATTERNS), "category": list(CATEGORIES)},
        "item_fields": ["colour", "pattern", "category", "bias"],
        "items": {str(i): [a.colour, a.pattern, a.category, a.bias] for i, a in items.items()},
        "missing_images": missing,
        "corrupt_images": corrupt,
        "users": {str(u): [asdict(p) for p in phases] for u, phases in users.items()},
    }
    (out / TRUTH_FILE).write_text(json.dumps(truth, separators=(",", ":")) + "\n")


def _draw_items(rng: np.random.Generator, cfg: SynthConfig):
    """Attributes, titles, and the items whose cover is missing or corrupt."""
    n = cfg.num_items
    colour, pattern, category = (rng.integers(k, size=n) for k in _SIZES)
    bias = np.round(rng.normal(0.0, _BIAS_SD, n), 3)
    adjective, template = rng.integers(len(ADJECTIVES), size=n), rng.integers(len(TITLE_TEMPLATES), size=n)
    serial = rng.integers(1, 1000, size=n)
    items = {i + 1: ItemAttributes(int(colour[i]), int(pattern[i]), int(category[i]), float(bias[i])) for i in range(n)}
    titles = [TITLE_TEMPLATES[template[i]].format(adj=ADJECTIVES[adjective[i]], cat=CATEGORIES[category[i]],
                                                  n=serial[i]) for i in range(n)]
    n_missing, n_corrupt = round(cfg.missing_image_rate * n), int(n >= 50)
    picked = (rng.choice(n, size=n_missing + n_corrupt, replace=False) + 1).tolist()
    return items, titles, sorted(picked[:n_missing]), sorted(picked[n_missing:])


def _draw_weights(rng: np.random.Generator, n_values: int, avoid: frozenset[int] = frozenset()) -> tuple[float, ...]:
    """One or two liked values (not in ``avoid``) with large weights; the others near zero."""
    weights = rng.normal(0.0, _OTHER_SD, n_values)
    allowed = [v for v in range(n_values) if v not in avoid]
    liked = rng.choice(allowed, size=min(len(allowed), 1 + int(rng.random() < 0.3)), replace=False)
    weights[liked] = rng.uniform(*_LIKED_WEIGHT, size=len(liked))
    return tuple(np.round(weights, 3).tolist())


def _scale_image(phase: list[tuple[float, ...]], scale: float) -> list[tuple[float, ...]]:
    """Colour and pattern weights times ``scale`` (after drawing, so the random stream never changes)."""
    if scale == 1.0:
        return phase
    return [tuple(round(w * scale, 3) for w in weights) if slot < 2 else weights for slot, weights in enumerate(phase)]


def _liked(weights: tuple[float, ...]) -> frozenset[int]:
    return frozenset(v for v, w in enumerate(weights) if w >= _LIKED_WEIGHT[0])


def _draw_users(rng: np.random.Generator, cfg: SynthConfig, items: dict[int, ItemAttributes]):
    """Each user's phases and their (user, item, timestamp) rows, in sequence order."""
    ids = np.array(list(items))
    attrs = np.array([(a.colour, a.pattern, a.category) for a in items.values()])
    bias = np.array([a.bias for a in items.values()])
    users, pairs = {}, []
    for user in range(1, cfg.num_users + 1):
        first = [_draw_weights(rng, k) for k in _SIZES]
        second = list(first)
        for slot in ((0,), (2,), (0, 2))[rng.integers(3)]:  # the liked colour, category, or both change
            second[slot] = _draw_weights(rng, _SIZES[slot], avoid=_liked(first[slot]))
        first, second = (_scale_image(phase, cfg.image_weight) for phase in (first, second))

        length = int(rng.integers(cfg.min_seq_len, cfg.max_seq_len + 1))
        drift = int(rng.integers(-(-4 * length // 10), 7 * length // 10 + 1))  # 40-70% of the way, in [1, length)
        gaps = rng.exponential(_DAY_MS / 2, size=length - 1).astype(np.int64) + 1000
        ties = rng.random(length - 1) < _TIE_RATE
        ties[drift - 1] = False  # the drift never falls inside a tie, so each timestamp has one phase
        gaps[ties] = 0
        stamps = (int(rng.integers(0, 180 * _DAY_MS)) + _START_MS + np.concatenate([[0], np.cumsum(gaps)])).tolist()

        utilities = [sum(np.array(w)[attrs[:, k]] for k, w in enumerate(phase)) + bias for phase in (first, second)]
        seen = np.zeros(len(ids), dtype=bool)
        for step in range(length):
            logits = np.where(seen, -np.inf, utilities[step >= drift] / cfg.temperature)
            p = np.exp(logits - logits.max())
            pick = int(rng.choice(len(ids), p=p / p.sum()))
            seen[pick] = True
            pairs.append((user, int(ids[pick]), stamps[step]))
        users[user] = [Phase(stamps[0], *first), Phase(stamps[drift], *second)]
    return users, pairs


def _cover_jpeg(rgb: tuple[int, int, int], pattern: str, size: int) -> bytes:
    """A card showing ``pattern`` in ``rgb`` on a grey background: a function of colour and pattern only."""
    margin = cell = size // 8
    card = Image.new("RGB", (size - 2 * margin, size - 2 * margin), rgb if pattern == "solid" else (255, 255, 255))
    draw = ImageDraw.Draw(card)  # drawing on the card clips the pattern to it
    for row, y in enumerate(range(0, card.height, cell)):
        for col, x in enumerate(range(0, card.width, cell)):
            if pattern == "stripes" and row % 2 == 0 or pattern == "checks" and (row + col) % 2 == 0:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=rgb)
            elif pattern == "dots" and row % 2 == 0 and col % 2 == 0:
                left, top = x + cell // 2, y + cell // 2
                draw.ellipse([left, top, left + cell - 1, top + cell - 1], fill=rgb)
    image = Image.new("RGB", (size, size), (236, 236, 236))
    image.paste(card, (margin, margin))
    ImageDraw.Draw(image).rectangle([margin, margin, size - margin - 1, size - margin - 1], outline=(90, 90, 90))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
