"""Prompt templates, loaded by name and rendered strictly.

The templates are the `.txt` files in this folder (shipped with the package); a user may point
`prompt_dir` at a copy with their own wording. A template's hash is part of every cache key that
uses it, so editing a prompt invalidates exactly the outputs it produced.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

PROMPT_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Prompt:
    """A named template with the set of variables it requires."""

    name: str
    text: str

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(field for _, field, _, _ in string.Formatter().parse(self.text) if field)

    def render(self, **values: str) -> str:
        """The filled template; a missing or an unexpected variable raises KeyError naming it."""
        missing, extra = self.variables - values.keys(), values.keys() - self.variables
        if missing or extra:
            raise KeyError(f"prompt {self.name!r}: missing {sorted(missing)}, unexpected {sorted(extra)}")
        return self.text.format(**values).strip()


def prompt_path(name: str, prompt_dir: str | Path | None = None) -> Path:
    """The file of prompt `name` in `prompt_dir` (default: the templates shipped with msr)."""
    folder = Path(prompt_dir) if prompt_dir else PROMPT_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"prompt_dir {folder} is {'a file' if folder.exists() else 'missing'}: give a folder "
                                f"holding your templates (copy {PROMPT_DIR} and edit the copies)")
    path = folder / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.txt"))
        raise FileNotFoundError(f"no prompt {name!r} in {folder}; known: {', '.join(known)}")
    return path


def load_prompt(name: str, prompt_dir: str | Path | None = None) -> Prompt:
    """Load `{name}.txt` from `prompt_dir` (default: the templates shipped with msr)."""
    return Prompt(name, prompt_path(name, prompt_dir).read_text(encoding="utf-8"))
