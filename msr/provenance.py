"""Stage provenance: a stage is current only when its config and the content of everything it read are unchanged.

A stage declares itself once, as a `Stage`: its name, its config (hashed), the files and folders it reads
(run-directory tables, raw files, prompt texts, model folders: each by content digest), any other values its
result depends on (a model's identity, a prompt's text), and the outputs it writes. `Stage.status()` says whether
the recorded run still matches and, when it does not, *which* input changed. `Stage.commit()` records the
digests of the inputs and of the outputs after they are written, so a stage killed between two output writes is
not current (the recorded output digests no longer match), and a downstream stage that finds an upstream output
changed since it read it re-runs. Digests come from `RunDir.content_digest`, which keeps them beside the run and
re-hashes a file only when its size or modification time changed: a no-op check reads no table.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msr import __version__
from msr.identity import model_files
from msr.rundir import RunDir, digest

log = logging.getLogger(__name__)


@dataclass
class Status:
    """Whether a stage's recorded run is current, and if not, why (one reason per changed thing)."""

    current: bool
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "current" if self.current else "; ".join(self.reasons)


@dataclass(frozen=True)
class ModelInput:
    """An input that is a model folder (a base model, a LoRA adapter, a fine-tuned model): digested by the files
    that say what the model is (`msr.identity.model_files`: config, processor and tokenizer files, chat template,
    weights), each through the run's digest cache, so a model card edited beside the weights, or a checkpoint
    written there, changes nothing, and an unchanged multi-GB model costs a stat per file."""

    path: Path

    def __fspath__(self) -> str:
        return str(self.path)


def _input_digest(run: RunDir, path: str | Path, kind: str | None) -> str:
    if kind == "model":
        return digest("model", [(f.name, run.content_digest(f)) for f in model_files(path)])
    return run.content_digest(path)


@dataclass
class Stage:
    """What one stage of a run directory reads, depends on and writes.

    `inputs` maps a name to a file or folder (inside the run directory or outside it), or to a `ModelInput`;
    `values` holds other JSON-serialisable things the result depends on (a hub model's identity, a prompt's text);
    `outputs` are paths relative to the run directory."""

    run: RunDir
    name: str
    config: Mapping[str, Any]
    inputs: Mapping[str, str | Path] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:  # as JSON stores them, so a reloaded record compares equal
        self.config = json.loads(json.dumps(dict(self.config), sort_keys=True, default=str))
        self.values = json.loads(json.dumps(dict(self.values), sort_keys=True, default=str))

    def _config_key(self) -> str:
        return digest(self.config)

    def _digest(self, path: str | Path, name: str) -> str:
        kind = "model" if isinstance(path, ModelInput) else None
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{self.name}: its input {name} ({path}) does not exist")
        return _input_digest(self.run, path, kind)

    def fingerprint(self) -> str:
        """A digest of the config, the values and the content of every input: the key of what this stage
        would produce now (resumable work is keyed by it, so a changed input never resumes old work)."""
        return digest(self.config, self.values, {name: self._digest(path, name) for name, path in self.inputs.items()})

    def status(self) -> Status:
        """Compare the recorded run with the config, inputs and outputs as they are now."""
        entry = self.run.manifest()["stages"].get(self.name)
        if not entry or "inputs" not in entry:
            return Status(False, ["never run (or run by an msr without provenance)"])
        reasons = []
        if entry.get("config_key") != self._config_key():
            old = entry.get("config", {})
            changed = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
            reasons.append(f"config changed ({', '.join(changed) or 'its form'})")
        old_values = entry.get("values", {})
        reasons += [f"{k} changed" for k in sorted(set(old_values) | set(self.values))
                    if digest(old_values.get(k)) != digest(self.values.get(k))]
        recorded = entry["inputs"]
        reasons += [f"new input {name}" for name in self.inputs if name not in recorded]
        reasons += [f"input {name} is no longer read" for name in recorded if name not in self.inputs]
        reasons += [f"input {name} is now {path}, was {recorded[name]['path']}" for name, path in self.inputs.items()
                    if name in recorded and _portable(self.run, path) != recorded[name]["path"]]
        if reasons:
            return Status(False, reasons)
        return recorded_status(self.run, self.name, self.outputs)

    def is_current(self, force: bool = False) -> bool:
        """True when the recorded run matches; logs why it does not (or that `force` re-runs it)."""
        if force:
            log.info("%s: re-running (--force)", self.name)
            return False
        status = self.status()
        if status.current:
            log.info("%s: outputs in %s are current (use --force to redo)", self.name, self.run.root)
        else:
            log.info("%s: running: %s", self.name, status)
        return status.current

    def commit(self) -> None:
        """Record the run: call once every output is written. Inputs are digested as they are now, so an
        input edited while the stage ran makes the next check re-run it."""
        self.run.record(self.name, {
            "config_key": self._config_key(),
            "config": self.config,
            "values": self.values,
            "inputs": {name: {"path": _portable(self.run, path), "digest": self._digest(path, name),
                              **({"kind": "model"} if isinstance(path, ModelInput) else {})}
                       for name, path in self.inputs.items()},
            "outputs": {out: self.run.content_digest(self.run.path(out)) for out in self.outputs},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "msr_version": __version__,
        })


def stage_config(cfg: Any, exclude: tuple[str, ...] = ("run_dir", "force")) -> dict:
    """A config dataclass as a stage records it: every field but those that only say where the run is or
    whether to redo it (so a copied or moved run directory keeps its provenance)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in exclude}


def one_writer(stage: str | Callable[[Any], str]) -> Callable:
    """Decorate a stage's entry point `fn(cfg, ...)`: it holds the stage's lock in `cfg.run_dir` while it runs,
    so a second process running the same stage on the same run directory fails at once (`StageBusyError`)
    instead of duplicating or interleaving its work. `stage` is the lock's name, or a function of `cfg`."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def locked(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            with RunDir(cfg.run_dir).lock(stage(cfg) if callable(stage) else stage):
                return fn(cfg, *args, **kwargs)
        return locked
    return decorate


def _portable(run: RunDir, path: str | Path) -> str:
    """How an input's path is recorded: relative to the run directory when inside it (so a copied or moved
    run keeps its provenance), else absolute."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(run.root.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def recorded_status(run: RunDir, name: str, outputs: list[str] | None = None) -> Status:
    """Whether the run the manifest records for stage `name` still holds: each input it read still has the
    digest it had, and each output (all recorded ones, or `outputs`) the digest the stage wrote. A downstream
    stage checks its upstream this way, without knowing the upstream's config."""
    entry = run.manifest()["stages"].get(name)
    if not entry or "inputs" not in entry:
        return Status(False, [f"{name} was never run here (or by an msr without provenance)"])
    reasons = []
    for input_name, seen in entry["inputs"].items():
        path = run.path(seen["path"])  # relative to the run, or absolute
        if not path.exists():
            reasons.append(f"input {input_name} ({path}) is missing")
        elif _input_digest(run, path, seen.get("kind")) != seen["digest"]:
            reasons.append(f"input {input_name} ({path}) changed")
    written = entry.get("outputs", {})
    for out in outputs if outputs is not None else list(written):
        path = run.path(out)
        if out not in written:
            reasons.append(f"output {out} was not written by the recorded run")
        elif not path.exists():
            reasons.append(f"output {out} is missing")
        elif written[out] != run.content_digest(path):
            reasons.append(f"output {out} changed since {name} wrote it (an interrupted run, or an edit)")
    return Status(not reasons, reasons)


def require_current(run: RunDir, name: str, command: str, outputs: list[str] | None = None) -> None:
    """Refuse to read the outputs of stage `name` when they are stale: say what changed and what redoes it."""
    status = recorded_status(run, name, outputs)
    if not status.current:
        raise ValueError(f"{run.root}: {name} is not current ({status}); re-run `{command}`")
