"""Shared test helpers: where the golden fixtures live, tiny seeded models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton's standard-library functions take interpreter mode from TRITON_INTERPRET when Triton is first imported, and
# importing transformers' model classes imports it (the hf tests are collected before test_kernels.py); without a
# GPU the kernel tests run under the interpreter, so it is set here, before any test module imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]

# The tests run tiny models: one thread is faster than two and immune to CPU oversubscription.
torch.set_num_threads(1)


def shared_dir() -> Path | None:
    """``$VARGEN_SHARED`` or ``../shared`` next to the checkout (CI has it there)."""
    env = os.environ.get("VARGEN_SHARED")
    path = Path(env) if env else REPO.parent / "shared"
    return path if (path / "fixtures").is_dir() else None


def fixture_dir(family: str) -> Path:
    """The golden fixture folder of ``family``; skips the test with a visible reason if absent."""
    root = shared_dir()
    if root is None:
        pytest.skip("golden fixtures not found: set VARGEN_SHARED or place shared/ next to the checkout")
    path = root / "fixtures" / family
    if not path.is_dir():
        pytest.skip(f"golden fixtures for {family!r} not found under {root / 'fixtures'}")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
