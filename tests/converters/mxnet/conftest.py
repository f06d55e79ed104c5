"""Fixtures for the MXNet importer tests: reference models built once by real mxnet 1.9.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_zoo import mxnet as mxzoo


@pytest.fixture(scope="session")
def mx_refs() -> Path:
    """Folder with every MXNet reference model (built by the side environment on first use,
    cached on disk keyed by the builder scripts' hash)."""
    if mxzoo.mxnet_python() is None:
        pytest.skip("the mxnet side environment is missing (make mxnet-env creates it)")
    return mxzoo.build()
