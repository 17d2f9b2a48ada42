"""Helpers shared by the benchmarks."""

from __future__ import annotations

import time

import torch


def matmul_ms(rows: int = 16, repeats: int = 50) -> float:
    """Milliseconds of one (rows x 512) @ (512 x 1536) fp32 product at the current thread count: a
    probe of the machine's state (a few ms instead of ~0.2 means contended or stalled threads)."""
    a, b = torch.randn(rows, 512), torch.randn(512, 1536)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return round((time.perf_counter() - t0) / repeats * 1e3, 3)
