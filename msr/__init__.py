"""msr: multimodal LLMs as sequential recommenders."""

__version__ = "0.1.0"
