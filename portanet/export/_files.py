"""Atomic multi-file writes: everything goes to a scratch folder beside the destination and
is renamed into place at the end, so a failed export leaves no half-written output."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from portanet.errors import InvalidInputError


def check_destination(path: Path) -> None:
    parent = path.resolve().parent
    if not parent.is_dir():
        raise InvalidInputError(f"{path}: folder {parent} does not exist")


@contextlib.contextmanager
def staging(path: Path) -> Iterator[Path]:
    """A scratch folder in ``path``'s folder; removed afterwards whatever happens."""
    check_destination(path)
    tmp = Path(tempfile.mkdtemp(prefix=".portanet-export-", dir=path.resolve().parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, final: Path) -> Path:
    """Move a staged file or folder to ``final`` (replacing an earlier export there)."""
    if final.is_dir() and staged.is_dir():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    return final


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="portanet-export-"))
