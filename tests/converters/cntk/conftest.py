"""Fixtures for the CNTK importer tests: the committed real CNTK files and the zoo builder."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def cntk_data() -> Path:
    """Real CNTK 2.x model files (see data/README.md for their sources)."""
    return DATA


@pytest.fixture(scope="session")
def cntk_zoo_dir(zoo_cache: Path) -> Path:
    d = zoo_cache / "cntk"
    d.mkdir(parents=True, exist_ok=True)
    return d
