"""Per family: the tiny processor (the real processor classes `AutoProcessor` loads for that family's published
checkpoints) and the tiny model config derived from a processor's own settings (image size, patches, tiling, merge
unit, special-token ids), so the same config fits msr.tiny's processor and a published one alike; sized so every
family runs on a CPU in a fraction of a second.

Images: LLaVA, LLaVA-NeXT and Idefics3 see 56x56 pixels in 14-pixel patches (LLaVA-NeXT also tiles larger
images, "anyres"); the Qwen-VL families resize each image to a multiple of their 28-pixel (Qwen2-VL, Qwen2.5-VL) or
32-pixel (Qwen3-VL) merge unit between `min_pixels` and `max_pixels`, so differently sized images cost
different token counts, as with the real models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ImageProcessor,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    MistralConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from msr.tiny.tokenizer import MAX_LENGTH

IMAGE_SIZE = 56
PATCH_SIZE = 14
_SCALE_FACTOR = 2  # Idefics3's pixel shuffle: 2x2 patches become one image token
_MERGE = 2  # Qwen-VL's spatial merge: 2x2 patches become one image token
# LLaVA-NeXT "anyres": an image is resized to the best of these (height, width) and cut into 56x56 tiles
_GRID_PINPOINTS = [[56, 112], [112, 56], [112, 112]]
# Qwen-VL default pixel bounds of the tiny processors: 1 to 16 merged tokens per image
QWEN_MAX_PIXELS = {"qwen2_vl": 16 * 28 * 28, "qwen2_5_vl": 16 * 28 * 28, "qwen3_vl": 16 * 32 * 32}


@dataclass(frozen=True)
class TextShape:
    """The language model's size (the benchmarks build larger ones than the tests)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = MAX_LENGTH  # rotary positions the config declares (published processors' prompts are longer)


def _ids(tokenizer: PreTrainedTokenizerFast) -> dict:
    return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}


def _llama_like(cls: type, tokenizer: PreTrainedTokenizerFast, shape: TextShape) -> PreTrainedConfig:
    return cls(hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
               num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads,
               num_key_value_heads=shape.num_kv_heads, max_position_embeddings=shape.max_positions, **_ids(tokenizer))


def text_config(tokenizer: PreTrainedTokenizerFast, shape: TextShape = TextShape()) -> LlamaConfig:
    """The text LM's (and LLaVA-1.5's, Idefics3's) Llama config."""
    return _llama_like(LlamaConfig, tokenizer, shape)


_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}


def _clip_processor_kwargs() -> dict:
    return {"size": {"shortest_edge": IMAGE_SIZE}, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}}


def _clip_vision(processor: ProcessorMixin) -> CLIPVisionConfig:
    """A tiny CLIP tower that sees the processor's crops in the processor's patches."""
    size = processor.image_processor.crop_size["height"]
    return CLIPVisionConfig(**{**_VISION, "image_size": size, "patch_size": processor.patch_size})


def _llava_config(processor: ProcessorMixin, shape: TextShape) -> PreTrainedConfig:
    vision = _clip_vision(processor)
    return LlavaConfig(
        text_config=text_config(processor.tokenizer, shape), vision_config=vision,
        image_token_index=processor.image_token_id, image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        vision_feature_select_strategy=processor.vision_feature_select_strategy,  # "default" drops CLS
        vision_feature_layer=-1)  # LLaVA-1.5 uses -2; with two layers that would leave the last one unused


def _llava_processor(tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
    return LlavaProcessor(
        image_processor=CLIPImageProcessor(**_clip_processor_kwargs()), tokenizer=tokenizer, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped again by the "default" strategy
        chat_template=tokenizer.chat_template)


def _llava_next_config(processor: ProcessorMixin, shape: TextShape) -> PreTrainedConfig:
    return LlavaNextConfig(
        text_config=_llama_like(MistralConfig, processor.tokenizer, shape), vision_config=_clip_vision(processor),
        image_token_index=processor.image_token_id,
        image_grid_pinpoints=[list(p) for p in processor.image_processor.image_grid_pinpoints],
        vision_feature_select_strategy=processor.vision_feature_select_strategy, vision_feature_layer=-1)


def _llava_next_processor(tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(**_clip_processor_kwargs(), image_grid_pinpoints=_GRID_PINPOINTS),
        tokenizer=tokenizer, patch_size=PATCH_SIZE, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=tokenizer.chat_template)


def _idefics3_config(processor: ProcessorMixin, shape: TextShape) -> PreTrainedConfig:
    """Idefics3 (SmolVLM): each tile of `max_image_size` pixels is cut into patches whose grid, pixel-shuffled by
    `scale_factor`, gives the processor's `image_seq_len` tokens (SmolVLM-256M: 512 px, 16-px patches, 4)."""
    size = processor.image_processor.max_image_size["longest_edge"]
    side = math.isqrt(processor.image_seq_len)  # tokens per tile side
    patch = next(p for p in (PATCH_SIZE, 16, 8) if size % p == 0 and (size // p) % side == 0)
    tokenizer = processor.tokenizer
    return Idefics3Config(
        text_config=text_config(tokenizer, shape),
        vision_config=Idefics3VisionConfig(**{**_VISION, "image_size": size, "patch_size": patch}),
        image_token_id=processor.image_token_id, scale_factor=size // patch // side,
        pad_token_id=tokenizer.pad_token_id)  # else config.json keeps Idefics3's default, out of our vocab


def _idefics3_processor(tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
    image_processor = Idefics3ImageProcessor(size={"longest_edge": IMAGE_SIZE},
                                             max_image_size={"longest_edge": IMAGE_SIZE}, do_image_splitting=False)
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                             image_seq_len=(IMAGE_SIZE // PATCH_SIZE) ** 2 // _SCALE_FACTOR**2,
                             chat_template=tokenizer.chat_template)


def _qwen_ids(tokenizer: PreTrainedTokenizerFast) -> dict:
    names = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
    return {key: tokenizer.convert_tokens_to_ids(token) for key, token in names.items()}


def _qwen_text(tokenizer: PreTrainedTokenizerFast, shape: TextShape, **rope: object) -> dict:
    head_dim = shape.hidden_size // shape.num_heads
    pairs = head_dim // 2  # mrope_section splits the rotary pairs over (t, h, w), 1 : 1.5 : 1.5 as Qwen2.5-VL's
    t = pairs // 4
    section = [t, (pairs - t) // 2, pairs - t - (pairs - t) // 2]
    return {"hidden_size": shape.hidden_size, "intermediate_size": shape.intermediate_size,
            "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
            "num_key_value_heads": shape.num_kv_heads, "max_position_embeddings": shape.max_positions, "head_dim": head_dim,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section, **rope},
            **_ids(tokenizer)}


def _qwen_vision(processor: ProcessorMixin) -> dict:
    images = processor.image_processor
    return {"patch_size": images.patch_size, "spatial_merge_size": images.merge_size,
            "temporal_patch_size": images.temporal_patch_size}


def _qwen_image_processor(family: str, patch: int) -> Qwen2VLImageProcessor:
    unit = patch * _MERGE
    return Qwen2VLImageProcessor(patch_size=patch, merge_size=_MERGE, temporal_patch_size=2,
                                 size={"shortest_edge": unit * unit, "longest_edge": QWEN_MAX_PIXELS[family]})


def _qwen_processor(cls: type, video_cls: type, family: str, patch: int) -> Callable[[PreTrainedTokenizerFast], ProcessorMixin]:
    def build(tokenizer: PreTrainedTokenizerFast) -> ProcessorMixin:
        return cls(image_processor=_qwen_image_processor(family, patch), tokenizer=tokenizer,
                   video_processor=video_cls(patch_size=patch, merge_size=_MERGE, temporal_patch_size=2),
                   chat_template=tokenizer.chat_template)
    return build


def _qwen2_vl_config(processor: ProcessorMixin, shape: TextShape) -> PreTrainedConfig:
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": shape.hidden_size, "mlp_ratio": 2, "num_heads": 4,
              **_qwen_vision(processor)}
    tokenizer = processor.tokenizer
    return Qwen2VLConfig(text_config=_qwen_text(tokenizer, shape), vision_config=vision, **_qwen_ids(tokenizer))


def _qwen2_5_vl_config(processor: ProcessorMixin, shape: TextShape) -> PreTrainedConfig:
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
              "out_hidden_size": shape.hidden_size, "window_size": 112, "fullatt_block_indexes": [1],
              **_qwen_vision(processor)}
    tokenizer = processor.tokenizer
    return Qwen2_5_VLConfig(text_config=_qwen_text(tokenizer, shape), vision_config=vision, **_qwen_ids(tokenizer))


def _qwen3_vl_config(processor: ProcessorMixin, shape: TextShape) -> PreTrainedConfig:
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
              "out_hidden_size": shape.hidden_size, "num_position_embeddings": 64, "deepstack_visual_indexes": [0],
              **_qwen_vision(processor)}
    tokenizer = processor.tokenizer
    return Qwen3VLConfig(text_config=_qwen_text(tokenizer, shape, mrope_interleaved=True), vision_config=vision,
                         **_qwen_ids(tokenizer))


@dataclass(frozen=True)
class Family:
    """How msr.tiny builds a family: the tiny processor around a trained tokenizer, and the tiny model config that
    fits any processor of the family (msr.tiny's own, or a published one: `build_around_processor`)."""

    processor: Callable[[PreTrainedTokenizerFast], ProcessorMixin]
    config: Callable[[ProcessorMixin, TextShape], PreTrainedConfig]
    processor_class: str  # what AutoProcessor loads for the family's published checkpoints


FAMILIES: dict[str, Family] = {
    "llava": Family(_llava_processor, _llava_config, "LlavaProcessor"),
    "llava_next": Family(_llava_next_processor, _llava_next_config, "LlavaNextProcessor"),
    "idefics3": Family(_idefics3_processor, _idefics3_config, "Idefics3Processor"),
    "qwen2_vl": Family(_qwen_processor(Qwen2VLProcessor, Qwen2VLVideoProcessor, "qwen2_vl", PATCH_SIZE),
                       _qwen2_vl_config, "Qwen2VLProcessor"),
    "qwen2_5_vl": Family(_qwen_processor(Qwen2_5_VLProcessor, Qwen2VLVideoProcessor, "qwen2_5_vl", PATCH_SIZE),
                         _qwen2_5_vl_config, "Qwen2_5_VLProcessor"),
    "qwen3_vl": Family(_qwen_processor(Qwen3VLProcessor, Qwen3VLVideoProcessor, "qwen3_vl", 16),
                       _qwen3_vl_config, "Qwen3VLProcessor"),
}
