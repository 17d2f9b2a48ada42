"""Summarizers: items (VLM, image + text) and users (LLM, recurrent over time-ordered blocks)."""
