"""`msr summarize items|users` configuration (one YAML serves both) and the backend it asks for."""

from __future__ import annotations

from dataclasses import dataclass, field

from msr.summarize.backends import Backend, GenerationSettings

BACKENDS = ("transformers", "openai")
MODES = ("recurrent", "direct")


@dataclass
class SummarizeConfig:
    """Which models summarize items and users, through which backend, with which decoding."""

    run_dir: str = field(metadata={"help": "Run directory (after `msr data prepare`)."})
    item_model: str = field(metadata={"help": "VLM for item summaries: a local path or a model id "
                                              "(the server's model name with --backend openai)."})
    user_model: str | None = field(default=None, metadata={"help": "LLM for user summaries "
                                   "(default: item_model)."})
    backend: str = field(default="transformers", metadata={"help": f"One of {', '.join(BACKENDS)}."})
    mode: str = field(default="recurrent", metadata={"help": "User summaries: recurrent (block by block, "
                      "the method) or direct (whole history at once, the paper's ablation)."})
    block_size: int = field(default=3, metadata={"help": "Items per block of the recurrent summarizer."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (transformers) "
                            "or per flushed group (openai)."})
    max_new_tokens: int = field(default=200, metadata={"help": "Longest summary, in tokens."})
    max_batch_tokens: int = field(default=32768, metadata={"help": "transformers: a batch holds at most this many "
                                  "tokens, its prompts padded to the longest plus max_new_tokens each (what its KV "
                                  "cache holds), so a few long prompts make a smaller batch, not a larger allocation; "
                                  "a prompt over it alone is a batch of one."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature (with do_sample)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling (with do_sample)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (with do_sample)."})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), float32, "
                       "bfloat16 or float16."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N."})
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the model in 4 bits (bitsandbytes)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with the "
                                    "checkpoint. Off unless you trust its authors."})
    max_pixels: int | None = field(default=None, metadata={"help": "Cap on an image's pixels for processors "
                                   "that resize by area (Qwen2-VL family)."})
    api_base: str | None = field(default=None, metadata={"help": "OpenAI-compatible server URL, e.g. "
                                 "http://127.0.0.1:8000/v1 (--backend openai)."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Name of the environment "
                             "variable holding the API key (the key itself never goes in a config)."})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight (--backend openai)."})
    timeout: float = field(default=120.0, metadata={"help": "Seconds per request attempt in all, headers and body "
                           "included (--backend openai; the SDK retries --max_retries times)."})
    max_retries: int = field(default=5, metadata={"help": "Retries with back-off (--backend openai)."})
    prompt_dir: str | None = field(default=None, metadata={"help": "Folder with your own prompt "
                                   "templates (default: the ones shipped in msr/prompts)."})

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.backend == "openai" and not self.api_base:
            raise ValueError("api_base is required with --backend openai")
        for name in ("block_size", "batch_size", "max_new_tokens", "max_batch_tokens", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def settings(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.do_sample, self.temperature, self.top_p, self.seed)

    def model_for(self, role: str) -> str:
        """The model that summarizes `role` ("items" or "users")."""
        return self.item_model if role == "items" or not self.user_model else self.user_model

    def model_key(self, role: str, with_image: bool = False) -> dict:
        """What, besides the prompt and the generation settings, decides the texts the model of `role` writes:
        part of every cache key. Computed without loading the model.

        transformers: the model's content identity (`msr.identity.model_identity`: config, processor/tokenizer
        files, chat template, weights), the resolved dtype ("auto" is keyed as what it resolves to on this
        machine: float32 on a CPU, bfloat16 on a GPU that has it), load_in_4bit and, for a prompt with an image
        (`with_image`), max_pixels. openai: the server's model name and api_base (its weights are remote)."""
        model = self.model_for(role)
        if self.backend == "openai":
            return {"backend": "openai", "model": model, "api_base": self.api_base}
        from msr.identity import model_identity
        from msr.models import resolve_device, resolve_dtype

        dtype = str(resolve_dtype(self.dtype, resolve_device(self.device))).removeprefix("torch.")
        key = {"backend": "transformers", "identity": model_identity(model), "dtype": dtype,
               "load_in_4bit": self.load_in_4bit}
        if with_image:
            key["max_pixels"] = self.max_pixels
        return key


def make_backend(cfg: SummarizeConfig, model: str) -> Backend:
    """The backend `cfg` asks for, serving `model`."""
    if cfg.backend == "openai":
        from msr.summarize.backends import OpenAIBackend

        return OpenAIBackend(model, cfg.api_base, cfg.api_key_env, cfg.concurrency, cfg.timeout,
                             cfg.max_retries, cfg.batch_size)
    from msr.summarize.backends import TransformersBackend

    return TransformersBackend(model, cfg.batch_size, cfg.dtype, cfg.device, cfg.load_in_4bit,
                               cfg.trust_remote_code, cfg.max_pixels, cfg.max_batch_tokens, cfg.max_new_tokens)
