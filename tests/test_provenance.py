"""Provenance: a stage is current only when its config and the content of everything it read are unchanged; a
downstream stage refuses, or redoes, work made from inputs that changed since."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pytest

from msr import schema
from msr.data.prepare import PrepareConfig, prepare
from msr.data.sft import SftDataConfig, write_sft_rows
from msr.data.synthetic import COVERS_DIR, PAIRS_FILE, TITLES_FILE
from msr.evaluate import EvaluateConfig, evaluate
from msr.provenance import Stage, recorded_status, require_current
from msr.rundir import RunDir, write_parquet
from msr.score_split import ScoreConfig, score_split

# --- the mechanism


def _stage(run: RunDir, tmp_path: Path, **config) -> Stage:
    return Stage(run, "demo", {"k": 1, **config}, {"raw": tmp_path / "raw.txt"}, {"model": "m1"}, outputs=["out.txt"])


def _run_demo(stage: Stage) -> None:
    stage.run.path("out.txt").write_text("result of " + Path(stage.inputs["raw"]).read_text())
    stage.commit()


def test_a_stage_says_which_input_changed(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (tmp_path / "raw.txt").write_text("v1")
    stage = _stage(run, tmp_path)
    assert not stage.status().current and "never run" in str(stage.status())
    _run_demo(stage)
    assert stage.status().current and stage.is_current()
    assert "config changed (k)" in str(_stage(run, tmp_path, k=2).status())
    assert "model changed" in str(Stage(run, "demo", {"k": 1}, stage.inputs, {"model": "m2"}, ["out.txt"]).status())
    (tmp_path / "raw.txt").write_text("v2")
    assert str(stage.status()) == f"input raw ({tmp_path / 'raw.txt'}) changed"
    _run_demo(stage)
    assert stage.is_current()
    assert not stage.is_current(force=True)


def test_outputs_must_be_the_ones_the_stage_wrote(tmp_path: Path) -> None:
    """A kill between two output writes, or a hand edit, leaves outputs the record does not vouch for."""
    run = RunDir(tmp_path / "run")
    (tmp_path / "raw.txt").write_text("v1")
    stage = _stage(run, tmp_path)
    _run_demo(stage)
    run.path("out.txt").write_text("half of a newer run")
    assert "output out.txt changed since" in str(stage.status())
    run.path("out.txt").unlink()
    assert "output out.txt is missing" in str(stage.status())


def test_a_copied_run_keeps_its_provenance(tmp_path: Path) -> None:
    import shutil

    run = RunDir(tmp_path / "run")
    (run.path("table.txt")).write_text("rows")
    stage = Stage(run, "demo", {}, {"table": run.path("table.txt")}, outputs=[])
    stage.commit()
    shutil.copytree(run.root, tmp_path / "copy")
    copy = RunDir(tmp_path / "copy")
    assert Stage(copy, "demo", {}, {"table": copy.path("table.txt")}, outputs=[]).status().current
    assert recorded_status(copy, "demo").current


def test_require_current_names_the_command(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (tmp_path / "raw.txt").write_text("v1")
    _run_demo(_stage(run, tmp_path))
    require_current(run, "demo", "msr demo")
    (tmp_path / "raw.txt").write_text("v2")
    with pytest.raises(ValueError, match=r"demo is not current \(input raw .* changed\); re-run `msr demo`"):
        require_current(run, "demo", "msr demo")


# --- the stages


def _prepare(tiny_run: dict, **overrides) -> dict:
    raw = Path(tiny_run["raw"])
    cfg = dict(run_dir=str(tiny_run["run"]), interactions=str(raw / PAIRS_FILE), items=str(raw / TITLES_FILE),
               image_dir=str(raw / COVERS_DIR), train_targets_per_user=2, negatives_test=5)
    return prepare(PrepareConfig(**{**cfg, **overrides}))


def test_prepare_reruns_when_the_raw_data_changes(tiny_run: dict, tmp_path: Path, caplog) -> None:
    import logging
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(tiny_run["raw"], raw)
    run = {**tiny_run, "raw": raw}
    before = _prepare(run)
    stamp = (Path(tiny_run["run"]) / schema.EXAMPLES_FILE).stat().st_mtime_ns
    _prepare(run)
    assert (Path(tiny_run["run"]) / schema.EXAMPLES_FILE).stat().st_mtime_ns == stamp  # current: untouched
    pairs = (raw / PAIRS_FILE).read_text().splitlines()
    (raw / PAIRS_FILE).write_text("\n".join(pairs[:-40]) + "\n")  # the same config, other raw data
    with caplog.at_level(logging.INFO):
        stats = _prepare(run)
    assert any("input interactions" in r.getMessage() and "changed" in r.getMessage() for r in caplog.records)
    assert stats["interactions"] < before["interactions"]


def _summaries(run: Path, shift: int = 0) -> None:
    """A user_summaries.parquet as `msr summarize users` writes it: one text per example cutoff."""
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    write_parquet(run / schema.USER_SUMMARIES_FILE, pa.table({
        schema.USER: examples[schema.USER], schema.HISTORY_LEN: examples[schema.HISTORY_LEN].astype("int32"),
        schema.SUMMARY: [f"likes hats {shift + n % 3}" for n in range(len(examples))]}))


@pytest.fixture
def rows_run(tiny_run: dict) -> dict:
    run = Path(tiny_run["run"])
    _summaries(run)
    return {**tiny_run, "sft": SftDataConfig(run_dir=str(run), user_summary=True, candidate_summary=False,
                                             history_titles=2, splits=["train"])}


def test_sft_rows_follow_the_summaries_and_prompts(rows_run: dict, tmp_path: Path) -> None:
    run = Path(rows_run["run"])
    write_sft_rows(rows_run["sft"])
    stage = RunDir(run).manifest()["stages"]["data.sft"]
    assert write_sft_rows(rows_run["sft"]) and RunDir(run).manifest()["stages"]["data.sft"] == stage  # current
    _summaries(run, shift=1)  # `msr summarize users` again, other texts
    write_sft_rows(rows_run["sft"])
    prompts_text = json.dumps(list(datasets.load_from_disk(str(run / "sft" / "train"))["prompt"]))
    assert "likes hats 3" in prompts_text and "likes hats 0" not in prompts_text  # the new texts, not the old
    assert RunDir(run).manifest()["stages"]["data.sft"]["inputs"]["user_summaries"] != stage["inputs"]["user_summaries"]
    # an edited prompt in --prompt_dir is read by content, not by its path
    from msr.prompts import PROMPT_DIR

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for p in PROMPT_DIR.glob("*.txt"):
        (prompts / p.name).write_text(p.read_text())
    cfg = dataclasses.replace(rows_run["sft"], prompt_dir=str(prompts))
    write_sft_rows(cfg)
    before = RunDir(run).manifest()["stages"]["data.sft"]["finished_at"], (run / "sft" / "train").stat().st_mtime_ns
    (prompts / "recommend_candidate.txt").write_text("Consider this one. {candidate}\nYes or No?")
    write_sft_rows(cfg)
    assert (run / "sft" / "train").stat().st_mtime_ns != before[1]
    text = json.dumps(datasets.load_from_disk(str(run / "sft" / "train"))[0]["prompt"])
    assert "Consider this one." in text


def test_score_and_evaluate_refuse_or_redo_stale_work(rows_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import msr.score_split as score_module

    run = Path(rows_run["run"])
    write_sft_rows(rows_run["sft"])
    loads = []
    real_load = score_module.load_model

    def counting_load(*args, **kwargs):  # the real loader, counted
        loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(score_module, "load_model", counting_load)
    cfg = ScoreConfig(run_dir=str(run), model=rows_run["vlm"], device="cpu", dtype="float32", max_examples=4)
    first = score_split(cfg)
    assert len(loads) == 1
    score_split(cfg)
    assert len(loads) == 1  # nothing changed: no model load, the same scores
    current = EvaluateConfig(run_dir=str(run), methods=["zero_shot=scores.parquet"], split="test")
    # (4 of the 40 test examples are scored: evaluate gets past the provenance check to the completeness check)
    with pytest.raises(ValueError, match="lacks scores"):
        evaluate(current)

    # the user summaries change: the rows are stale, so scoring refuses (the model learned other prompts) ...
    _summaries(run, shift=1)
    with pytest.raises(ValueError, match=r"data.sft is not current \(input user_summaries .* changed\)"):
        score_split(cfg)
    # ... and evaluate refuses the old table, naming the command
    with pytest.raises(ValueError, match=r"score.scores.parquet is not current .* re-run `msr score --output scores"):
        evaluate(EvaluateConfig(run_dir=str(run), methods=["zero_shot=scores.parquet"], split="test"))
    write_sft_rows(rows_run["sft"])
    again = score_split(cfg)
    assert len(loads) == 2  # rescored from the new summaries
    assert (again["p_yes"].to_numpy() != first["p_yes"].to_numpy()).any()
    with pytest.raises(ValueError, match="lacks scores"):
        evaluate(current)

    # an edited score table is refused too
    table = pd.read_parquet(run / "scores.parquet")
    write_parquet(run / "scores.parquet", pa.Table.from_pandas(table.assign(p_yes=0.5), preserve_index=False))
    with pytest.raises(ValueError, match="output scores.parquet changed"):
        evaluate(current)


def test_a_new_split_rescores_instead_of_serving_old_records(rows_run: dict) -> None:
    """`msr data prepare` with another seed: the old records are not reused, and evaluate is not left stuck."""
    run = Path(rows_run["run"])
    write_sft_rows(rows_run["sft"])
    cfg = ScoreConfig(run_dir=str(run), model=rows_run["vlm"], device="cpu", dtype="float32", max_examples=2)
    first = score_split(cfg)
    _prepare(rows_run, seed=7)
    _summaries(run)
    write_sft_rows(rows_run["sft"])
    with pytest.raises(ValueError, match="score.scores.parquet is not current"):
        evaluate(EvaluateConfig(run_dir=str(run), methods=["zero_shot=scores.parquet"]))
    again = score_split(cfg)  # the new examples' negatives, scored afresh
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    test = examples[examples[schema.SPLIT] == "test"].head(2)
    expected = {(u, str(n)) for u, negs in zip(test[schema.USER], test[schema.NEGATIVES]) for n in negs}
    assert expected <= set(zip(again[schema.USER], again[schema.ITEM]))
    assert set(zip(first[schema.USER], first[schema.ITEM])) != set(zip(again[schema.USER], again[schema.ITEM]))


def test_a_second_writer_of_a_stage_is_refused_at_once(tiny_run: dict, capsys: pytest.CaptureFixture) -> None:
    from msr.cli import main
    from msr.rundir import StageBusyError

    run = RunDir(tiny_run["run"])
    with run.lock("data.prepare"):  # another `msr data prepare` is running on this run directory
        with pytest.raises(StageBusyError, match="data.prepare"):
            _prepare(tiny_run)
        raw = Path(tiny_run["raw"])
        assert main(["data", "prepare", "--run_dir", str(run.root), "--interactions", str(raw / PAIRS_FILE),
                     "--items", str(raw / TITLES_FILE)]) == 2
        assert "msr: error:" in capsys.readouterr().err
    _prepare(tiny_run)  # released: the stage runs


# --- the change matrix: each change re-runs the stages that read it, and their downstream, nothing else


def test_change_matrix(tiny_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import msr.score_split as score_module
    from msr.prompts import PROMPT_DIR
    from msr.summarize.config import SummarizeConfig
    from msr.summarize.items import summarize_items
    from msr.summarize.users import summarize_users

    run = Path(tiny_run["run"])
    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPT_DIR, prompts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    loads = []
    real_load = score_module.load_model
    monkeypatch.setattr(score_module, "load_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    summarize = SummarizeConfig(run_dir=str(run), item_model=tiny_run["vlm"], user_model=tiny_run["lm"],
                                max_new_tokens=4, batch_size=32, prompt_dir=str(prompts))
    sft = SftDataConfig(run_dir=str(run), history_titles=2, splits=["train"], prompt_dir=str(prompts))
    score = ScoreConfig(run_dir=str(run), model=tiny_run["vlm"], device="cpu", dtype="float32", max_examples=2)

    def pipeline() -> set[str]:
        """Run every stage; return those that did work."""
        stamps = {name: (run / name).stat().st_mtime_ns if (run / name).exists() else None
                  for name in (schema.EXAMPLES_FILE, "sft/train")}
        scored = len(loads)
        ran = set()
        _prepare(tiny_run)
        ran |= {"items"} if summarize_items(summarize)["generated"] else set()
        ran |= {"users"} if summarize_users(summarize)["generated"] else set()
        write_sft_rows(sft)
        score_split(score)
        ran |= {"prepare"} if (run / schema.EXAMPLES_FILE).stat().st_mtime_ns != stamps[schema.EXAMPLES_FILE] else set()
        ran |= {"sft"} if (run / "sft/train").stat().st_mtime_ns != stamps["sft/train"] else set()
        ran |= {"score"} if len(loads) > scored else set()
        return ran

    everything = {"items", "users", "sft", "score"}  # prepare ran in the fixture already
    assert pipeline() == everything
    assert pipeline() == set()  # nothing changed: no stage works, no model loads
    (prompts / "recommend_candidate.txt").write_text("Candidate: {candidate}\nWill the user engage? Yes or No.")
    assert pipeline() == {"sft", "score"}
    (prompts / "user_summary_update.txt").write_text(
        (PROMPT_DIR / "user_summary_update.txt").read_text() + "\nBe brief.")
    before = (run / schema.USER_SUMMARIES_FILE).read_bytes()
    ran = pipeline()  # the user states are redone; what reads them re-runs only if their text changed (a tiny
    # random LM may well write the same four tokens for both prompts: then nothing downstream is stale)
    changed = (run / schema.USER_SUMMARIES_FILE).read_bytes() != before
    assert ran == {"users"} | ({"sft", "score"} if changed else set())
    (prompts / "item_summary.txt").write_text((PROMPT_DIR / "item_summary.txt").read_text() + "\nBe brief.")
    assert pipeline() == {"items", "users", "sft", "score"}  # user states read the item summaries
    sft = dataclasses.replace(sft, history_titles=3)
    assert pipeline() == {"sft", "score"}
    score = dataclasses.replace(score, dtype="float32", max_pixels=None, load_in_4bit=False, adapter=None)
    assert pipeline() == set()


@pytest.mark.parametrize("killed_at", ["interactions.parquet", "examples.parquet", "data_stats.json"])
def test_a_prepare_killed_between_its_writes(tiny_run: dict, monkeypatch: pytest.MonkeyPatch, killed_at: str) -> None:
    """Outputs are renamed into place one by one; a kill between them leaves tables of two configs. The older
    run's record holds only while every output is byte-identical to what it recorded (items and interactions do
    not depend on the seed; the examples' negatives do), and the new config is never current."""
    import msr.data.prepare as prepare_module

    raw = Path(tiny_run["raw"])
    cfg = PrepareConfig(run_dir=str(tiny_run["run"]), interactions=str(raw / PAIRS_FILE),
                        items=str(raw / TITLES_FILE), image_dir=str(raw / COVERS_DIR), train_targets_per_user=2,
                        negatives_test=5)
    prepare(cfg)
    real = {"write_parquet": prepare_module.write_parquet, "write_json": prepare_module.write_json}

    def killing(name):
        def write(path, data):
            if Path(path).name == killed_at:
                raise KeyboardInterrupt("killed")
            real[name](path, data)
        return write

    for name in real:
        monkeypatch.setattr(prepare_module, name, killing(name))
    other = dataclasses.replace(cfg, seed=9)
    with pytest.raises(KeyboardInterrupt):
        prepare(other)
    for name, function in real.items():
        monkeypatch.setattr(prepare_module, name, function)
    run = RunDir(cfg.run_dir)
    old = prepare_module.prepare_stage(run, cfg).status()
    if killed_at == "data_stats.json":  # the new examples are in place: the old record no longer holds
        assert "output examples.parquet changed since" in str(old)
    else:
        assert old.current
    assert not prepare_module.prepare_stage(run, other).status().current
    prepare(other)
    assert prepare_module.prepare_stage(run, other).status().current
