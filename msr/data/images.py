"""Locating and verifying item images on local disk.

Item ids come from data files and are never trusted as path components: an id that is not a plain
file-name-safe token is hashed. Every candidate path, found by id or given as a relative path, is
resolved (symlinks included) and must stay inside its image folder, else it is `unsafe_path`.
An image that is missing, unsafe, too large (bytes or pixels) or undecodable is reported by
reason, never raised.
"""

from __future__ import annotations

import hashlib
import re
import threading
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Sequence

from PIL import Image, ImageOps
from tqdm.auto import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MAX_IMAGE_BYTES = 32 * 1024 * 1024
MAX_IMAGE_PIXELS = 64_000_000  # width x height, read from the header before anything is decoded
HASHED = "sha1-"
_SAFE_STEM = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_OPEN_LOCK = threading.Lock()  # warnings.catch_warnings is process-wide: one header read at a time

OK, MISSING, UNSAFE, TOO_LARGE, UNREADABLE = "ok", "missing", "unsafe_path", "too_large", "unreadable"
TOO_MANY_PIXELS = "too_many_pixels"


def file_stem(item_id: str) -> str:
    """The file-name stem under which an item's image is stored: the id itself if it is a safe
    token, otherwise a hash of it (so `../../etc/passwd` can never become a path). An id that itself
    starts with the hash prefix, in any case, is hashed too, so no id's plain name is another id's hashed one.

    Names never collide on a case-insensitive file system (macOS, Windows) either: a safe id with a lowercase
    letter gets `~` and 12 hex digits of its hash after it (no plain name holds `~`), so `abc` and `ABC` are two
    files; ids without lowercase letters (MicroLens' numbers, Amazon's ASINs) keep their plain names."""
    digest = hashlib.sha1(item_id.encode()).hexdigest()
    if not _SAFE_STEM.fullmatch(item_id) or ".." in item_id or item_id.lower().startswith(HASHED):
        return HASHED + digest
    return f"{item_id}~{digest[:12]}" if any("a" <= c <= "z" for c in item_id) else item_id


def image_for_id(folder: Path, item_id: str) -> Path | None:
    """The first existing `folder/{stem}{ext}` for an item, or None (not yet confined: a symlink
    there may point anywhere; `verify_images` checks)."""
    stem = file_stem(item_id)
    for ext in IMAGE_EXTENSIONS:
        candidate = folder / f"{stem}{ext}"
        try:
            if candidate.is_file():
                return candidate
        except OSError:  # a folder we may not read: no image found there
            continue
    return None


def _resolved(path: str | Path) -> Path | None:
    """`path` with symlinks resolved, or None if it is not a valid path (a NUL byte, a loop)."""
    try:
        return Path(path).resolve()
    except (OSError, ValueError, RuntimeError):
        return None


def resolve_inside(folder: Path, relative: str | Path) -> Path | None:
    """`folder/relative`, symlinks resolved, if that lies inside `folder`; None if it leaves the
    folder (`..`, an absolute path, a symlink out) or is not a valid path (a NUL byte, a loop)."""
    root = _resolved(folder)
    target = _resolved(root / relative) if root is not None else None
    return target if target is not None and root in target.parents else None


def _open_header(path: Path) -> Image.Image:
    """Open an image lazily (header only), PIL's decompression-bomb warning silenced: the pixel cap
    in `check_image` is msr's own, and PIL's DecompressionBombError is caught there."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def check_image(path: Path | None, *, max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """Why an image cannot be used (MISSING, TOO_LARGE, TOO_MANY_PIXELS, UNREADABLE), or OK.

    The pixel count comes from the header, before decoding, so a small file that would decode to a
    huge bitmap is refused without the memory."""
    if path is None:
        return MISSING
    try:
        if not path.is_file():
            return MISSING
        if path.stat().st_size > MAX_IMAGE_BYTES:
            return TOO_LARGE
    except OSError:  # e.g. a folder on the way that we may not read
        return UNREADABLE
    try:
        with _open_header(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                return TOO_MANY_PIXELS
            img.draft("RGB", (64, 64))
            img.load()
    except Image.DecompressionBombError:
        return TOO_MANY_PIXELS
    except Exception:  # PIL raises many types for corrupt or truncated files
        return UNREADABLE
    return OK


def load_rgb(source: str | Path | BinaryIO) -> Image.Image:
    """An image (a file, or the bytes of one) as the RGB pixels every stage sees: item summaries, training rows and
    scoring all decode through here. The EXIF orientation is applied (a phone photo stored sideways is upright) and
    transparency is composited on white, as transformers' `convert_to_rgb` does (a plain `convert("RGB")` would
    keep the colours hidden under transparent pixels, often black)."""
    with Image.open(source) as img:
        return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """`load_rgb`'s pixels for an image already opened: upright, transparency on white, RGB (a new image)."""
    upright = ImageOps.exif_transpose(img)
    if upright.has_transparency_data:
        rgba = upright.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return upright.convert("RGB")


def _exists(path: Path) -> str:
    """OK if `path` is a file, without opening it (verify_images with verify=False)."""
    try:
        return OK if path.is_file() else MISSING
    except OSError:
        return UNREADABLE


def _classify(path: Path | None, root: Path | None, verify: bool, max_pixels: int) -> tuple[str, Path | None]:
    """(reason, resolved path) of one candidate: confined to `root` first, then checked."""
    if path is None:
        return MISSING, None
    target = resolve_inside(root, path) if root is not None else _resolved(path)
    if target is None:
        return UNSAFE, None
    if not verify:
        return _exists(target), target
    return check_image(target, max_pixels=max_pixels), target


def verify_images(paths: Sequence[Path | None], verify: bool = True, workers: int = 4, *,
                  root: str | Path | None = None,
                  max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[list[str | None], Counter]:
    """Check every path; return the usable absolute paths (None where unusable) and counts by reason.

    With `root`, a path that resolves outside it is UNSAFE (counted once, not also as missing).
    With verify=False only existence is checked (fast, for catalogs you already trust)."""
    folder = Path(root) if root is not None else None

    def one(path: Path | None) -> tuple[str, Path | None]:
        return _classify(path, folder, verify, max_pixels)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(one, paths), total=len(paths), desc="checking images",
                            unit="img", disable=len(paths) < 1000))
    usable = [str(target) if reason == OK else None for reason, target in results]
    return usable, Counter(reason for reason, _ in results)


def locate(folder: str | Path | None, item_ids: Sequence[str],
           relative_paths: Sequence[str | None] | None = None) -> list[Path | None]:
    """The candidate image path of each item, not yet checked (see `verify_images`).

    Paths come from explicit paths relative to `folder` (generic format) or from the item id
    (`folder/{stem}.jpg` etc., the first that exists)."""
    if folder is None:
        return [None] * len(item_ids)
    folder = Path(folder).absolute()
    if relative_paths is None:
        return [image_for_id(folder, i) for i in item_ids]
    return [folder / r if r else None for r in relative_paths]
