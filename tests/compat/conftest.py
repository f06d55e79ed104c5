"""Converted files of the compatibility matrix, shared by every cell of a model.

Per source model: the IR as ``portanet convert`` makes it (import + -O1), saved at every
output opset, plus seeded inputs and ONNX Runtime's outputs on the canonical-opset file (the
reference) for each batch size. Everything is cached on disk under
``<cache>/compat/<model>-<key>``, ``key`` hashing portanet's and the zoo's sources, so a
repeated run converts nothing; folders are written under a temporary name and renamed into
place, so parallel workers never read half a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from tests.compat.models import SOURCES, Source

OPSETS = (13, 15, 17, 18, 21)
REFERENCE_OPSET = 18
#: the opsets large models are written at (unless PORTANET_COMPAT_FULL=1)
LARGE_OPSETS = (13, 18)
FULL = os.environ.get("PORTANET_COMPAT_FULL") == "1"
REPO = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def code_key() -> str:
    """Hash of every file that can change a converted model or its reference outputs."""
    h = hashlib.sha256()
    roots = [REPO / "portanet", REPO / "model_zoo", Path(__file__).parent]
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.suffix in (".py", ".prototxt", ".proto") and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(REPO)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:12]


@dataclass
class Converted:
    """One source model's files: ``paths[opset]`` (or ``errors[opset]`` when saving at that
    opset failed), and per batch size the inputs and the reference outputs."""

    source: Source
    folder: Path
    paths: dict[int, Path]
    errors: dict[int, str]
    batches: tuple[int, ...]

    def feeds(self, batch: int) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"io-b{batch}.npz") as z:
            return {k[3:]: z[k] for k in z.files if k.startswith("in:")}

    def reference(self, batch: int) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"io-b{batch}.npz") as z:
            return {k[4:]: z[k] for k in z.files if k.startswith("out:")}


def _build(source: Source, folder: Path) -> None:
    """Convert ``source``, save it at every opset and write inputs + reference outputs."""
    from portanet.errors import PortanetError
    from portanet.ir.io import save_onnx
    from portanet.optimizer import optimize
    from portanet.runtime.session import Session

    model = optimize(source.convert(), level=1)
    errors = {}
    for opset in OPSETS if FULL or not source.large else LARGE_OPSETS:
        try:
            save_onnx(model, folder / f"op{opset}.onnx", opset=opset)
        except PortanetError as exc:
            errors[opset] = str(exc).replace(str(folder), "").strip()
    ref = Session(folder / f"op{REFERENCE_OPSET}.onnx")
    symbolic = bool(ref.inputs) and all(i.shape and not isinstance(i.shape[0], int) for i in ref.inputs)
    batches = (1, 3) if symbolic else (1,)
    for batch in batches:
        feeds = ref.random_feeds(batch=batch, seed=batch)
        if source.positive:
            feeds = {k: (np.abs(v) + 0.1).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in feeds.items()}
        outs = ref.run(feeds)
        np.savez(folder / f"io-b{batch}.npz", **{f"in:{k}": v for k, v in feeds.items()},
                 **{f"out:{k}": v for k, v in outs.items()})
    written = sorted(int(p.stem[2:]) for p in folder.glob("op*.onnx"))
    (folder / "meta.json").write_text(json.dumps({"batches": batches, "errors": errors, "opsets": written}))


def converted(source_id: str) -> Converted:
    """The cached files of ``source_id``, converting on first use."""
    from model_zoo.common import build_lock, cache_dir

    source = SOURCES[source_id]
    folder = cache_dir("compat") / f"{source_id}-{code_key()}{'-full' if FULL else ''}"
    if not (folder / "meta.json").exists():
        with build_lock(folder):  # parallel test workers: one converts, the others wait
            if not (folder / "meta.json").exists():
                tmp = Path(tempfile.mkdtemp(prefix=f".{source_id}-", dir=folder.parent))
                try:
                    _build(source, tmp)
                    with contextlib.suppress(OSError):  # another worker may have finished first
                        os.rename(tmp, folder)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                own = re.compile(rf"{re.escape(source_id)}-[0-9a-f]{{12}}(-full)?")
                for old in folder.parent.iterdir():  # this model's folders of older code
                    if old != folder and own.fullmatch(old.name):
                        shutil.rmtree(old, ignore_errors=True)
    meta = json.loads((folder / "meta.json").read_text())
    errors = {int(k): v for k, v in meta["errors"].items()}
    paths = {o: folder / f"op{o}.onnx" for o in meta["opsets"]}
    return Converted(source, folder, paths, errors, tuple(meta["batches"]))


@pytest.fixture(scope="session")
def compat_files():
    """``compat_files(source_id) -> Converted``, memoized for the session."""
    cache: dict[str, Converted] = {}

    def get(source_id: str) -> Converted:
        if source_id not in cache:
            cache[source_id] = converted(source_id)
        return cache[source_id]

    return get
