"""Prompts render strictly, hash their text, and declare the variables the README names."""

from __future__ import annotations

from pathlib import Path

import pytest

from msr.prompts import PROMPT_DIR, Prompt, load_prompt

EXPECTED = {
    "item_summary": {"title", "description"},
    "item_summary_text_only": {"title", "description"},
    "user_summary_first": {"items"},
    "user_summary_update": {"previous", "items"},
    "user_summary_direct": {"items"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_prompts_and_readme_agree(name: str) -> None:
    prompt = load_prompt(name)
    assert prompt.variables == EXPECTED[name]
    readme = (PROMPT_DIR / "README.md").read_text()
    assert f"`{name}.txt`" in readme and all(f"`{v}`" in readme for v in EXPECTED[name])


def test_render_is_strict() -> None:
    prompt = Prompt("p", "Hello {name}, you like {thing}.")
    assert prompt.render(name="Ana", thing="hats") == "Hello Ana, you like hats."
    with pytest.raises(KeyError, match="missing \\['thing'\\]"):
        prompt.render(name="Ana")
    with pytest.raises(KeyError, match="unexpected \\['other'\\]"):
        prompt.render(name="Ana", thing="hats", other="x")


def test_hash_follows_text_and_custom_dirs(tmp_path: Path) -> None:
    (tmp_path / "user_summary_first.txt").write_text("List: {items}")
    custom = load_prompt("user_summary_first", tmp_path)
    assert custom.hash != load_prompt("user_summary_first").hash
    assert custom.hash == Prompt("x", "List: {items}").hash
    with pytest.raises(FileNotFoundError, match="known: user_summary_first"):
        load_prompt("nope", tmp_path)


@pytest.mark.parametrize("make", ["missing", "file"])
def test_a_prompt_dir_that_is_not_a_folder_is_named(tmp_path: Path, make: str) -> None:
    folder = tmp_path / "prompts"
    if make == "file":
        folder.write_text("not a folder")
    with pytest.raises(FileNotFoundError, match=f"prompt_dir {folder} is {'a file' if make == 'file' else 'missing'}"):
        load_prompt("recommend_user", folder)
