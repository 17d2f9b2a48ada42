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
MAX_PROMPT_CHARS = 32_768


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
    """Load `{name}.txt` from `prompt_dir` (default: the templates shipped with msr), checked before any model is
    loaded: at most `MAX_PROMPT_CHARS` characters, valid `{variable}` syntax, and exactly the variables of the
    shipped template of that name (no `{x.attr}`, `{x[0]}`, `{x!r}` or `{x:>99999}`). A ValueError names the file."""
    path = prompt_path(name, prompt_dir)
    if path.stat().st_size > 4 * MAX_PROMPT_CHARS:  # before reading: a huge file is refused without holding it
        raise ValueError(f"{path}: {path.stat().st_size} bytes; a prompt template may have at most "
                         f"{MAX_PROMPT_CHARS} characters")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"{path}: {len(text)} characters; a prompt template may have at most {MAX_PROMPT_CHARS}")
    _check_fields(path, text, _shipped_variables(name))
    return Prompt(name, text)


def _shipped_variables(name: str) -> frozenset[str] | None:
    shipped = PROMPT_DIR / f"{name}.txt"
    return Prompt(name, shipped.read_text(encoding="utf-8")).variables if shipped.is_file() else None


def _check_fields(path: Path, text: str, expected: frozenset[str] | None) -> None:
    fix = "write {{ and }} for literal braces" if expected is None else \
        f"it must use exactly {', '.join('{' + v + '}' for v in sorted(expected))}; write {{{{ and }}}} for literal braces"
    try:
        fields = [(f, spec, conversion) for _, f, spec, conversion in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise ValueError(f"{path}: {e} ({fix})") from None
    for field_name, spec, conversion in fields:
        if not field_name.isidentifier() or spec or conversion:
            shown = field_name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(f"{path}: {{{shown}}} is not a plain variable ({fix})")
    used = frozenset(f for f, _, _ in fields)
    if expected is not None and used != expected:
        unknown, missing = sorted(used - expected), sorted(expected - used)
        said = "; ".join(part for part in (f"unknown variable(s) {', '.join(unknown)}" if unknown else "",
                                           f"missing {', '.join(missing)}" if missing else "") if part)
        raise ValueError(f"{path}: {said} ({fix})")
