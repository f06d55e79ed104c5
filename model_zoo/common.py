"""Shared helpers for model_zoo builders: the cache directory for generated files, and building
a cached file once when several processes (pytest-xdist workers) want it at the same time."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cache_dir(*parts: str) -> Path:
    """``$PORTANET_CACHE`` or ``<repo>/.cache/model_zoo``, plus ``parts``; created on demand."""
    base = Path(os.environ.get("PORTANET_CACHE", REPO / ".cache" / "model_zoo"))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for building ``path`` (a ``.<name>.lock`` file beside it): other
    processes building the same path wait, then find it built. No-op where there is no ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: builds may duplicate, the atomic rename keeps them safe
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def temp_name(path: Path) -> Path:
    """A name beside ``path`` unique to this process, ending like ``path`` (savers check suffixes)."""
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def remove(path: Path) -> None:
    """Delete a file or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def cached(path: Path, write: Callable[[Path], object], *, stale: Callable[[Path], bool] | None = None) -> Path:
    """``path``, made once by ``write(tmp)`` (a file or a folder) and renamed into place.

    Concurrent callers build it once (the others wait on :func:`build_lock`), and a reader never
    sees a half-written file. ``stale(path)`` says an existing file must be rebuilt."""
    def missing() -> bool:
        return not path.exists() or (stale is not None and stale(path))

    if not missing():
        return path
    with build_lock(path):
        if missing():
            tmp = temp_name(path)
            remove(tmp)
            try:
                write(tmp)
                if path.is_dir() and tmp.is_dir():  # a stale folder: os.replace cannot overwrite it
                    remove(path)
                os.replace(tmp, path)
            finally:
                remove(tmp)
    return path
