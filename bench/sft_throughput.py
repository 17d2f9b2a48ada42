"""Benchmark: SFT step time of TRL's SFTTrainer against a bare PyTorch loop, on CPU.

What `msr.train.train` runs, on msr-shaped rows, offline:

- model: a random-weight LLaVA (Llama text model --hidden 512 x --layers 6, --intermediate 1536,
  21.8M parameters in all; msr.tiny's small CLIP tower, 56x56 images in 14-pixel patches = 16 image
  tokens) with msr.tiny's BPE tokenizer (trained on the rows' texts) and LlavaProcessor, saved to a
  temp dir and loaded back by `msr.models.load_model(..., for_training=True)` (the real
  `from_pretrained` path); LoRA from `msr.train.peft_config` (TRL's ModelConfig defaults: r=16,
  alpha=32, dropout 0.05) on every linear projection of the language model.
- rows: --rows prompt/completion rows built as `msr data sft` builds them (`recommendation_parts`
  with the `recommend_user` / `recommend_candidate` prompts: a 60-100 word preference text, 5
  history titles, then the image, a candidate title + summary; `recommendation_messages` /
  `answer_messages`, Yes or No), one 56x56 JPEG cover each,
  written as files, cast to `datasets.List(datasets.Image())`, saved where a run keeps them (`sft/train`).

(a) trainer: `trl.SFTTrainer` built by `msr.train.build_trainer` (msr's QuestionCollator, which tokenizes each
    row's whole conversation as the scorer does, after the parity guard), SFTConfig's defaults except use_cpu, bf16=False, max_length=None,
    report_to=none, save_strategy=no and the settings listed in `trainer_settings` (the flags
    below; --activation_checkpointing is off unless asked, TRL's default is on). A TrainerCallback
    records time.perf_counter() at every on_step_end; the time of optimizer step k is
    end(k) - end(k-1), so it holds everything the Trainer does for that step: fetching the rows
    and decoding their images, the collator (chat template, tokenizer, image processor), forward,
    backward, gradient norm and clipping, optimizer, scheduler, zero_grad, callbacks, logging
    (logging runs after on_step_end: it counts in the next step). The first --warmup steps are
    not timed. `trainer_phases_ms` splits a step: `data` (previous end -> on_step_begin: logging,
    dataloader, collator), `to_forward` (-> the model's forward pre-hook), `fwd_bwd_clip`
    (-> on_pre_optimizer_step), `optimizer` (-> on_optimizer_step), `after` (-> on_step_end).
(b) bare: the checkpoint loaded again, `peft.get_peft_model` with the same LoraConfig, and the
    SAME batches: a forward pre-hook on the trainer's model keeps a reference to each batch the
    trainer's own collator produced (no copy, no compute), and bare step k replays batch k:
    `model(**batch, use_cache=False).loss; loss.backward(); clip_grad_norm_; optimizer.step();
    optimizer.zero_grad()`, torch.optim.AdamW with the trainer's lr, betas, eps, weight decay
    and `fused` (the trainer's default optim is adamw_torch_fused). Clipping is included when
    max_grad_norm > 0 (msr keeps TRL's 1.0, and the Trainer computes the gradient norm on every
    step even with clipping off, to log it); `bare_phases_ms` shows what it costs (~1 ms).

Schedule: by default bare step k runs right after trainer step k, inside an on_step_end callback
whose span is measured and subtracted exactly from the trainer's step k+1, so that a slow spell
of a shared machine hits both sides alike (`--schedule sequential` runs the whole bare loop after
training instead; it gives the same ratio on a quiet machine). `contended_steps` counts pairs in
which a side took over twice the smaller median; `matmul_probe_ms` (before, after) above ~1 ms
means another process had the cores. If either is not small, run again.

overhead_ratio = median trainer step / median bare step (overhead_ratio_paired: median of the
per-step ratios). tokens_per_s = mean non-padding tokens per timed step (attention mask, image
tokens included) / the median trainer step; tokens_per_s_wall = all their tokens / all their time
(the same on a quiet machine, lower when some steps were contended). Not overhead on either side, but not identical either:
TRL's fused LM head (log-probs, entropy and top-1 of the label positions only, in tiles) where the
bare loop builds all logits and takes the model's own loss; on CPU with a 1024-token vocabulary the
fused head's forward + backward is ~1-2% slower. `first_step_loss` of the two sides must be equal
(LoRA B starts at zero: the first loss depends only on the shared weights and the shared batch).
With --activation_checkpointing true the trainer recomputes every layer's forward in the
backward pass; --bare_checkpointing true makes the bare loop do the same, to compare like with like.

Prints one JSON object on its last line.

    python bench/sft_throughput.py
    python bench/sft_throughput.py --activation_checkpointing true   # TRL's SFTConfig default
    python bench/sft_throughput.py --activation_checkpointing true --bare_checkpointing true
    python bench/sft_throughput.py --dataloader_num_workers 1 --logging_steps 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import datasets
import numpy as np
import torch
from common import (
    _SUMMARY,
    _cover_jpeg,
    _fill,
    _title,
    _user_text,
    add_model_arguments,
    build_vlm,
    matmul_ms,
)
from peft import get_peft_model
from transformers import (
    TrainerCallback,
)
from transformers.utils import logging as hf_logging
from trl import ModelConfig, SFTConfig

from msr.data.sft import STAGE as SFT_STAGE
from msr.data.sft import answer_messages, recommendation_messages, recommendation_parts
from msr.models import load_model
from msr.prompts import load_prompt
from msr.provenance import Stage
from msr.rundir import RunDir
from msr.tiny import IMAGE_SIZE
from msr.train import SftScriptArguments, build_trainer, peft_config


def make_rows(root: Path, n: int, history: int, seed: int) -> list[str]:
    """Write `msr data sft`-shaped rows into `root/run/sft/train`; return the texts the tokenizer learns."""
    rng = np.random.default_rng(seed)
    prompts = (load_prompt("recommend_user"), load_prompt("recommend_candidate"))
    covers = root / "covers"
    covers.mkdir(parents=True)
    rows, texts = [], [p.text for p in prompts]
    for k in range(n):
        user, titles = _user_text(rng), [_title(rng) for _ in range(history + 1)]
        summary = _fill(rng, _SUMMARY)
        path = covers / f"{k}.jpg"
        path.write_bytes(_cover_jpeg(rng, IMAGE_SIZE))
        user_part, candidate_part = recommendation_parts(prompts, user, titles[:-1], titles[-1], summary)
        label = int(rng.random() < 0.5)
        rows.append({"images": [str(path)], "prompt": recommendation_messages(user_part, candidate_part, True),
                     "completion": answer_messages(label), "user": str(k % 50), "item": str(k), "label": label})
        texts += [user, summary, *titles]
    # exactly as msr.data.sft.write_sft_rows writes them, where msr.train.build_trainer reads them (a run's sft/train)
    dataset = datasets.Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
    dataset.save_to_disk(str(root / "run" / "sft" / "train"))
    Stage(RunDir(root / "run"), SFT_STAGE, {}, outputs=["sft/train"]).commit()  # as msr data sft records its rows
    return texts


# --------------------------------------------------------------------------- timing




class StepClock(TrainerCallback):
    """perf_counter marks of every optimizer step; `forward` is set by the model's forward pre-hook,
    `bare_begin` / `bare_end` by InterleavedBare."""

    def __init__(self) -> None:
        self.marks: list[dict[str, float]] = []
        self.current: dict[str, float] = {}

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = {"begin": time.perf_counter()}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.current["pre_optimizer"] = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.current["optimizer"] = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.current["end"] = time.perf_counter()
        self.marks.append(self.current)


class BareLoop:
    """(b): the same checkpoint loaded again, the same LoRA, a plain PyTorch loop over given batches."""

    PHASES = ("forward", "backward", "clip", "optimizer", "zero_grad")

    def __init__(self, model_dir: Path, training: SFTConfig, model_cfg: ModelConfig, checkpointing: bool):
        loaded = load_model(str(model_dir), "float32", for_training=True)
        torch.manual_seed(training.seed)
        self.model = get_peft_model(loaded.model, peft_config(model_cfg, loaded.model))
        if checkpointing:  # what the Trainer + TRL do with activation_checkpointing on
            self.model.activation_checkpointing_enable()
            self.model.enable_input_require_grads()
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.max_grad_norm = training.max_grad_norm
        self.optimizer = torch.optim.AdamW(
            self.params, lr=training.learning_rate, betas=(training.adam_beta1, training.adam_beta2),
            eps=training.adam_epsilon, weight_decay=training.weight_decay, fused="fused" in str(training.optim.value))
        self.times: list[dict[str, float]] = []
        self.first_loss: float | None = None

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        t0 = time.perf_counter()
        loss = self.model(**batch, use_cache=False).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        t3 = time.perf_counter()
        self.optimizer.step()
        t4 = time.perf_counter()
        self.optimizer.zero_grad()
        t5 = time.perf_counter()
        if self.first_loss is None:
            self.first_loss = float(loss.detach())
        self.times.append({"step": t5 - t0, **dict(zip(self.PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)))})


class InterleavedBare(TrainerCallback):
    """Runs bare step k on the trainer's batch k right after the trainer's step k (after StepClock's mark), so
    that a slow spell of the machine hits both sides; its span is recorded and subtracted from the trainer's."""

    def __init__(self, bare: BareLoop, batches: list[dict[str, torch.Tensor]], clock: StepClock):
        self.bare, self.batches, self.clock = bare, batches, clock

    def on_step_end(self, args, state, control, **kwargs):
        mark = self.clock.marks[-1]
        mark["bare_begin"] = time.perf_counter()
        self.bare.step(self.batches[state.global_step - 1])
        mark["bare_end"] = time.perf_counter()


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1e3, 1)


def run(model_dir: Path, out_dir: Path, args: argparse.Namespace) -> dict:
    """(a) SFTTrainer as msr.train.build_trainer builds it, and (b) the bare loop on the batches the trainer trained on."""
    model_cfg = ModelConfig(model_name_or_path=str(model_dir), use_peft=True, dtype="float32")
    script = SftScriptArguments(run_dir=str(out_dir.parent / "run"), eval_split=None)
    training = SFTConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, max_length=None, report_to="none", save_strategy="no",
        per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps, seed=args.seed,
        activation_checkpointing=args.activation_checkpointing, logging_steps=args.logging_steps,
        max_grad_norm=args.max_grad_norm, dataloader_num_workers=args.dataloader_num_workers,
        disable_tqdm=args.disable_tqdm)
    clock = StepClock()
    trainer = build_trainer(script, training, model_cfg)  # msr's collator, rows as msr reads them, the parity guard
    trainer.add_callback(clock)
    dataset = trainer.train_dataset
    bare = BareLoop(model_dir, training, model_cfg, args.bare_checkpointing)
    batches: list[dict[str, torch.Tensor]] = []
    first_loss: list[float] = []

    def keep_batch(module, call_args, kwargs):  # a reference to what the collator produced: no copy, no compute
        if module.training:
            clock.current["forward"] = time.perf_counter()
            batches.append({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    def first_step_loss(module, call_args, kwargs, output):  # removed after the first (untimed) step
        if module.training and not first_loss:
            first_loss.append(float(-output.log_probs.detach().sum() / output.label_mask.sum()))

    trainer.model.register_forward_pre_hook(keep_batch, with_kwargs=True)
    loss_hook = trainer.model.register_forward_hook(first_step_loss, with_kwargs=True)

    collator, collate = trainer.data_collator, [time.perf_counter()]
    for k in range(args.collate_probe):  # the main process's data work per step (rows, image decoding, collator)
        collator([dataset[(k * args.batch_size + j) % len(dataset)] for j in range(args.batch_size)])
        collate.append(time.perf_counter())

    class DropLossHook(TrainerCallback):
        def on_step_end(self, *a, **kw):
            loss_hook.remove()

    trainer.add_callback(DropLossHook())
    if args.schedule == "interleaved":
        trainer.add_callback(InterleavedBare(bare, batches, clock))
    trainer.train()
    if args.schedule == "sequential":
        for batch in batches:
            bare.step(batch)

    marks = clock.marks
    if len(batches) != len(marks):  # one forward per optimizer step, so batch k is step k's
        raise RuntimeError(f"{len(batches)} recorded batches for {len(marks)} steps")
    # the trainer's time for step k runs from the end of step k-1, less the bare step run in between (if any)
    gap = [m.get("bare_end", 0.0) - m.get("bare_begin", 0.0) for m in marks]
    timed = range(args.warmup, len(marks))
    steps = [marks[k]["end"] - marks[k - 1]["end"] - gap[k - 1] for k in timed]
    phases = {
        "data": [marks[k]["begin"] - marks[k - 1]["end"] - gap[k - 1] for k in timed],
        "to_forward": [marks[k]["forward"] - marks[k]["begin"] for k in timed],
        "fwd_bwd_clip": [marks[k]["pre_optimizer"] - marks[k]["forward"] for k in timed],
        "optimizer": [marks[k]["optimizer"] - marks[k]["pre_optimizer"] for k in timed],
        "after": [marks[k]["end"] - marks[k]["optimizer"] for k in timed],
    }
    bare_times = bare.times[args.warmup:args.warmup + args.steps]
    settings = {k: getattr(training, k) for k in (
        "activation_checkpointing", "logging_steps", "max_grad_norm", "dataloader_num_workers", "learning_rate",
        "disable_tqdm")}
    settings["optim"] = str(training.optim.value)
    settings["collator"] = type(trainer.data_collator).__name__
    return {"trainer_steps": steps, "trainer_phases": {k: _ms(v) for k, v in phases.items()},
            "bare_steps": [t["step"] for t in bare_times],
            "bare_phases": {p: _ms([t[p] for t in bare_times]) for p in BareLoop.PHASES},
            "first_loss": {"trainer": round(first_loss[0], 5), "bare": round(bare.first_loss, 5)},
            "collate_ms": _ms([b - a for a, b in zip(collate, collate[1:])]) if args.collate_probe else None,
            "batches": batches[args.warmup:args.warmup + args.steps], "settings": settings,
            "trainable": sum(p.numel() for p in bare.params), "max_grad_norm": training.max_grad_norm}


# --------------------------------------------------------------------------- main


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=192)
    parser.add_argument("--batch_size", type=int, default=8, help="[8, TRL's default]")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed optimizer steps first (>= 1).")
    parser.add_argument("--steps", type=int, default=20, help="Timed optimizer steps (medians reported).")
    parser.add_argument("--history", type=int, default=5, help="History titles in each prompt.")
    add_model_arguments(parser)
    # SFTConfig settings under study; TRL's SFTConfig defaults in brackets
    parser.add_argument("--activation_checkpointing", type=_bool, default=False,
                        help="Recompute activations in the backward pass [TRL's SFTConfig: true].")
    parser.add_argument("--logging_steps", type=float, default=10, help="[10]")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="[1.0]; both sides clip when > 0.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="[0]")
    parser.add_argument("--disable_tqdm", type=_bool, default=False, help="[false]")
    parser.add_argument("--bare_checkpointing", type=_bool, default=False,
                        help="Also recompute activations in the bare loop (to compare like with like).")
    parser.add_argument("--collate_probe", type=int, default=5,
                        help="Times the collator alone on this many batches before training (0: skip).")
    parser.add_argument("--schedule", choices=("interleaved", "sequential"), default="interleaved",
                        help="Bare step k right after trainer step k (default), or the whole bare loop after training.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (a step's time runs from the previous step's end)")
    if args.rows < args.batch_size * (args.warmup + args.steps):
        parser.error("--rows must cover batch_size * (warmup + steps): one epoch, no repeated rows")
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        texts = make_rows(root, args.rows, args.history, args.seed)
        model_dir = root / "vlm"
        params = build_vlm(model_dir, texts, args)
        setup_s = time.perf_counter() - start
        probe = [matmul_ms()]
        result = run(model_dir, root / "out", args)
        probe.append(matmul_ms())
    batches = result["batches"]
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    lengths = [b["input_ids"].shape[1] for b in batches]
    trainer_steps, bare_steps = result["trainer_steps"], result["bare_steps"]
    trainer_s, bare_s = statistics.median(trainer_steps), statistics.median(bare_steps)
    print(json.dumps({
        "bench": "sft_throughput", "threads": args.threads, "params": params, "trainable_params": result["trainable"],
        "rows": args.rows, "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps,
        "schedule": args.schedule,
        "seq_len": {"min": min(lengths), "mean": round(statistics.mean(lengths), 1), "max": max(lengths)},
        "tokens_per_row": round(sum(tokens) / (len(batches) * args.batch_size), 1),
        "tokens_per_s": round(statistics.mean(tokens) / trainer_s, 1),
        "bare_tokens_per_s": round(statistics.mean(tokens) / bare_s, 1),
        "tokens_per_s_wall": round(sum(tokens) / sum(trainer_steps), 1),
        "trainer_step_ms": round(trainer_s * 1e3, 1), "bare_step_ms": round(bare_s * 1e3, 1),
        "overhead_ratio": round(trainer_s / bare_s, 3),
        "overhead_ratio_paired": round(statistics.median(t / b for t, b in zip(trainer_steps, bare_steps)), 3),
        # steps where either side took over twice the smaller median: another process had the cores
        "contended_steps": sum(max(t, b) > 2 * min(trainer_s, bare_s) for t, b in zip(trainer_steps, bare_steps)),
        "trainer_step_ms_all": [round(t * 1e3, 1) for t in trainer_steps],
        "bare_step_ms_all": [round(t * 1e3, 1) for t in bare_steps],
        "trainer_phases_ms": result["trainer_phases"], "bare_phases_ms": result["bare_phases"],
        "collate_ms": result["collate_ms"], "first_step_loss": result["first_loss"],
        "trainer_settings": result["settings"], "bare_checkpointing": args.bare_checkpointing,
        "bare_includes_grad_clip": result["max_grad_norm"] > 0,
        "matmul_probe_ms": probe, "setup_seconds": round(setup_s, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }))

if __name__ == "__main__":
    main()
