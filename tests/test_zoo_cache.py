"""The model cache under parallel test workers (pytest-xdist): a cached file is built once when
several processes ask for it at the same time, and no process sees it half written."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from model_zoo.common import cached


def _write_slowly(tmp: Path) -> None:
    with open(tmp.parent / "builds.log", "a") as log:
        log.write(f"{os.getpid()}\n")
    with open(tmp, "wb") as f:  # written in pieces, slowly: a reader of `tmp` would see a part
        for _ in range(5):
            f.write(b"x" * 1000)
            f.flush()
            time.sleep(0.05)


def _ask(path: str, start: float, sizes) -> None:
    time.sleep(max(0.0, start - time.time()))
    sizes.put(Path(cached(Path(path), _write_slowly)).stat().st_size)


def test_concurrent_processes_build_a_cached_file_once(tmp_path):
    path = tmp_path / "model.bin"
    ctx = multiprocessing.get_context("spawn")
    sizes = ctx.Queue()
    start = time.time() + 2.0  # all processes ask at about the same moment
    procs = [ctx.Process(target=_ask, args=(str(path), start, sizes)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert [sizes.get(timeout=10) for _ in procs] == [5000] * 3  # each saw the whole file
    assert len((tmp_path / "builds.log").read_text().split()) == 1  # built by one process
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["builds.log", "model.bin"]
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary left behind


def test_a_failed_build_leaves_nothing_and_is_retried(tmp_path):
    path = tmp_path / "model.bin"

    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        cached(path, fail)
    assert not path.exists() and not list(tmp_path.glob(".tmp-*"))
    assert cached(path, lambda tmp: tmp.write_bytes(b"whole")).read_bytes() == b"whole"


def test_a_stale_file_is_rebuilt(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")
    cached(path, lambda tmp: tmp.write_bytes(b"new"), stale=lambda p: p.read_bytes() == b"old")
    assert path.read_bytes() == b"new"
