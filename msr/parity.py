"""One path from a recommender row to the model's token ids and pixels, for training and scoring alike, and the
guard that checks it on the actual processor.

A row is the question `msr.data.sft` builds: the prompt messages (image placeholders where the candidate's image
goes), the candidate's image (or none) and, for training, the answer "Yes" or "No". The scorer asks the prompt
rendered with the generation prompt and reads the Yes/No logits at the next position; training must supervise
exactly those ids at exactly that position. TRL's `DataCollatorForVisionLanguageModeling` renders prompt and
completion but tokenizes each on its own without special tokens, which breaks that on the published LLaVA
processors: their SentencePiece normalizer turns `" Yes"` alone into `▁`, `▁Yes` (so every row trained a bare
`▁` where the scorer reads `▁Yes`), and their templates print no bos, which the tokenizer adds when the scorer
tokenizes the prompt but not when TRL tokenizes it. `QuestionCollator` extends TRL's collator to tokenize the
whole conversation once, through the same `encode_chat` the scorer uses, and to supervise what follows the
prompt's own ids; it refuses a row whose prompt ids are not a prefix of the conversation's.

Images are decoded once, by `msr.data.images.load_rgb` (EXIF orientation applied, transparency on white), from the
bytes the rows embed and from the files the scorer reads alike. A text-only LM sees the same question with string
content (the form text chat templates take) and no image.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from msr.data.images import load_rgb, to_rgb
from msr.data.sft import ANSWERS, answer_messages
from msr.models import encode_chat

IMAGE_INPUTS = ("pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask")


class ParityError(ValueError):
    """Training would supervise other ids, or see other pixels, than scoring reads for the same row."""


def as_image(image: Any) -> Image.Image:
    """A row's image as every stage sees it: a path, the `{"bytes", "path"}` dict that rows store (datasets'
    undecoded Image), or a PIL image, through `load_rgb`."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, dict):
        image = io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image["path"]
    return load_rgb(image)


def fill(messages: list[dict], images: list, is_vlm: bool) -> list[dict]:
    """`messages` in the form the model takes: for a VLM, each image part carries the next of `images` (decoded by
    `as_image`); for a text LM, each message's content is one string (its text parts joined) and images are dropped."""
    pending = iter(images)
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append(dict(message))
        elif is_vlm:
            out.append({**message, "content": [dict(part, image=as_image(next(pending))) if part["type"] == "image"
                                               else part for part in content]})
        else:
            out.append({**message, "content": "".join(p["text"] for p in content if p["type"] == "text")})
    return out


def question_inputs(processor: Any, is_vlm: bool, rows: list[dict]) -> Any:
    """What the scorer feeds the model for rows (`prompt`, `images`): the prompts with the generation prompt,
    left-padded, on the CPU."""
    return encode_chat(processor, is_vlm, [fill(r["prompt"], r.get("images") or [], is_vlm) for r in rows],
                       generation_prompt=True)


def _tokens(processor: Any, ids: list[int]) -> list[str]:
    tokenizer = getattr(processor, "tokenizer", processor)
    return tokenizer.convert_ids_to_tokens(ids)


def first_difference(processor: Any, trained: list[int], scored: list[int]) -> str:
    """Where two id sequences part, in words."""
    k = next((i for i, (a, b) in enumerate(zip(trained, scored)) if a != b), min(len(trained), len(scored)))
    def at(ids: list[int]) -> str:
        return f"{_tokens(processor, [ids[k]])[0]!r} (id {ids[k]})" if k < len(ids) else "the end"
    return f"token {k}: trained {at(trained)}, scored {at(scored)}"


@dataclass
class QuestionCollator(DataCollatorForVisionLanguageModeling):
    """TRL's vision-language collator, with prompt/completion rows tokenized as one conversation by `encode_chat`
    (the scorer's tokenization), the loss on the completion only, and images decoded by `as_image`. Also serves
    text-only LMs (`is_vlm=False`: string content, no images), so every model trains through one path."""

    is_vlm: bool = True
    answer_lengths: dict[bytes, int] = field(default_factory=dict, repr=False)

    def _collate_prompt_completion(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [fill(e["prompt"], e.get("images") or [], self.is_vlm) for e in examples]
        whole = [p + fill(e["completion"], [], self.is_vlm) for p, e in zip(prompts, examples)]
        answer_lengths = self._cached_answer_lengths(examples, prompts, whole)
        output = encode_chat(self.processor, self.is_vlm, whole, generation_prompt=False, padding_side="right",
                             pad_to_multiple_of=self.pad_to_multiple_of)
        labels = torch.full_like(output["input_ids"], -100)
        for r, answer in enumerate(answer_lengths):
            n = int(output["attention_mask"][r].sum())
            labels[r, n - answer:n] = output["input_ids"][r, n - answer:n]
        output["labels"] = labels
        return output

    def _cached_answer_lengths(self, examples: list[dict[str, Any]], prompts: list[list[dict]],
                               whole: list[list[dict]]) -> list[int]:
        """`_answer_lengths`, worked out (and checked) once per distinct row: it depends only on the row's messages
        (not its pixels), and every later epoch sees the same rows again (two template renders and two tokenizer
        calls per batch saved: a third of a tiny model's step on a CPU)."""
        keys = [hashlib.blake2b(json.dumps([e["prompt"], e["completion"], len(e.get("images") or [])], sort_keys=True,
                                           default=str).encode(),
                                digest_size=16).digest() for e in examples]
        todo = [r for r, key in enumerate(keys) if key not in self.answer_lengths]
        if todo:
            found = self._answer_lengths([prompts[r] for r in todo], [whole[r] for r in todo], todo)
            self.answer_lengths.update((keys[r], n) for r, n in zip(todo, found))
        return [self.answer_lengths[key] for key in keys]

    def _answer_lengths(self, prompts: list[list[dict]], whole: list[list[dict]],
                        rows: list[int] | None = None) -> list[int]:
        """How many tokens follow each prompt in its whole conversation, from the rendered texts tokenized without
        the images expanded (the processor replaces each image placeholder by that image's tokens, which neither
        moves the prompt's end nor touches the answer after it; the images are processed once, with the whole
        conversation). A prompt whose ids are not a prefix of its conversation's is refused."""
        render = self.processor.apply_chat_template
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        asked = tokenizer(render(prompts, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
        said = tokenizer(render(whole, tokenize=False), add_special_tokens=False)
        lengths = []
        for k, (prompt, conversation) in enumerate(zip(asked["input_ids"], said["input_ids"])):
            r = rows[k] if rows else k
            if conversation[:len(prompt)] != prompt:
                raise ParityError(f"row {r}: the prompt's ids are not a prefix of the whole conversation's, so the "
                                  "trained answer would not follow the scored prompt ("
                                  f"{first_difference(self.processor, conversation, prompt)}); the chat template "
                                  "renders the prompt differently once the answer follows")
            lengths.append(len(conversation) - len(prompt))
        return lengths


def _text(messages: list[dict]) -> str:
    """The text of a one-message turn (the answer of a completion)."""
    content = messages[0]["content"]
    return content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")


def supervised(batch: Any, row: int) -> list[int]:
    """The ids a collated row is trained on, in order."""
    labels = batch["labels"][row]
    return labels[labels != -100].tolist()


def answer_ids(processor: Any, is_vlm: bool, row: dict) -> tuple[int, int]:
    """The ids of "Yes" and "No" exactly where training puts them after `row`'s prompt (the scorer reads these
    logits). Raises ParityError saying what is wrong when an answer is not one token there, or when the template
    renders text, not only the end of the turn, after it."""
    collator = QuestionCollator(processor=processor, is_vlm=is_vlm)
    ids = []
    for label, answer in ANSWERS.items():
        batch = collator([{**row, "completion": answer_messages(label)}])
        tail = supervised(batch, 0)
        tokenizer = getattr(processor, "tokenizer", processor)
        first = tokenizer.decode(tail[:1]).strip() if tail else ""
        if first != answer:
            raise ParityError(f"{answer!r} is not a single token after the generation prompt: the answer tokenizes "
                              f"as {_tokens(processor, tail)}, so P(Yes) cannot be read from one logit")
        rest = tokenizer.decode(tail[1:], skip_special_tokens=True).strip()
        if rest:
            raise ParityError(f"{answer!r} is one token ({_tokens(processor, tail[:1])[0]!r}), but the chat template "
                              f"renders text after it, {rest!r} (pieces {_tokens(processor, tail[1:])}), where only "
                              "the end of the turn belongs (a literal '<\\s>' where '</s>' was meant?): fix the "
                              "chat template")
        ids.append(tail[0])
    return ids[0], ids[1]


def twin(row: dict) -> dict:
    """`row` with its image taken away, or with a plain grey image given, so that the guard sees one of each."""
    parts = row["prompt"][0]["content"]
    if row.get("images"):
        content = [p for p in parts if p["type"] != "image"]
        return {**row, "prompt": [{**row["prompt"][0], "content": content}], "images": []}
    at = next((i for i, p in enumerate(parts) if p["type"] == "text"), 0) + 1  # after the user part, as in the rows
    content = [*parts[:at], {"type": "image"}, *parts[at:]]
    return {**row, "prompt": [{**row["prompt"][0], "content": content}, *row["prompt"][1:]],
            "images": [Image.new("RGB", (64, 64), (128, 128, 128))]}


def check_parity(processor: Any, is_vlm: bool, row: dict) -> tuple[int, int]:
    """The guard training and scoring run before any work: for `row` (a prompt/completion row, its images as files,
    PIL images or the bytes rows store) and its `twin` (one with an image, one without), the ids training
    supervises must be the scored prompt's ids followed by the answer id the scorer reads, and the pixels the
    same. Returns the (Yes, No) ids. Raises ParityError in one line naming the first differing token or tensor."""
    yes, no = answer_ids(processor, is_vlm, row)
    collator = QuestionCollator(processor=processor, is_vlm=is_vlm)
    for trained_row in (row, twin(row)):
        what = "with an image" if trained_row.get("images") else "without an image"
        trained = collator([trained_row])
        scored = question_inputs(processor, is_vlm, [trained_row])
        asked = scored["input_ids"][0][scored["attention_mask"][0].bool()].tolist()
        ids = trained["input_ids"][0][trained["attention_mask"][0].bool()].tolist()
        prompt, answer = ids[:len(ids) - len(supervised(trained, 0))], supervised(trained, 0)
        if prompt != asked:
            raise ParityError(f"the row {what}: training's prompt differs from scoring's at "
                              f"{first_difference(processor, prompt, asked)}")
        expected = yes if _text(trained_row["completion"]) == ANSWERS[1] else no
        if not answer or answer[0] != expected:
            raise ParityError(f"the row {what}: training supervises {_tokens(processor, answer[:1])} first, where "
                              f"the scorer reads {_tokens(processor, [expected])}")
        for key in IMAGE_INPUTS:  # present in both or neither, and equal
            if (key in trained) != (key in scored) or (key in trained and not torch.equal(trained[key], scored[key])):
                raise ParityError(f"the row {what}: training's {key} differ from scoring's (images decoded "
                                  "differently?)")
    return yes, no
