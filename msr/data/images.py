"""Locating and verifying item images on local disk.

Item ids come from data files and are never trusted as path components: an id that is not a plain
file-name-safe token is hashed, and every resolved path must stay inside its image folder.
An image that is missing, unsafe, too large or undecodable is reported by reason, never raised.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from PIL import Image
from tqdm.auto import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MAX_IMAGE_BYTES = 32 * 1024 * 1024
_SAFE_STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")

OK, MISSING, UNSAFE, TOO_LARGE, UNREADABLE = "ok", "missing", "unsafe_path", "too_large", "unreadable"


def file_stem(item_id: str) -> str:
    """The file-name stem under which an item's image is stored: the id itself if it is a safe
    token, otherwise a hash of it (so `../../etc/passwd` can never become a path)."""
    if _SAFE_STEM.fullmatch(item_id) and ".." not in item_id:
        return item_id
    return "sha1-" + hashlib.sha1(item_id.encode()).hexdigest()


def image_for_id(folder: Path, item_id: str) -> Path | None:
    """The first existing `folder/{stem}{ext}` for an item, or None."""
    stem = file_stem(item_id)
    for ext in IMAGE_EXTENSIONS:
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def resolve_inside(folder: Path, relative: str) -> Path | None:
    """`folder/relative` if it resolves to a location inside `folder`, else None (path traversal)."""
    root = folder.resolve()
    target = (root / relative).resolve()
    return target if root in target.parents else None


def check_image(path: Path | None) -> str:
    """Why an image cannot be used (MISSING, TOO_LARGE, UNREADABLE), or OK."""
    if path is None or not path.is_file():
        return MISSING
    if path.stat().st_size > MAX_IMAGE_BYTES:
        return TOO_LARGE
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
    except Exception:  # PIL raises many types for corrupt, truncated or bomb-sized files
        return UNREADABLE
    return OK


def load_rgb(path: str | Path) -> Image.Image:
    """An image file as an RGB PIL image, the file closed."""
    with Image.open(path) as img:
        return img.convert("RGB")


def verify_images(paths: Sequence[Path | None], verify: bool = True,
                  workers: int = 4) -> tuple[list[str | None], Counter]:
    """Check every path; return the usable absolute paths (None where unusable) and counts by reason.

    With verify=False only existence is checked (fast, for catalogs you already trust)."""
    def one(path: Path | None) -> str:
        if not verify:
            return OK if path is not None and path.is_file() else MISSING
        return check_image(path)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(tqdm(pool.map(one, paths), total=len(paths), desc="checking images",
                            unit="img", disable=len(paths) < 1000))
    usable = [str(p.resolve()) if r == OK else None for p, r in zip(paths, reasons)]
    return usable, Counter(reasons)


def locate(folder: str | Path | None, item_ids: Sequence[str],
           relative_paths: Sequence[str | None] | None = None) -> tuple[list[Path | None], int]:
    """Candidate image paths and the number of explicit paths refused for leaving `folder`.

    Paths come from explicit relative paths (generic format), confined to `folder`, or from the
    item id (`folder/{stem}.jpg` etc.)."""
    if folder is None:
        return [None] * len(item_ids), 0
    folder = Path(folder)
    if relative_paths is None:
        return [image_for_id(folder, i) for i in item_ids], 0
    paths = [resolve_inside(folder, r) if r else None for r in relative_paths]
    unsafe = sum(1 for p, r in zip(paths, relative_paths) if r and p is None)
    return paths, unsafe
