"""P(Yes) for (user, candidate) pairs: one forward pass per candidate batch, never `generate`.

Score = softmax over the {Yes, No} logits at the answer position, read with `logits_to_keep=1`
from a left-padded batch. With prefix reuse, the tokens every candidate of an example shares
(chat header, the user's preference text and history) are prefilled once and their KV cache is
repeated over the candidates, whose own tokens then run with explicit position ids. The prefix
stops before the first multimodal token: image placeholders are identical ids with different
pixels. Families whose positions depend on the images (M-RoPE: Qwen2-VL and later) always use
the full-prompt path, and say so.
"""

from __future__ import annotations

import logging
import numpy as np
import torch

from msr.data.sft import answer_messages, recommendation_messages
from msr.data.images import load_rgb
from msr.models import LoadedModel, image_batches

log = logging.getLogger(__name__)

# model types whose rotary positions are not a plain 1-D count of tokens
POSITION_UNSAFE = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "glm4v")


def _render(processor, messages: list[dict], **kwargs) -> str:
    return processor.apply_chat_template(messages, tokenize=False, **kwargs)


def answer_token_ids(loaded: LoadedModel) -> tuple[int, int]:
    """The ids of "Yes" and "No" exactly as they follow the generation prompt.

    Raises ValueError when either answer is not one token there (scoring its first token would
    then compare word pieces, not answers), naming what the tokenizer produced."""
    tokenizer = loaded.tokenizer
    prompt = recommendation_messages("What we know about the user: likes hats.", 'Title: "Hat".', False)
    prompt_ids = tokenizer(_render(loaded.processor, prompt, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]
    ids = []
    for label, answer in ((1, "Yes"), (0, "No")):
        full = tokenizer(_render(loaded.processor, prompt + answer_messages(label)), add_special_tokens=False)["input_ids"]
        tail = full[len(prompt_ids):]
        if full[:len(prompt_ids)] != prompt_ids or not tail or tokenizer.decode(tail[:1]).strip() != answer \
                or tokenizer.decode(tail[1:], skip_special_tokens=True).strip():
            pieces = tokenizer.convert_ids_to_tokens(tail)
            raise ValueError(f"{loaded.name}: {answer!r} is not a single token after the generation prompt "
                             f"(the answer tokenizes as {pieces}); P(Yes) cannot be read from one logit")
        ids.append(tail[0])
    return ids[0], ids[1]


def _multimodal_ids(loaded: LoadedModel) -> set[int]:
    """Token ids that mark or hold an image: the prefix must stop before any of them."""
    tokenizer = loaded.tokenizer
    keep = {tokenizer.bos_token_id, tokenizer.pad_token_id}
    ids = {i for i in tokenizer.all_special_ids if i not in keep}
    for name in ("image_token_id", "image_token_index"):
        value = getattr(loaded.model.config, name, None)
        if value is not None:
            ids.add(value)
    return ids


class Scorer:
    """Scores candidate batches of one model (with or without a LoRA adapter loaded on it)."""

    def __init__(self, loaded: LoadedModel, prefix_reuse: bool = True, batch_size: int = 32):
        self.loaded = loaded
        self.yes, self.no = answer_token_ids(loaded)
        self.batch_size = batch_size
        model_type = loaded.model.config.model_type
        self.prefix_reuse = prefix_reuse and model_type not in POSITION_UNSAFE
        if prefix_reuse and not self.prefix_reuse:
            log.warning("%s: %s positions depend on the images; scoring full prompts (no prefix reuse)",
                        loaded.name, model_type)
        self.stop_ids = _multimodal_ids(loaded)
        self.reused_tokens = 0  # prefix tokens not recomputed thanks to prefix reuse
        loaded.tokenizer.padding_side = "left"

    def score(self, conversations: list[list[dict]], images: list[str | None]) -> np.ndarray:
        """P(Yes) for each conversation (candidates of one example, sharing their user part)."""
        out = np.empty(len(conversations), dtype=np.float64)
        for chunk in image_batches(images, self.batch_size):
            out[chunk] = self._batch([conversations[i] for i in chunk], [images[i] for i in chunk])
        return out

    def _inputs(self, conversations: list[list[dict]], images: list[str | None]) -> dict:
        filled = []
        for messages, image in zip(conversations, images):
            content = [dict(part, image=load_rgb(image)) if part["type"] == "image" else part
                       for part in messages[0]["content"]]
            filled.append([{"role": "user", "content": content}])
        return self.loaded.chat_inputs(filled)

    @torch.inference_mode()
    def _batch(self, conversations: list[list[dict]], images: list[str | None]) -> np.ndarray:
        inputs = self._inputs(conversations, images)
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
        if length == 0:
            return self.loaded.model(**inputs, logits_to_keep=1).logits[:, -1]
        model = self.loaded.model
        prefix = model(input_ids=first[:length][None], attention_mask=torch.ones(1, length, dtype=torch.long,
                       device=ids.device), use_cache=True).past_key_values
        cache = prefix
        cache.batch_repeat_interleave(len(rows))
        self.reused_tokens += length * (len(rows) - 1)
        width = max(len(r) for r in rows) - length
        pad = self.loaded.tokenizer.pad_token_id
        suffix = torch.full((len(rows), width), pad, dtype=ids.dtype, device=ids.device)
        suffix_mask = torch.zeros((len(rows), width), dtype=torch.long, device=ids.device)
        for r, row in enumerate(rows):
            tail = row[length:]
            suffix[r, width - len(tail):] = tail
            suffix_mask[r, width - len(tail):] = 1
        positions = length + (suffix_mask.cumsum(1) - 1).clamp(min=0)
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        attention = torch.cat([torch.ones(len(rows), length, dtype=torch.long, device=ids.device), suffix_mask], 1)
        return model(input_ids=suffix, attention_mask=attention, position_ids=positions, past_key_values=cache,
                     logits_to_keep=1, **extra).logits[:, -1]
