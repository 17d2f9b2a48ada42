import csv
import re
from collections import defaultdict
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msr.data.synthetic import (
    CATEGORIES, COLOURS, COVERS_DIR, PAIRS_FILE, PATTERNS, TITLES_FILE, TRUTH_FILE,
    SynthConfig, Truth, generate, load_truth, oracle_score,
)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


def _sequences(out: Path) -> dict[int, list[tuple[int, int]]]:
    """user -> [(item, timestamp)] in file order."""
    sequences = defaultdict(list)
    for user, item, ts in _read_csv(out / PAIRS_FILE)[1]:
        sequences[int(user)].append((int(item), int(ts)))
    return sequences


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Truth]:
    out = generate(SynthConfig(out_dir=str(tmp_path_factory.mktemp("synth") / "data")))
    return out, load_truth(out)


def test_same_config_is_byte_identical_and_seed_matters(tmp_path):
    a = generate(SynthConfig(out_dir=str(tmp_path / "a")))
    b = generate(SynthConfig(out_dir=str(tmp_path / "b")))
    c = generate(SynthConfig(out_dir=str(tmp_path / "c"), seed=1))
    files_a = _files(a)
    assert files_a == _files(b)
    files_c = _files(c)
    assert files_a[PAIRS_FILE] != files_c[PAIRS_FILE]
    assert files_a[TRUTH_FILE] != files_c[TRUTH_FILE]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no partial directories left behind


def test_image_weight_is_part_of_the_identity_only_when_it_changes_something():
    assert "image_weight" not in SynthConfig(out_dir="x").identity()  # datasets from before it stay valid
    assert SynthConfig(out_dir="x", image_weight=0.3).identity()["image_weight"] == 0.3


def test_image_weight_scales_only_the_image_attributes(tmp_path, dataset):
    scaled = load_truth(generate(SynthConfig(out_dir=str(tmp_path / "scaled"), image_weight=0.25)))
    truth = dataset[1]
    assert scaled.items == truth.items  # same random stream: only the users' weights differ
    for user, phases in truth.users.items():
        for phase, other in zip(phases, scaled.users[user]):
            assert other.category == phase.category and other.start_ts == phase.start_ts
            for field_name in ("colour", "pattern"):
                assert np.allclose(getattr(other, field_name), np.multiply(getattr(phase, field_name), 0.25),
                                   atol=1e-3)


def test_microlens_layout(dataset):
    out, truth = dataset
    header, pairs = _read_csv(out / PAIRS_FILE)
    assert header == ["user", "item", "timestamp"]
    title_header, title_rows = _read_csv(out / TITLES_FILE)
    assert title_header == ["item", "title"]
    assert all(re.fullmatch(r"\d+", value) for row in pairs for value in row)
    titled = {int(item) for item, _ in title_rows}
    assert titled == set(range(1, 241)) == set(truth.items)

    sequences = _sequences(out)
    assert set(sequences) == set(range(1, 301)) == set(truth.users)
    ties = 0
    for seq in sequences.values():
        items, stamps = zip(*seq)
        assert 10 <= len(seq) <= 20
        assert len(set(items)) == len(items)
        assert set(items) <= titled
        assert all(t0 <= t1 for t0, t1 in zip(stamps, stamps[1:]))
        assert stamps[0] > 1_600_000_000_000  # milliseconds
        ties += sum(t0 == t1 for t0, t1 in zip(stamps, stamps[1:]))
    assert 0 < ties < len(pairs) // 10


def test_titles_name_the_category_but_never_colour_or_pattern(dataset):
    out, truth = dataset
    forbidden = set(COLOURS) | set(PATTERNS) | {"striped", "stripe", "dot", "dotted", "check", "checked", "plain"}
    _, rows = _read_csv(out / TITLES_FILE)
    for item, title in rows:
        words = set(re.findall(r"[a-z]+", title.lower()))
        assert not words & forbidden, title
        assert CATEGORIES[truth.items[int(item)].category] in words, title
    titles = [title for _, title in rows]
    assert any("," in t for t in titles) and any('"' in t for t in titles)  # CSV quoting is exercised
    assert len(set(titles)) > 0.9 * len(titles)


def test_covers_show_only_colour_and_pattern(dataset):
    out, truth = dataset
    covers = out / COVERS_DIR
    assert len(truth.missing_images) == round(0.02 * 240) and len(truth.corrupt_images) == 1
    assert not set(truth.missing_images) & set(truth.corrupt_images)
    by_look = defaultdict(set)
    categories_by_look = defaultdict(set)
    for item, attrs in truth.items.items():
        path = covers / f"{item}.jpg"
        if item in truth.missing_images:
            assert not path.exists()
            continue
        if item in truth.corrupt_images:
            with pytest.raises(OSError):
                with Image.open(path) as image:
                    image.load()
            continue
        with Image.open(path) as image:
            image.load()
            assert image.format == "JPEG" and image.size == (64, 64)
        by_look[(attrs.colour, attrs.pattern)].add(path.read_bytes())
        categories_by_look[(attrs.colour, attrs.pattern)].add(attrs.category)
    # the image is a function of colour and pattern only: one distinct file per look, whatever the category
    assert all(len(images) == 1 for images in by_look.values())
    assert len({next(iter(images)) for images in by_look.values()}) == len(by_look)
    assert any(len(categories) > 1 for categories in categories_by_look.values())


def _liked(weights: tuple[float, ...]) -> set[int]:
    return {v for v, w in enumerate(weights) if w > 1.0}


def test_every_user_drifts_mid_sequence(dataset):
    out, truth = dataset
    sequences = _sequences(out)
    for user, phases in truth.users.items():
        assert len(phases) >= 2
        stamps = [ts for _, ts in sequences[user]]
        assert phases[0].start_ts == stamps[0]
        drift = stamps.index(phases[1].start_ts)  # the first interaction of phase 2
        assert 0.4 * len(stamps) <= drift <= 0.7 * len(stamps)
        assert stamps[drift - 1] < stamps[drift]  # no tie straddles the drift
        first, second = phases[0], phases[1]
        assert _liked(first.colour) != _liked(second.colour) or _liked(first.category) != _liked(second.category)
        assert all(_liked(p.colour) and _liked(p.pattern) and _liked(p.category) for p in phases)


def _auc_on_last_target(out: Path, truth: Truth, score) -> float:
    """Mean AUC of the last interaction against 20 random items the user never touched."""
    rng = np.random.default_rng(0)
    aucs = []
    for user, seq in _sequences(out).items():
        target, ts = seq[-1]
        unseen = sorted(set(truth.items) - {item for item, _ in seq})
        negatives = np.array([score(user, n, ts) for n in rng.choice(unseen, size=20, replace=False)])
        positive = score(user, target, ts)
        aucs.append(np.mean(negatives < positive) + 0.5 * np.mean(negatives == positive))
    return float(np.mean(aucs))


def test_oracle_ranks_chosen_items_high_and_drift_matters(dataset):
    out, truth = dataset
    oracle_auc = _auc_on_last_target(out, truth, lambda u, i, ts: oracle_score(truth, str(u), str(i), ts))
    stale_auc = _auc_on_last_target(out, truth, lambda u, i, ts: truth.users[u][0].utility(truth.items[i]))
    assert oracle_auc > 0.9
    assert stale_auc < oracle_auc - 0.1


def test_oracle_uses_the_phase_active_at_the_timestamp(dataset):
    _, truth = dataset
    first, second = truth.users[1]
    item = truth.items[7]
    assert oracle_score(truth, "1", "7", second.start_ts - 1) == pytest.approx(first.utility(item))
    assert oracle_score(truth, "1", "7", second.start_ts) == pytest.approx(second.utility(item))
    assert oracle_score(truth, "1", "7", first.start_ts - 10) == pytest.approx(first.utility(item))
    assert oracle_score(truth, "1", "7", 10**15) == oracle_score(truth, 1, 7, 10**15)
    with pytest.raises(KeyError):
        oracle_score(truth, "1", "100000", second.start_ts)
    assert truth.temperature == 0.5


def test_rerun_is_a_no_op_and_other_config_refused(tmp_path):
    cfg = SynthConfig(out_dir=str(tmp_path / "data"), num_users=40, num_items=60)
    out = generate(cfg)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate(cfg) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(FileExistsError, match="seed"):
        generate(SynthConfig(out_dir=str(out), num_users=40, num_items=60, seed=3))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_refuses_foreign_directory_but_fills_an_empty_one(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / PAIRS_FILE).write_text("user,item,timestamp\n")
    with pytest.raises(FileExistsError, match=TRUTH_FILE):
        generate(SynthConfig(out_dir=str(tmp_path / "foreign"), num_users=5, num_items=30))
    (tmp_path / "empty").mkdir()
    out = generate(SynthConfig(out_dir=str(tmp_path / "empty"), num_users=5, num_items=30))
    assert (out / TRUTH_FILE).is_file()
    assert load_truth(out / TRUTH_FILE).corrupt_images == []  # fewer than 50 items: no corrupt cover


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"num_users": 0}, "num_users"),
        ({"num_items": 1}, "num_items"),
        ({"min_seq_len": 1}, "min_seq_len"),
        ({"min_seq_len": 12, "max_seq_len": 8}, "max_seq_len"),
        ({"num_items": 15}, "max_seq_len"),
        ({"image_size": 8}, "image_size"),
        ({"missing_image_rate": -0.1}, "missing_image_rate"),
        ({"missing_image_rate": 0.9}, "missing_image_rate"),
        ({"temperature": 0.0}, "temperature"),
        ({"image_weight": -0.5}, "image_weight"),
        ({"seed": -1}, "seed"),
        ({"out_dir": ""}, "out_dir"),
    ],
)
def test_config_validation(tmp_path, overrides, field_name):
    kwargs = {"out_dir": str(tmp_path), **overrides}
    with pytest.raises(ValueError, match=f"SynthConfig.{field_name} "):
        SynthConfig(**kwargs)


def test_every_config_field_has_help():
    assert all(f.metadata.get("help") for f in fields(SynthConfig))
