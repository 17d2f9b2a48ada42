"""Fixtures that write small raw datasets in each real format (malformed rows included)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import write_jpeg


@pytest.fixture
def microlens_dir(tmp_path: Path) -> Path:
    """MicroLens layout: 3 users x 4 of 5 items, a timestamp tie (user 2), a malformed pair row, a
    bad timestamp, a title with a comma and a newline, a corrupt cover (12), missing covers (13, 14)."""
    root = tmp_path / "microlens"
    root.mkdir()
    (root / "pairs.csv").write_text(
        "user,item,timestamp\n"
        "1,10,1000\n1,11,2000\n1,12,3000\n1,13,4000\n"
        "2,10,1500\n2,12,2500\n2,13,2500\n2,11,3500\n"
        "3,11,1000\n3,10,1100\n3,13,1200\n3,14,1300\n"
        "3,12\n"            # too few fields
        "4,10,yesterday\n"  # not a timestamp
    )
    (root / "titles.csv").write_text(
        'item,title\n10,"Red, shiny mug"\n11,"Lamp\nwith two lines"\n12,Poster\n13,Hat\n14,Scarf\n')
    covers = root / "covers"
    write_jpeg(covers / "10.jpg")
    write_jpeg(covers / "11.jpg", (0, 0, 255))
    (covers / "12.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


@pytest.fixture(scope="session")
def tiny_run_template(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A prepared embedded dataset (40 users, 40 items) with a tiny VLM and a tiny LM, built once."""
    from msr.data.prepare import PrepareConfig, prepare
    from msr.data.synthetic import (
        COVERS_DIR,
        PAIRS_FILE,
        TITLES_FILE,
        SynthConfig,
        generate,
    )
    from msr.tiny import build_tiny_lm, build_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_run")
    raw = generate(SynthConfig(out_dir=str(root / "raw"), num_users=40, num_items=40, seed=1))
    run = root / "run"
    prepare(PrepareConfig(run_dir=str(run), interactions=str(raw / PAIRS_FILE), items=str(raw / TITLES_FILE),
                          image_dir=str(raw / COVERS_DIR), train_targets_per_user=2, negatives_test=5))
    import pandas as pd

    titles = pd.read_parquet(run / "items.parquet")["title"].tolist()
    return {"run": run, "raw": raw, "vlm": str(build_tiny_vlm(root / "vlm", "llava", titles)),
            "lm": str(build_tiny_lm(root / "lm", titles))}


@pytest.fixture
def tiny_run(tiny_run_template: dict, tmp_path: Path) -> dict:
    """A private copy of the prepared run (tests may write caches into it)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run_template["run"], run)
    return {**tiny_run_template, "run": run}


_PASS_THROUGH = {"torch", "functools", "contextlib", "typing", "warnings", "importlib"}


def _msr_caller(frame) -> str | None:
    """Where msr's own code called the API that warned: walk out from the warning past the warning library's own
    frames (and torch's module-call machinery); if the first frame beyond them is in msr, msr made the deprecated
    call. A deprecated call that another library makes on msr's behalf (TRL calling transformers) is not msr's."""
    emitter = frame.f_globals.get("__name__", "").split(".")[0]
    while frame is not None:
        package = frame.f_globals.get("__name__", "").split(".")[0]
        if package not in _PASS_THROUGH and package != emitter:
            name = frame.f_globals.get("__name__", "")
            return f"{name}:{frame.f_lineno}" if name == "msr" or name.startswith("msr.") else None
        frame = frame.f_back
    return None


@pytest.fixture(autouse=True)
def _msr_makes_no_deprecated_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """msr's own code raises no deprecation warning: a DeprecationWarning or FutureWarning caused by a call in msr.*
    fails the test that made it (pyproject's filterwarnings covers warnings attributed to msr modules directly;
    this covers libraries' deprecation decorators, which attribute the warning to their own wrapper)."""
    import sys
    import warnings

    original = warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        kind = category or (type(message) if isinstance(message, Warning) else UserWarning)
        if issubclass(kind, (DeprecationWarning, FutureWarning)):
            caller = _msr_caller(sys._getframe(1))
            if caller:
                raise AssertionError(f"{caller} makes a deprecated call: {message}")
        return original(message, category, stacklevel + 1, source, **kwargs)

    monkeypatch.setattr(warnings, "warn", warn)


@pytest.fixture
def fresh_run(tiny_run_template: dict, tmp_path: Path) -> dict:
    """A prepared run whose images are its own (tests break them): the template's raw data copied and prepared
    with the template's settings, and the template's tiny models."""
    from msr.data.prepare import PrepareConfig, prepare
    from msr.data.synthetic import COVERS_DIR, PAIRS_FILE, TITLES_FILE

    raw = Path(shutil.copytree(tiny_run_template["raw"], tmp_path / "raw"))
    run = tmp_path / "run"
    prepare(PrepareConfig(run_dir=str(run), interactions=str(raw / PAIRS_FILE), items=str(raw / TITLES_FILE),
                          image_dir=str(raw / COVERS_DIR), train_targets_per_user=2, negatives_test=5))
    return {**tiny_run_template, "run": run, "raw": raw}
