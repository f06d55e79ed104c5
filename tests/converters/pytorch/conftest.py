"""Fixtures for the PyTorch importer tests: zoo models converted once per session."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def torch_zoo():
    """name -> (eager module, converted IR model); each model is converted once."""
    import portanet
    from model_zoo.pytorch import ZOO, build

    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            module = build(name)
            x = torch.randn(1, *ZOO[name].input_shape)
            cache[name] = (module, portanet.convert(module, example_inputs=(x,)))
        return cache[name]

    return get
