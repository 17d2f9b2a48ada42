"""Benchmark: scoring throughput of msr's Scorer against `generate` and a plain batched forward, on CPU.

What `msr score` runs, on msr-shaped prompts, offline:

- model: a random-weight VLM of --family (default qwen2_5_vl, the recipes' default; any msr.tiny VLM family), a
  language model of --hidden 512 x --layers 6, --intermediate 1536 (~21.6M parameters in all) with msr.tiny's small
  vision tower, tokenizer (trained on the prompts' texts), real processor classes and a chat template that renders
  the family's published format; saved to a temp dir and loaded back by `msr.models.load_model(..., "float32",
  "cpu")` (the real `from_pretrained` path).
- prompts: --users users with --candidates candidates each (1 positive + 20 negatives), built as
  `msr data sft` builds them (`recommendation_parts` with the `recommend_user` / `recommend_candidate`
  prompts, `recommendation_messages`): the user part (a --user_words word preference text and
  --history history titles, ~300 tokens), then the candidate's own cover (a JPEG file, 16 image tokens where the
  family allows: `COVER_SIZE`), title and a --summary_words word item summary.
- what is shared: the user part comes before the candidate's image, so every candidate of a user shares the chat
  header and the user part, except where the family's published template renders a turn's images before its
  text (LLaVA-1.5, LLaVA-NeXT): there only the turn header (`<s> USER: ` / `<s> [INST] `) is shared and prefix
  reuse saves next to nothing. The M-RoPE families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) get the suffix's 3-D
  positions from the model's own get_rope_index over the full prompt.

Each method scores every candidate of every user, 21 candidates of a user in one left-padded batch
(images loaded from their files and run through the processor inside the timed region on all sides):

(a) generate: what the public MLLM-MSR code does: `model.generate(max_new_tokens=30,
    min_new_tokens=30, do_sample=False, output_scores=True, return_dict_in_generate=True)` per
    batch, P(Yes) = softmax over the {Yes, No} entries of the first step's scores. min_new_tokens
    makes it pay for all 30 tokens, as their code does with a fine-tuned model that keeps talking
    (it only masks eos, which is neither Yes nor No).
(b) plain forward: `msr.score.Scorer(loaded, prefix_reuse=False, batch_size=21)`: one forward of the
    full prompts with logits_to_keep=1.
(c) msr: `Scorer(loaded, prefix_reuse=True, batch_size=21)`: the shared prefix is prefilled once,
    its KV cache repeated over the candidates, which then run their own tokens only.

After one untimed warm-up user per method, each method's pass over all users is timed --repeats
times, methods interleaved (a, b, c, a, b, c, ...) so that a slow spell of a shared machine hits
all of them; medians are reported. `max_abs_diff` = max |P_b - P_c| (must be <= 1e-4);
`max_abs_diff_generate` = max |P_a - P_b|. `matmul_probe_ms` (before, after) above ~1 ms means
another process had the cores: run again. `profile_one_user_s` splits one user's (b) and (c) into the
processor (image loading, chat template, tokenizer, image processor), the vision tower + projector
(`get_image_features`: LLaVA's vision_tower + multi_modal_projector, Qwen2.5-VL's visual with its
merger), and the language model, to show where the time goes.

Prints one JSON object on its last line.

    python bench/score_throughput.py
    python bench/score_throughput.py --family llava_next
    python bench/score_throughput.py --users 8 --repeats 5
    python bench/score_throughput.py --hidden 128 --layers 2 --intermediate 384 --users 2 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from msr.data.sft import recommendation_messages, recommendation_parts
from msr.models import load_model
from msr.parity import question_inputs
from msr.prompts import load_prompt
from msr.score import Scorer
from msr.tiny import IMAGE_SIZE

sys.path.insert(0, str(Path(__file__).resolve().parent))
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

# per family: the covers' side in pixels, 16 image tokens each where the family allows (LLaVA: 4x4 patches of 14
# pixels; Qwen2-VL/Qwen2.5-VL: 8x8 patches of 14 pixels merged 2x2, 28 pixels per token; Qwen3-VL: 8x8 of 16 pixels
# merged 2x2); LLaVA-NeXT adds its anyres tiles and Idefics3 its 2x2 pixel shuffle (4 tokens) to the same 56 pixels
COVER_SIZE = {"qwen2_5_vl": 112, "llava": IMAGE_SIZE, "llava_next": IMAGE_SIZE, "idefics3": IMAGE_SIZE,
              "qwen2_vl": 112, "qwen3_vl": 128}

# --------------------------------------------------------------------------- prompts


def make_users(root: Path, args: argparse.Namespace) -> tuple[list[tuple[list[list[dict]], list[str]]], list[str]]:
    """Per user: the candidates' conversations (positive first) and their image files; and the texts the
    tokenizer learns."""
    rng = np.random.default_rng(args.seed)
    prompts = (load_prompt("recommend_user"), load_prompt("recommend_candidate"))
    covers = root / "covers"
    covers.mkdir(parents=True)
    users, texts = [], [p.text for p in prompts]
    for u in range(args.users + 1):  # one more: the warm-up user
        text = _user_text(rng, args.user_words, args.user_words + 20)
        history = [_title(rng) for _ in range(args.history)]
        conversations, images = [], []
        for c in range(args.candidates):
            title = _title(rng)
            summary = " ".join(_fill(rng, _SUMMARY).split()[:args.summary_words]).rstrip(",;:") + "."
            path = covers / f"{u}_{c}.jpg"
            path.write_bytes(_cover_jpeg(rng, COVER_SIZE[args.family]))
            user_part, candidate_part = recommendation_parts(prompts, text, history, title, summary)
            conversations.append(recommendation_messages(user_part, candidate_part, True))
            images.append(str(path))
            texts += [title, summary]
        users.append((conversations, images))
        texts += [text, *history]
    return users, texts


# --------------------------------------------------------------------------- methods


def processor_inputs(loaded, conversations: list[list[dict]], images: list[str]) -> dict:
    """The left-padded batch exactly as msr.score.Scorer builds it (`msr.parity.question_inputs`: images decoded
    from their files by `load_rgb`)."""
    rows = [{"prompt": messages, "images": [path]} for messages, path in zip(conversations, images)]
    return question_inputs(loaded.processor, loaded.is_vlm, rows).to(loaded.model.device)


class Generate:
    """(a) the MLLM-MSR way: generate 30 tokens per candidate batch, P(Yes) from the first step's scores."""

    def __init__(self, loaded, yes: int, no: int, new_tokens: int):
        self.loaded, self.yes, self.no, self.new_tokens = loaded, yes, no, new_tokens
        self.generated: list[int] = []

    @torch.inference_mode()
    def score(self, conversations: list[list[dict]], images: list[str]) -> np.ndarray:
        inputs = processor_inputs(self.loaded, conversations, images)
        out = self.loaded.model.generate(
            **inputs, max_new_tokens=self.new_tokens, min_new_tokens=self.new_tokens, do_sample=False,
            output_scores=True, return_dict_in_generate=True, pad_token_id=self.loaded.tokenizer.pad_token_id)
        self.generated.append(out.sequences.shape[1] - inputs["input_ids"].shape[1])
        pair = out.scores[0][:, [self.yes, self.no]].float()
        return torch.softmax(pair, dim=-1)[:, 0].cpu().numpy()


def run_all(method, users) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    scores = [method.score(conversations, images) for conversations, images in users]
    return time.perf_counter() - t0, np.concatenate(scores)


@torch.inference_mode()
def profile(loaded, scorer: Scorer, conversations, images) -> dict[str, float]:
    """Seconds of one user's batch: processor, vision tower + projector, and the language model, for (b) and (c)
    (the vision part is timed by forward hooks on get_image_features' modules: LLaVA's tower and projector,
    Qwen2.5-VL's visual, merger included)."""
    model = loaded.model
    spans: list[float] = []
    starts: list[float] = []
    hooks = []
    vision = [getattr(model.model, name) for name in ("vision_tower", "multi_modal_projector", "visual", "vision_model",
                                                     "connector")
              if hasattr(model.model, name)]
    for module in vision:
        hooks.append(module.register_forward_pre_hook(lambda *a: starts.append(time.perf_counter())))
        hooks.append(module.register_forward_hook(lambda *a: spans.append(time.perf_counter() - starts.pop())))
    try:
        t0 = time.perf_counter()
        processor_inputs(loaded, conversations, images)
        processor_s = time.perf_counter() - t0
        result = {"processor": round(processor_s, 4)}
        for name, reuse in (("plain", False), ("prefix", True)):
            scorer.prefix_reuse = reuse
            spans.clear()
            t0 = time.perf_counter()
            scorer.score(conversations, images)
            total = time.perf_counter() - t0
            vision = sum(spans)
            result[f"{name}_total"] = round(total, 4)
            result[f"{name}_vision"] = round(vision, 4)
            result[f"{name}_language_model"] = round(total - processor_s - vision, 4)
    finally:
        for hook in hooks:
            hook.remove()
        scorer.prefix_reuse = True
    return result


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4, help="Timed users (one more is the warm-up).")
    parser.add_argument("--candidates", type=int, default=21, help="Per user: 1 positive + 20 negatives.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed passes per method (medians reported).")
    parser.add_argument("--new_tokens", type=int, default=30, help="(a) generates this many tokens.")
    parser.add_argument("--user_words", type=int, default=170, help="Preference text of this many (+20) words.")
    parser.add_argument("--summary_words", type=int, default=8, help="Candidate summary cut to this many words.")
    parser.add_argument("--history", type=int, default=10, help="History titles in the user part.")
    add_model_arguments(parser, families=tuple(COVER_SIZE), default_family="qwen2_5_vl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        users, texts = make_users(root, args)
        params = build_vlm(root / "vlm", texts, args)
        loaded = load_model(str(root / "vlm"), "float32", "cpu")
        plain = Scorer(loaded, prefix_reuse=False, batch_size=args.candidates)
        prefix = Scorer(loaded, prefix_reuse=True, batch_size=args.candidates)
        generate = Generate(loaded, plain.yes, plain.no, args.new_tokens)
        methods = {"generate": generate, "plain_forward": plain, "prefix_reuse": prefix}
        warmup, timed = users[:1], users[1:]

        # token counts, measured from the tokenized prompts (non-padding tokens, the 16 image tokens included)
        prefix_tokens, candidate_tokens, image_tokens = [], [], set()
        image_id = getattr(loaded.model.config, "image_token_id", None)
        image_id = getattr(loaded.model.config, "image_token_index", None) if image_id is None else image_id
        before = prefix.reused_tokens
        for conversations, images in timed:
            batch = processor_inputs(loaded, conversations, images)
            mask = batch["attention_mask"]
            image_tokens.update((batch["input_ids"] == image_id).sum(1).tolist())
            prefix.reused_tokens = 0
            prefix.score(conversations, images)
            shared = prefix.reused_tokens // (len(conversations) - 1)
            prefix_tokens.append(shared)
            candidate_tokens += (mask.sum(1) - shared).tolist()
        prefix.reused_tokens = before
        setup_s = time.perf_counter() - start

        for method in methods.values():
            run_all(method, warmup)
        probe = [matmul_ms()]
        seconds: dict[str, list[float]] = {name: [] for name in methods}
        scores: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, method in methods.items():
                elapsed, scores[name] = run_all(method, timed)
                seconds[name].append(elapsed)
        probe.append(matmul_ms())
        split = profile(loaded, prefix, *timed[0])

    median = {name: statistics.median(values) for name, values in seconds.items()}
    pairs = len(scores["plain_forward"])
    tokens = sum(prefix_tokens) * args.candidates + sum(candidate_tokens)
    print(json.dumps({
        "bench": "score_throughput", "family": args.family, "threads": args.threads, "params": params,
        "users": args.users, "candidates": args.candidates, "pairs": pairs, "repeats": args.repeats,
        "prefix_tokens": {"min": min(prefix_tokens), "mean": round(statistics.mean(prefix_tokens), 1),
                          "max": max(prefix_tokens)},
        "candidate_tokens": {"min": min(candidate_tokens), "mean": round(statistics.mean(candidate_tokens), 1),
                             "max": max(candidate_tokens)},
        "image_tokens": min(image_tokens) if len(image_tokens) == 1 else sorted(image_tokens),
        "image_size": COVER_SIZE[args.family],
        "prefix_share_of_tokens": round(sum(prefix_tokens) * args.candidates / tokens, 3),
        "generated_tokens": sorted(set(generate.generated)),
        "seconds": {name: round(value, 3) for name, value in median.items()},
        "seconds_all": {name: [round(v, 3) for v in values] for name, values in seconds.items()},
        "pairs_per_s": {name: round(pairs / value, 2) for name, value in median.items()},
        "speedup_vs_generate": round(median["generate"] / median["prefix_reuse"], 2),
        "speedup_vs_plain_forward": round(median["plain_forward"] / median["prefix_reuse"], 2),
        "max_abs_diff": float(np.abs(scores["plain_forward"] - scores["prefix_reuse"]).max()),
        "max_abs_diff_generate": float(np.abs(scores["generate"] - scores["plain_forward"]).max()),
        "agree": bool(np.abs(scores["plain_forward"] - scores["prefix_reuse"]).max() <= 1e-4),
        "p_yes_range": [round(float(scores["prefix_reuse"].min()), 4), round(float(scores["prefix_reuse"].max()), 4)],
        "profile_one_user_s": split,
        "matmul_probe_ms": probe, "setup_seconds": round(setup_s, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
    }))


if __name__ == "__main__":
    main()
