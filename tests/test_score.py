"""The scorer: one forward per batch, identical with and without prefix reuse, refuses split answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msr import schema
from msr.data.sft import CandidatePrompts, SftDataConfig, candidates
from msr.models import load_model
from msr.rundir import RunDir
from msr.score import Scorer
from msr.tiny import build_tiny_vlm


def _groups(run: Path, n: int = 4) -> list[tuple[list, list]]:
    """Candidates of the first n test examples, asked exactly as `msr data sft` asks them."""
    prompts = CandidatePrompts(RunDir(run), SftDataConfig(run_dir=str(run), user_summary=False,
                                                          candidate_summary=False, history_titles=3))
    examples = pd.read_parquet(run / schema.EXAMPLES_FILE)
    groups = []
    for e in examples[examples[schema.SPLIT] == "test"].head(n).to_dict("records"):
        pairs = [prompts.messages(e[schema.USER], e[schema.HISTORY_LEN], item) for item, _ in candidates(e)]
        groups.append(([m for m, _ in pairs], [i for _, i in pairs]))
    return groups


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_batch_size_padding_and_prefix_reuse_agree(tiny_run: dict, tmp_path: Path, family: str) -> None:
    model_dir = tiny_run["vlm"] if family == "llava" else str(build_tiny_vlm(tmp_path / "vlm", family, ["a hat"]))
    loaded = load_model(model_dir, "float32", "cpu")
    groups = _groups(tiny_run["run"])
    results = {}
    for reuse in (False, True):
        for batch_size in (1, 4, 64):
            scorer = Scorer(loaded, prefix_reuse=reuse, batch_size=batch_size)
            results[(reuse, batch_size)] = np.concatenate([scorer.score(c, i) for c, i in groups])
            if reuse and batch_size > 1:
                assert scorer.reused_tokens > 0  # the shared prefix really was computed once
    reference = results[(False, 1)]
    assert ((reference > 0) & (reference < 1)).all()
    for key, scores in results.items():
        assert np.abs(scores - reference).max() < 1e-5, key


def test_refuses_answers_that_are_not_one_token(tiny_run: dict, tmp_path: Path) -> None:
    model_dir = tmp_path / "vlm"
    shutil.copytree(tiny_run["vlm"], model_dir)
    template = (model_dir / "chat_template.jinja").read_text()
    assert "'ASSISTANT: ' + render(" in template
    (model_dir / "chat_template.jinja").write_text(template.replace("'ASSISTANT: ' + render(", "'ASSISTANT: maybe ' + render("))
    with pytest.raises(ValueError, match="'Yes' is not a single token"):
        Scorer(load_model(str(model_dir), "float32", "cpu"))
