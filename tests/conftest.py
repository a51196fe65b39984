"""Shared test set-up: deterministic, single-threaded torch per worker (pytest-xdist runs 2)."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# studies reuse activations from a cache (probes.activation_cache): keep the tests' out of the user's
import tempfile  # noqa: E402

os.environ.setdefault(
    "WELFARE_AXIS_ACTIVATION_CACHE", tempfile.mkdtemp(prefix="welfare-axis-test-activations-")
)

import pytest  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def tiny_llama():
    """A fresh random 2-layer Llama (SmolLM2 tokenizer): ``(model, tokenizer)``."""
    from probes.models import tiny_model

    return tiny_model("llama", seed=0)


@pytest.fixture
def tiny_gemma():
    """A fresh random 2-layer Gemma 3 (Gemma 3 tokenizer): ``(model, tokenizer)``."""
    from probes.models import tiny_model

    return tiny_model("gemma3", seed=0)
