"""P(Yes) for (user, candidate) pairs: one forward pass per candidate batch, never `generate`.

Score = softmax over the {Yes, No} logits at the answer position, read with `logits_to_keep=1`
from a left-padded batch. With prefix reuse, the tokens every candidate of an example shares
(chat header, the user's preference text and history) are prefilled once and their KV cache is
repeated over the candidates, whose own tokens then run with explicit position ids. The prefix
stops before the first multimodal token: image placeholders are identical ids with different
pixels. Families whose rotary positions are 3-D and depend on the images (M-RoPE: Qwen2-VL,
Qwen2.5-VL, Qwen3-VL) get the suffix's positions from the model's own rope index over the full
prompt: a text-only prefix has plain positions 0..n-1 on all three axes, so the prefilled prefix
plus those positions reproduce full-prompt logits. Other families whose positions depend on the
images, unverified here, score full prompts and say so.
"""

from __future__ import annotations

import logging
import numpy as np
import torch

from msr.data.sft import answer_messages, recommendation_messages
from msr.models import LoadedModel, PromptTooLongError, image_batches, max_positions
from msr.parity import check_parity, question_inputs

log = logging.getLogger(__name__)

# M-RoPE model types whose `get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, ...,
# attention_mask)` gives full-prompt positions; the suffix reuses them (exact, tested)
MROPE_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
# model types whose positions depend on the images in a way msr does not reproduce: full prompts
POSITION_UNSAFE = ("glm4v", "glm4v_moe")
# per-token inputs the processor returns beside input_ids, sliced like the ids for the suffix
_PER_TOKEN = ("mm_token_type_ids", "token_type_ids")
# a shared prefix shorter than this is not worth its own pass (and the cache copies): the batch runs whole. It is
# what the llava-hf templates leave when the candidates have images (they render a turn's images before its text,
# so the candidates share only `<s> USER: ` / `<s> [INST] `)
MIN_SHARED_PREFIX = 32
# a candidate batch is halved while its rows x padded length exceed this, so one long row cannot multiply memory
MAX_BATCH_TOKENS = 32_768


def _multimodal_ids(loaded: LoadedModel) -> set[int]:
    """Token ids the model replaces by image (or video) features: identical ids carrying different
    pixels, so the shared prefix must stop before the first of them."""
    ids = set()
    for owner in (loaded.model.config, loaded.processor):
        for name in ("image_token_id", "image_token_index", "video_token_id", "video_token_index"):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                ids.add(value)
    if loaded.is_vlm and not ids:
        raise ValueError(f"{loaded.name}: no image token id in the config or processor; run with --prefix_reuse false")
    return ids


def probe_row(label: int = 1) -> dict:
    """A question of msr's shape, without an image, for checking a model before any run's rows exist."""
    return {"prompt": recommendation_messages("What we know about the user: likes hats.\n", 'Title: "Hat".', False),
            "completion": answer_messages(label), "images": []}


class Scorer:
    """Scores candidate batches of one model (with or without a LoRA adapter loaded on it).

    On creation it runs the parity guard (`msr.parity.check_parity`) on `row` (a prompt/completion row of the run;
    by default a probe question) and its twin with or without an image: the ids it will read are the ids training
    supervises, or it refuses. Text-only LMs get the same questions without the images, counted in `images_not_shown`.
    A batch of at most `batch_size` candidates is halved while rows x padded tokens exceed `max_batch_tokens`; a question
    longer than the model's positions is refused (`PromptTooLongError`), never scored truncated."""

    def __init__(self, loaded: LoadedModel, prefix_reuse: bool = True, batch_size: int = 32, row: dict | None = None,
                 max_batch_tokens: int = MAX_BATCH_TOKENS):
        self.loaded = loaded
        self.max_batch_tokens = max_batch_tokens
        self.max_positions = max_positions(loaded.model)
        try:
            self.yes, self.no = check_parity(loaded.processor, loaded.is_vlm, row or probe_row())
        except ValueError as err:
            raise type(err)(f"{loaded.name}: {err}") from None
        self.batch_size = batch_size
        model_type = loaded.model.config.model_type
        self.prefix_reuse = prefix_reuse and model_type not in POSITION_UNSAFE
        if prefix_reuse and not self.prefix_reuse:
            log.warning("%s: %s positions depend on the images in a way msr does not reproduce; scoring full "
                        "prompts (no prefix reuse)", loaded.name, model_type)
        self.rope_index = _rope_index_owner(loaded.model) if model_type in MROPE_TYPES else None
        self.stop_ids = _multimodal_ids(loaded)
        self.reused_tokens = 0  # prefix tokens not recomputed thanks to prefix reuse
        self.images_not_shown = 0  # candidates whose image a text-only LM cannot see
        loaded.tokenizer.padding_side = "left"

    def score(self, conversations: list[list[dict]], images: list[str | None]) -> np.ndarray:
        """P(Yes) for each conversation (candidates of one example, sharing their user part)."""
        out = np.empty(len(conversations), dtype=np.float64)
        if not self.loaded.is_vlm:
            self.images_not_shown += sum(1 for image in images if image)
        for chunk in image_batches(images, self.batch_size):
            out[chunk] = self._batch([conversations[i] for i in chunk], [images[i] for i in chunk])
        return out

    def _inputs(self, conversations: list[list[dict]], images: list[str | None]) -> dict:
        rows = [{"prompt": messages, "images": [image] if image else []} for messages, image in zip(conversations, images)]
        return question_inputs(self.loaded.processor, self.loaded.is_vlm, rows).to(self.loaded.model.device)

    @torch.inference_mode()
    def _batch(self, conversations: list[list[dict]], images: list[str | None]) -> np.ndarray:
        inputs = self._inputs(conversations, images)
        rows, length = inputs["input_ids"].shape
        if self.max_positions and length > self.max_positions:
            longest = int(inputs["attention_mask"].sum(dim=1).argmax())
            raise PromptTooLongError(f"a question of {length} tokens (candidate {longest} of this batch) is longer than "
                                     f"the {self.max_positions} positions of {self.loaded.name}; shorten what the "
                                     "prompt holds (`msr data sft --history_titles`, shorter summaries, "
                                     "`msr data prepare --max_title_chars`) or use a model with more positions")
        if rows > 1 and rows * length > self.max_batch_tokens:  # one long row must not multiply the batch's memory
            half = rows // 2
            return np.concatenate([self._batch(conversations[:half], images[:half]),
                                   self._batch(conversations[half:], images[half:])])
        if self.prefix_reuse and len(conversations) > 1:
            logits = self._with_prefix(inputs)
        else:
            logits = self.loaded.model(**inputs, logits_to_keep=1).logits[:, -1]
        pair = logits[:, [self.yes, self.no]].float()
        return torch.softmax(pair, dim=-1)[:, 0].cpu().numpy()

    def _with_prefix(self, inputs: dict) -> torch.Tensor:
        ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
        rows = [ids[r][mask[r]] for r in range(len(ids))]
        shortest = min(len(r) for r in rows)
        first = rows[0][:shortest]
        same = torch.stack([r[:shortest] == first for r in rows]).all(dim=0)
        length = int(same.long().cumprod(0).sum())
        marks = [i for i, t in enumerate(first.tolist()) if t in self.stop_ids]
        length = min(length, marks[0] if marks else length, shortest - 1)
        model = self.loaded.model
        if length < MIN_SHARED_PREFIX:
            return model(**inputs, logits_to_keep=1).logits[:, -1]
        device, n = ids.device, len(rows)
        full_positions = self._full_positions(inputs)  # (B, L), or (3, B, L) for M-RoPE
        axes = full_positions.shape[:-2]
        # the prefix is text only: plain positions 0..length-1, the same on every M-RoPE axis
        prefix_positions = torch.arange(length, device=device).expand(*axes, 1, length)
        cache = model(input_ids=first[:length][None], attention_mask=torch.ones(1, length, dtype=torch.long,
                      device=device), position_ids=prefix_positions, use_cache=True).cache
        cache.batch_repeat_interleave(n)
        self.reused_tokens += length * (n - 1)

        width = max(len(r) for r in rows) - length
        starts = [ids.shape[1] - len(row) + length for row in rows]  # each suffix's first column in `ids`
        suffix = torch.full((n, width), self.loaded.tokenizer.pad_token_id, dtype=ids.dtype, device=device)
        suffix_mask = torch.zeros((n, width), dtype=torch.long, device=device)
        per_token = {k: torch.zeros((n, width), dtype=inputs[k].dtype, device=device)
                     for k in _PER_TOKEN if k in inputs}
        positions = torch.zeros((*axes, n, width), dtype=full_positions.dtype, device=device)
        for r, start in enumerate(starts):
            tail = slice(width - (ids.shape[1] - start), width)
            suffix[r, tail] = ids[r, start:]
            suffix_mask[r, tail] = 1
            for key, values in per_token.items():
                values[r, tail] = inputs[key][r, start:]
            positions[..., r, tail] = full_positions[..., r, start:]
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", *per_token)}
        attention = torch.cat([torch.ones(n, length, dtype=torch.long, device=device), suffix_mask], 1)
        return model(input_ids=suffix, attention_mask=attention, position_ids=positions, cache=cache,
                     logits_to_keep=1, **per_token, **extra).logits[:, -1]

    def _full_positions(self, inputs: dict) -> torch.Tensor:
        """The full prompts' positions: from the model's own rope index for M-RoPE families (3, batch,
        length), else the plain count of each row's real tokens under left padding (batch, length)."""
        if self.rope_index is None:
            return (inputs["attention_mask"].long().cumsum(1) - 1).clamp(min=0)
        positions, _ = self.rope_index.get_rope_index(
            input_ids=inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=inputs["attention_mask"])
        return positions


def _rope_index_owner(model: torch.nn.Module) -> torch.nn.Module:
    """The submodule that computes M-RoPE positions (the multimodal base model, also under a PEFT wrapper)."""
    owner = next((m for m in model.modules() if callable(getattr(m, "get_rope_index", None))), None)
    if owner is None:
        raise ValueError(f"{type(model).__name__}: an M-RoPE model without get_rope_index; run with --prefix_reuse false")
    return owner
