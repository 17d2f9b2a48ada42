"""The guard in conftest.py: a deprecated call made by msr's own code fails the test; one a library makes does not."""

from __future__ import annotations

import types

import pytest
import torch

from msr.models import load_model


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


CALL = "def call(model, ids):\n    return model(input_ids=ids, past_key_values=None)\n"


def test_a_deprecated_call_from_msr_fails(tiny_run_template: dict) -> None:
    model = load_model(tiny_run_template["lm"], "float32", "cpu").model
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(AssertionError, match="msr.fake_stage:2 makes a deprecated call: `past_key_values`"):
        _module("msr.fake_stage", CALL).call(model, ids)
    with pytest.warns(FutureWarning, match="past_key_values"):  # the same call from another library only warns
        _module("otherlib.stage", CALL).call(model, ids)
