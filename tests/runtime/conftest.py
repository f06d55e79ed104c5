"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models train faster on one thread, and a shared machine does not stall them."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def mlp_path():
    """The small MLP exported to an untrained ONNX file (cached)."""
    from tests.runtime.trainer_models import small_mlp_onnx

    return small_mlp_onnx(seed=0)
