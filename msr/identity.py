"""What a model is, by content, without loading it: the files that define a model folder, its identity digest
(cache keys, training records, provenance), and the check that a name meant as a local path is a model folder.

Kept apart from msr.models (which imports torch and transformers) so that provenance and the data stages can
identify a model cheaply.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

from msr.rundir import digest, file_sha256

# a hub repo id: `name` or `org/name`, word characters, '.' and '-' (not leading); anything else is a path
_HUB_ID = re.compile(r"\w[\w.-]*(/\w[\w.-]*)?")
HUB_HINT = ("a hub id is org/name, and offline it must already be in the hub cache (HF_HOME, with "
             "HF_HUB_OFFLINE=1)")


def looks_like_path(name: str) -> bool:
    """True when `name` can only mean a local path, not a hub id: it starts with '/', '.' or '~', has more
    than one '/', holds characters no repo id has (a Windows separator, a space), exists here as a file, or
    its first part is a folder here (`models/my-run` beside a `models/` folder)."""
    if not _HUB_ID.fullmatch(name) or Path(name).is_file():
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def check_model_name(name: str, what: str = "model",
                     markers: tuple[str, ...] = ("config.json", "adapter_config.json")) -> None:
    """Refuse, before any work, a `what` (model, adapter, encoder) given as a local path that is not a folder
    holding one of `markers`, naming the path and what a hub id looks like. Hub ids pass (the hub client
    checks them). Raises FileNotFoundError (`msr: error: model not found: PATH ...` on the command line)."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / marker).is_file() for marker in markers):
            raise FileNotFoundError(f"{what} not found: {name} is a folder without {' or '.join(markers)}, not a "
                                    f"saved {what}; pass the folder that save_pretrained wrote, or a hub id "
                                    f"({HUB_HINT})")
        return
    if looks_like_path(name):
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{what} not found: {name} ({state}); pass the folder that save_pretrained wrote, "
                                f"or a hub id ({HUB_HINT})")


# What a model directory's identity covers: the files that define its config, decoding defaults, processor,
# tokenizer and chat template (those that exist), plus every top-level weight file (*.safetensors, *.bin).
IDENTITY_FILES = (
    "config.json", "generation_config.json", "adapter_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
LARGE_FILE = 1 << 30  # weight files above this are hashed by sampling (see `model_identity`)
_EDGE = 16 << 20  # bytes hashed at each end of a large file
_SAMPLES = 64  # further 1 MiB samples, evenly spaced, of a large file
_SAMPLE = 1 << 20


def model_identity(name: str, revision: str | None = None) -> str:
    """A stable digest of what the model `name` is, computed without loading it (for cache keys).

    A local directory (a model, or a PEFT adapter: adapter_config.json + its weights) is identified by
    content, not path: the bytes of whichever of `IDENTITY_FILES` exist (config, generation config,
    processor/tokenizer files, chat template) and of its top-level weight files (*.safetensors, *.bin),
    each by name, size and sha256. A copy of the directory elsewhere has the same identity; new weights,
    an edited chat template or processor config give another. A weight file over 1 GiB is not read
    whole: its part is its size plus the sha256 of its first and last 16 MiB and of 64 evenly spaced
    1 MiB samples (cheap on multi-GB shards; a change confined to the bytes between the samples, e.g.
    only a few tensors of a merged fine-tune, can go unseen there). Within a process the result is
    cached on (resolved path, name/size/mtime/inode of each file), so a repeated call only stats
    the files. `revision` is ignored for a local directory.

    Anything else is a hub id, identified by the name plus the commit it resolves to in the local
    hub cache (`revision`, default "main", looked up in the cache's refs; a 40-hex `revision` is the
    commit itself). The network is never touched: when the cache cannot tell the commit (not
    downloaded, or no `huggingface_hub`), the identity is the name plus the `revision` string as
    given, so it stays stable but does not see the repository change until it is downloaded.

    A name that can only be a local path but is no model folder fails here (`check_model_name`): stages
    compute identities before their work, so a mistyped path is refused up front.
    """
    check_model_name(name)
    path = Path(name).expanduser()
    if path.is_dir():
        root = path.resolve()
        stamp = []
        for file in sorted(root.iterdir()):
            if file.name in IDENTITY_FILES or file.name.endswith(WEIGHT_SUFFIXES):
                try:
                    st = file.stat()  # follows symlinks (hub snapshots link to blobs)
                except FileNotFoundError:  # a dangling link
                    continue
                if os.path.isfile(file):
                    stamp.append((file.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        return _directory_identity(str(root), tuple(stamp))
    commit = _cached_commit(name, revision)
    if commit:
        return digest("model-hub", name, "commit", commit)
    return digest("model-hub", name, "revision", revision)


@functools.lru_cache(maxsize=256)
def _directory_identity(root: str, stamp: tuple[tuple[str, int, int, int, int], ...]) -> str:
    parts = []
    for name, size, *_ in stamp:
        path = Path(root) / name
        large = name.endswith(WEIGHT_SUFFIXES) and size > LARGE_FILE
        parts.append((name, size, _sampled_sha256(path, size) if large else file_sha256(path)))
    return digest("model-dir", parts)


def _sampled_sha256(path: Path, size: int) -> str:
    """sha256 over the first and last `_EDGE` bytes of a large file and `_SAMPLES` evenly spaced samples."""
    sha = hashlib.sha256(b"sampled:%d:" % size)
    stride = (size - 2 * _EDGE) // (_SAMPLES + 1)
    spans = [(0, _EDGE)] + [(_EDGE + k * stride, _SAMPLE) for k in range(1, _SAMPLES + 1)] + [(size - _EDGE, _EDGE)]
    with open(path, "rb") as f:
        for offset, length in spans:
            f.seek(offset)
            sha.update(f.read(length))
    return sha.hexdigest()


_COMMIT = re.compile(r"[0-9a-f]{40}")


def _cached_commit(name: str, revision: str | None) -> str | None:
    """The commit `revision` of hub repo `name` resolves to in the local hub cache, or None. Offline only."""
    if revision and _COMMIT.fullmatch(revision):
        return revision
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:
        return None
    try:
        folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type="model")
        ref = folder / "refs" / (revision or "main")
        commit = ref.read_text().strip() if ref.is_file() else ""
    except (OSError, ValueError):
        return None
    return commit if _COMMIT.fullmatch(commit) else None


def model_files(folder: str | Path) -> list[Path]:
    """The files of a model folder that say what the model is (see IDENTITY_FILES and WEIGHT_SUFFIXES), sorted:
    not its model card, checkpoints or other files beside it."""
    root = Path(folder)
    return sorted(f for f in root.iterdir() if (f.name in IDENTITY_FILES or f.name.endswith(WEIGHT_SUFFIXES))
                  and os.path.isfile(f))
