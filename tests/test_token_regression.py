"""Every shipped pipeline x every applicable sampler gives the tokens recorded before the decode layer (commit 7842a7b;
``tests/data/record_tokens.py``): a refactor of attention patterns, caches or pipelines must not move one token."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DATA = Path(__file__).resolve().parent / "data"
_spec = importlib.util.spec_from_file_location("record_tokens", DATA / "record_tokens.py")
record_tokens = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record_tokens)
RECORD = load_file(record_tokens.RECORD)
CASES = list(record_tokens.keys())


@pytest.mark.parametrize("name,spec,compiled", CASES, ids=[record_tokens.key_of(*c) for c in CASES])
def test_tokens_equal_the_recording(name, spec, compiled):
    if name.startswith("random-tiny"):
        pytest.importorskip("transformers")
    key = record_tokens.key_of(name, spec, compiled)
    tokens = record_tokens.run_case(name, spec, compiled)
    assert torch.equal(tokens, RECORD[key]), f"{key}: {int((tokens != RECORD[key]).sum())} tokens differ"
