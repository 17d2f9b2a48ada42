"""Bad input gets a clear error or a counted skip, never a traceback or a silent wrong answer.

Every mistake a user can make on the command line ends in exactly one `msr: error:` line that names the
file, key or value, exit status 2, and no traceback, before any long work. (Images that break after
prepare: tests/data/test_recheck.py.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import NO_SUMMARIES, assert_one_error, run_cli
from msr import schema
from msr.data.prepare import PrepareConfig, prepare
from msr.data.sft import candidates
from msr.data.synthetic import COVERS_DIR, PAIRS_FILE, TITLES_FILE
from msr.rundir import RunDir

# -- part one: user errors on the command line ----------------------------------------------------------


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sft.yaml"
    path.write_text(text)
    return str(path)


CONFIG_CASES = {
    "yaml syntax error": ("run_dir: {run}\nsplits: [train, valid\n", ["sft.yaml, line 3", "not valid YAML", "line 2"]),
    "python tag": ("run_dir: !!python/object/apply:os.system ['true']\n",
                   ["sft.yaml, line 1", "!!python/object/apply:os.system", "remove the tag"]),
    "duplicate key": ("run_dir: {run}\nhistory_titles: 1\nhistory_titles: 2\n",
                      ["sft.yaml, line 3", "'history_titles' is given twice", "first on line 2"]),
    "unknown key": ("run_dir: {run}\nhistory_title: 1\n", ["sft.yaml", "history_title", "known keys"]),
    "wrong type": ("run_dir: {run}\nhistory_titles: many\n", ["sft.yaml", "history_titles: 'many'", "int"]),
    # ~300 bytes that stand for 9^9 values: the message that names the wrong type would expand them (10+ GB)
    "alias bomb": ("run_dir: {run}\na: &a [x,x,x,x,x,x,x,x,x]\n"
                   + "".join(f"{k}: &{k} [" + ",".join(["*" + p] * 9) + "]\n" for p, k in zip("abcdefgh", "bcdefghi"))
                   + "history_titles: *i\n", ["sft.yaml, line 7", "more than 100000 values"]),
    "nested 20,000 deep": ("run_dir: {run}\nsplits: " + "[" * 20000 + "]" * 20000 + "\n",
                           ["sft.yaml", "nested too deeply"]),
    "alias of itself": ("run_dir: {run}\nsplits: &s [test, *s]\n", ["sft.yaml, line 2", "refers to the value"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_mistakes_are_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text, named = CONFIG_CASES[case]
    code, _, err = run_cli(["data", "sft", "--config", _yaml(tmp_path, text.format(run=tmp_path / "run"))], capsys)
    assert_one_error(code, err, *named)
    assert not (tmp_path / "run").exists()  # refused before the stage opened its run directory


def test_a_wrong_override_and_a_missing_required_key_are_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["data", "sft", "--run_dir", str(tmp_path), "--history_titles", "many"], capsys)
    assert_one_error(code, err, "--history_titles", "'many'", "msr data sft --help")
    code, _, err = run_cli(["data", "sft"], capsys)
    assert_one_error(code, err, "--run_dir")


def test_run_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "run"
    target.write_text("not a folder")
    code, _, err = run_cli(["data", "sft", "--run_dir", str(target)], capsys)
    assert_one_error(code, err, str(target), "is a file, not a folder")
    code, _, err = run_cli(["data", "sft", "--run_dir", str(target / "below")], capsys)
    assert_one_error(code, err, str(target), "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_run_dir_that_is_not_writable(fresh_run: dict, capsys: pytest.CaptureFixture) -> None:
    run = fresh_run["run"]
    run.chmod(0o555)
    try:
        code, _, err = run_cli(["data", "sft", "--run_dir", str(run), *NO_SUMMARIES], capsys)
    finally:
        run.chmod(0o755)
    assert_one_error(code, err, str(run), "not writable")
    assert not (run / schema.SFT_DIR).exists()


def test_run_dir_writable_check_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a non-root user sees (root writes anywhere, so the OS refusal is simulated)."""
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(PermissionError, match=f"run_dir {tmp_path} is not writable .*pass another run_dir"):
        with RunDir(tmp_path).lock("data.sft"):
            pass


def test_model_paths_that_do_not_exist(fresh_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = str(fresh_run["run"])
    for missing in (str(tmp_path / "no-such-model"), "./no-such-model", "models/a/b"):
        code, _, err = run_cli(["summarize", "items", "--run_dir", run, "--item_model", missing], capsys)
        assert_one_error(code, err, f"model not found: {missing}", "org/name")
    assert not (fresh_run["run"] / schema.ITEM_SUMMARIES_FILE).exists()
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    code, _, err = run_cli(["summarize", "items", "--run_dir", run, "--item_model", str(empty)], capsys)
    assert_one_error(code, err, f"model not found: {empty}", "config.json")


PROMPT_CASES = {  # (stage args, template file, its text, what the error names)
    "summarize items, unknown variable": (["summarize", "items"], "item_summary", "{title} {descr}",
                                          ["item_summary.txt", "unknown variable(s) descr", "missing description"]),
    "summarize users, missing variable": (["summarize", "users"], "user_summary_update", "Items: {items}",
                                          ["user_summary_update.txt", "missing previous"]),
    "data sft, attribute access": (["data", "sft", *NO_SUMMARIES], "recommend_user", "{user.__class__} {history}",
                                   ["recommend_user.txt", "{user.__class__} is not a plain variable"]),
    "data sft, a huge template": (["data", "sft", *NO_SUMMARIES], "recommend_candidate", "{candidate}" + "x" * 1_000_000,
                                  ["recommend_candidate.txt", "at most 32768"]),
}


@pytest.mark.parametrize("case", sorted(PROMPT_CASES))
def test_prompt_template_mistakes_are_one_line_before_any_model(case: str, fresh_run: dict, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import msr.models
    from msr.prompts import PROMPT_DIR

    stage, name, text, named = PROMPT_CASES[case]
    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPT_DIR, prompts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (prompts / f"{name}.txt").write_text(text)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the templates were checked")

    monkeypatch.setattr(msr.models, "load_model", no_model)
    run = str(fresh_run["run"])
    models = {"summarize": ["--item_model", fresh_run["vlm"], "--user_model", fresh_run["lm"]], "data": []}[stage[0]]
    code, _, err = run_cli([*stage, "--run_dir", run, "--prompt_dir", str(prompts), *models], capsys)
    assert_one_error(code, err, *named)


@pytest.mark.parametrize("damaged", ["model.safetensors", "config.json"])
def test_a_model_with_a_damaged_file_is_one_line(damaged: str, fresh_run: dict, tmp_path: Path, capsys) -> None:
    model = tmp_path / "vlm"
    shutil.copytree(fresh_run["vlm"], model)
    data = (model / damaged).read_bytes()
    (model / damaged).write_bytes(data[:len(data) // 2])  # an interrupted download or copy
    code, _, err = run_cli(["summarize", "items", "--run_dir", str(fresh_run["run"]), "--item_model", str(model)],
                           capsys)
    assert_one_error(code, err, f"cannot load {model}", "damaged or incomplete")


def test_adapter_path_that_does_not_exist(fresh_run: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = str(fresh_run["run"])
    assert run_cli(["data", "sft", "--run_dir", run, "--splits", "test", *NO_SUMMARIES], capsys)[0] == 0
    adapter = tmp_path / "no-adapter"
    code, _, err = run_cli(["score", "--run_dir", run, "--model", fresh_run["vlm"], "--adapter", str(adapter),
                             "--device", "cpu"], capsys)
    assert_one_error(code, err, f"not found: {adapter}")
    assert not list(fresh_run["run"].glob("scores*"))


def test_missing_inputs_of_a_stage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["data", "sft", "--run_dir", str(tmp_path / "run")], capsys)
    assert_one_error(code, err, "items.parquet", "msr data prepare")
    code, _, err = run_cli(["score", "--run_dir", str(tmp_path / "run"), "--model", "x"], capsys)
    assert_one_error(code, err, "msr data sft")


# -- more mistakes, found by attacking the command line as a new user --------------------------


@pytest.fixture(scope="module")
def prepared_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared embedded dataset without models (fast), copied by `prepared`."""
    from msr.data.synthetic import SynthConfig, generate

    root = tmp_path_factory.mktemp("prepared")
    raw = generate(SynthConfig(out_dir=str(root / "raw"), num_users=30, num_items=40, seed=2))
    prepare(PrepareConfig(run_dir=str(root / "run"), interactions=str(raw / PAIRS_FILE),
                          items=str(raw / TITLES_FILE), image_dir=str(raw / COVERS_DIR), negatives_test=5))
    return root / "run"


@pytest.fixture
def prepared(prepared_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prepared_template, tmp_path / "run"))


MORE_CONFIG_CASES = {  # (stage words, YAML text, what the one line names)
    "numeric key": (["evaluate"], "run_dir: {run}\n5: x\n", ["unknown key(s) 5"]),
    "list element of the wrong type": (["evaluate"], "run_dir: {run}\nks: [1, a]\n", ["ks: [1, 'a']", "list[int]"]),
    "str list element of the wrong type": (["data", "sft"], "run_dir: {run}\nsplits: [test, 5]\n",
                                           ["splits: ['test', 5]", "list[str]"]),
    "no cut-offs": (["evaluate"], "run_dir: {run}\nks: []\n", ["ks: cut-offs must be >= 1"]),
    "a cut-off of 0": (["evaluate"], "run_dir: {run}\nks: [0, 5]\n", ["ks: cut-offs must be >= 1"]),
    "negative evaluate seed": (["evaluate"], "run_dir: {run}\nseed: -1\n", ["seed must be >= 0"]),
    "unknown evaluate split": (["evaluate"], "run_dir: {run}\nsplit: tst\n", ["split: 'tst'"]),
    "negative prepare seed": (["data", "prepare"], "run_dir: {run}\ninteractions: i\nitems: t\nseed: -1\n",
                              ["seed must be >= 0"]),
    # numbers no stage can use, refused before any stage runs (2^31 positions allocated 512 GB in SASRec)
    "a window of 2^31": (["baselines", "evaluate"], "run_dir: {run}\nmax_len: 2147483648\n",
                         ["max_len: 2147483648 is out of range", "100,000"]),
    "an integer past 2^31": (["data", "prepare"], "run_dir: {run}\ninteractions: i\nitems: t\n"
                             "max_seq_len: 100000000000000000000\n", ["max_seq_len", "out of range"]),
    "an infinite float": (["summarize", "items"], "run_dir: {run}\nitem_model: m\ntemperature: .inf\n",
                          ["temperature: inf is not a finite number"]),
}


@pytest.mark.parametrize("case", sorted(MORE_CONFIG_CASES))
def test_more_config_mistakes_are_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    words, text, named = MORE_CONFIG_CASES[case]
    path = tmp_path / "c.yaml"
    path.write_text(text.format(run=tmp_path / "run"))
    code, _, err = run_cli([*words, "--config", str(path)], capsys)
    assert_one_error(code, err, *named)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device,named", [("gpu", "is not a device"), ("cuda:99", "is not available here")])
def test_a_device_that_is_not_there_is_a_clear_error(device: str, named: str) -> None:
    from msr.models import resolve_device

    with pytest.raises(ValueError, match=f"device: '{device}' {named}"):
        resolve_device(device)
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("text,named", [
    ("{bad", "not valid JSON"), ("", "not valid JSON"), ("[1, 2]", "not an msr manifest"),
    ('{"stages": 5}', "not an msr manifest"), ('{"stages": {"data.prepare": 3}}', "not an msr manifest"),
])
def test_a_broken_manifest_is_one_line(text: str, named: str, prepared: Path, capsys) -> None:
    (prepared / schema.MANIFEST_FILE).write_text(text)
    _test_candidates(prepared).to_parquet(prepared / "mine.parquet", index=False)
    for args in (["data", "sft", *NO_SUMMARIES], ["evaluate", "--resamples", "0", "--methods", "mine=mine.parquet"]):
        code, _, err = run_cli([*args, "--run_dir", str(prepared)], capsys)
        assert_one_error(code, err, str(prepared / schema.MANIFEST_FILE), named, "delete it")


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def _edit_examples(run: Path, change) -> None:
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    change(examples).to_parquet(run / schema.EXAMPLES_FILE, index=False)


def _unknown_target(examples: pd.DataFrame) -> pd.DataFrame:
    examples.loc[examples.index[examples[schema.SPLIT] == "train"][0], schema.TARGET] = "no-such-item"
    return examples


RUN_TABLE_CASES = {  # a run table damaged after prepare -> what `msr data sft` names
    "items.parquet truncated": (lambda run: _cut(run / schema.ITEMS_FILE), ["items.parquet", "not a readable parquet",
                                                                           "msr data prepare --force"]),
    "examples.parquet truncated": (lambda run: _cut(run / schema.EXAMPLES_FILE), ["examples.parquet",
                                                                                 "not a readable parquet"]),
    "examples without negatives": (lambda run: _edit_examples(run, lambda e: e.drop(columns=[schema.NEGATIVES])),
                                   ["examples.parquet", "lacks column(s) negatives"]),
    "examples naming an unknown item": (lambda run: _edit_examples(run, _unknown_target),
                                        ["examples.parquet", "'no-such-item'", "not in items.parquet"]),
}


@pytest.mark.parametrize("case", sorted(RUN_TABLE_CASES))
def test_a_damaged_run_table_is_one_line(case: str, prepared: Path, capsys) -> None:
    damage, named = RUN_TABLE_CASES[case]
    damage(prepared)
    code, _, err = run_cli(["data", "sft", "--run_dir", str(prepared), *NO_SUMMARIES], capsys)
    assert_one_error(code, err, *named)


def _test_candidates(run: Path) -> pd.DataFrame:
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    rows = [(e[schema.USER], e[schema.HISTORY_LEN], item, label)
            for e in examples[examples[schema.SPLIT] == "test"].to_dict("records") for item, label in candidates(e)]
    table = pd.DataFrame(rows, columns=[schema.USER, schema.HISTORY_LEN, schema.ITEM, schema.LABEL])
    return table.assign(**{schema.SCORE: np.linspace(0, 1, len(table))})


def _nan_first(t: pd.DataFrame) -> pd.DataFrame:
    t.loc[0, schema.SCORE] = np.nan
    return t


SCORE_TABLE_CASES = {  # a scored table -> what `msr evaluate` names (None: accepted)
    "a NaN score": (_nan_first, ["1 of", "NaN or infinite"]),
    "infinite scores": (lambda t: t.assign(score=np.inf), ["NaN or infinite"]),
    "scores as text": (lambda t: t.assign(score=t[schema.SCORE].astype(str)), ["column score has type", "numbers"]),
    "scores as booleans": (lambda t: t.assign(score=t[schema.SCORE] > 0.5), ["column score has type bool"]),
    "labels that disagree": (lambda t: t.assign(label=1 - t[schema.LABEL]), ["another label than in examples.parquet"]),
    "no history_len": (lambda t: t.drop(columns=[schema.HISTORY_LEN]), ["lacks history_len"]),
    "integer user ids": (lambda t: t.assign(user_id=t[schema.USER].astype(int)), None),
    "float history_len": (lambda t: t.assign(history_len=t[schema.HISTORY_LEN].astype(float)), None),
    "extra rows": (lambda t: pd.concat([t, t.head(1).assign(user_id="someone-else")]), None),
    "not parquet": ("not parquet", ["not a readable parquet file"]),
}


@pytest.mark.parametrize("case", sorted(SCORE_TABLE_CASES))
def test_a_bad_score_table_is_one_line(case: str, prepared: Path, capsys) -> None:
    change, named = SCORE_TABLE_CASES[case]
    path = prepared / "mine.parquet"
    if isinstance(change, str):
        path.write_text(change)
    else:
        change(_test_candidates(prepared)).to_parquet(path, index=False)
    code, out, err = run_cli(["evaluate", "--run_dir", str(prepared), "--resamples", "0",
                               "--methods", "mine=mine.parquet"], capsys)
    if named is None:
        assert code == 0 and "| mine |" in out, err
    else:
        assert_one_error(code, err, str(path), *named)


@pytest.mark.parametrize("rank,named", [("text", "column rank has type"), (1.5, "not whole numbers")])
def test_a_retrieval_table_with_bad_ranks_is_one_line(rank, named: str, prepared: Path, capsys) -> None:
    table = _test_candidates(prepared)
    table[schema.RANK] = table.groupby(EXAMPLE_COLUMNS_KEY).cumcount() + 1
    table[schema.RANK] = "1" if rank == "text" else table[schema.RANK] + rank
    table.to_parquet(prepared / "ret.parquet", index=False)
    table.drop(columns=[schema.RANK]).to_parquet(prepared / "mine.parquet", index=False)
    code, _, err = run_cli(["evaluate", "--run_dir", str(prepared), "--resamples", "0", "--methods",
                             "mine=mine.parquet", "--retrieval", "r=ret.parquet", "--full_ks", "3"], capsys)
    assert_one_error(code, err, "ret.parquet", named)


EXAMPLE_COLUMNS_KEY = [schema.USER, schema.HISTORY_LEN]


def test_examples_without_negatives_are_one_line_in_evaluate(tmp_path: Path, capsys) -> None:
    from msr.data.synthetic import SynthConfig, generate

    raw = generate(SynthConfig(out_dir=str(tmp_path / "raw"), num_users=20, num_items=30, seed=3))
    run = tmp_path / "run"
    prepare(PrepareConfig(run_dir=str(run), interactions=str(raw / PAIRS_FILE), items=str(raw / TITLES_FILE),
                          negatives_test=0))
    _test_candidates(run).to_parquet(run / "mine.parquet", index=False)
    code, _, err = run_cli(["evaluate", "--run_dir", str(run), "--resamples", "0", "--methods", "mine=mine.parquet"],
                            capsys)
    assert_one_error(code, err, "examples.parquet", "no sampled negatives", "negatives_test >= 1")


def test_synth_out_dir_that_is_a_file_or_a_broken_dataset(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "below"):
        code, _, err = run_cli(["data", "synth", "--out_dir", str(out), "--num_users", "5", "--num_items", "30"],
                                capsys)
        assert_one_error(code, err, str(blocker), "is a file")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "truth.json").write_text("{broken")
    code, _, err = run_cli(["data", "synth", "--out_dir", str(tmp_path / "old"), "--num_users", "5",
                             "--num_items", "30"], capsys)
    assert_one_error(code, err, "truth.json", "not the truth file")


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, monkeypatch, capsys) -> None:
    import msr.data.synthetic as synthetic

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate", interrupted)
    code, _, err = run_cli(["data", "synth", "--out_dir", str(tmp_path / "raw")], capsys)
    assert code == 130 and "Traceback" not in err and "msr: interrupted; run the same command again" in err
