"""MXNet reference models, built by the mxnet 1.9.1 side environment (``make mxnet-env``).

``build()`` runs ``build.py`` in that environment once and caches the result under
``cache_dir('mxnet', <hash of the builder scripts>)``; a changed builder gets a new folder.
The main environment never imports mxnet.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from model_zoo.common import REPO, build_lock, cache_dir

HERE = Path(__file__).resolve().parent
_SCRIPTS = ("build.py", "op_cases.py")
ALL_PARTS = ("params", "ops", "case_study", "zoo")


def mxnet_python() -> Path | None:
    """The side environment's python: ``$PORTANET_MXNET_PYTHON`` or ``<repo>/.venv-mxnet``."""
    env = os.environ.get("PORTANET_MXNET_PYTHON")
    candidates = [Path(env)] if env else []
    candidates.append(REPO / ".venv-mxnet" / "bin" / "python")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    return None


def mxnet_env() -> dict[str, str]:
    """Environment for mxnet subprocesses: reference kernels, no oneDNN, quiet fallbacks."""
    env = dict(os.environ)
    env.update({"MXNET_MKLDNN_ENABLED": "0", "MXNET_STORAGE_FALLBACK_LOG_VERBOSE": "0",
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2")})
    return env


def builder_hash() -> str:
    h = hashlib.sha256()
    for name in _SCRIPTS:
        h.update((HERE / name).read_bytes())
    return h.hexdigest()[:12]


def build(parts: tuple[str, ...] = ALL_PARTS) -> Path:
    """Build (once) and return the folder with the reference models of ``parts``."""
    py = mxnet_python()
    out = cache_dir("mxnet", builder_hash())

    def missing() -> list[str]:
        return [p for p in parts if not (out / f".done-{p}").exists()]

    if not missing():
        return out
    if py is None:
        raise RuntimeError("the mxnet side environment is missing; run `make mxnet-env`")
    from portanet.ir.io import atomic_write_bytes

    with build_lock(out):  # parallel test workers: one builds, the others wait and reuse it
        todo = missing()
        if not todo:
            return out
        # build into a temporary folder and move files in: a killed build leaves no half files
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
        try:
            proc = subprocess.run([str(py), str(HERE / "build.py"), str(tmp), *todo], env=mxnet_env(),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"mxnet reference build failed:\n{proc.stderr[-4000:]}")
            manifest = json.loads((tmp / "manifest.json").read_text())
            for f in tmp.iterdir():
                if f.name != "manifest.json":
                    os.replace(f, out / f.name)
            for part in todo:
                atomic_write_bytes(out / f"manifest-{part}.json", json.dumps(manifest["built"][part]).encode())
                (out / f".done-{part}").touch()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(out)
    return out


def _prune(keep: Path) -> None:
    """Remove folders of earlier builder versions (other hashes) beside ``keep``."""
    for old in keep.parent.iterdir():
        if old != keep and old.is_dir() and len(old.name) == 12 and all(c in "0123456789abcdef" for c in old.name):
            shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    print(build(tuple(sys.argv[1:]) or ALL_PARTS))


def build_side_references(script: str, cache_name: str, env: dict[str, str], what: str) -> tuple[Path, dict]:
    """Run ``model_zoo/mxnet/<script> OUT`` in the mxnet side environment once and cache its
    output under ``cache_dir(cache_name, <hash of the script>)``; returns (folder, manifest).
    The folder is filled atomically: files land first, ``manifest.json`` last."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256((here / script).read_bytes()).hexdigest()[:12]
    out = cache_dir(cache_name, digest)
    manifest = out / "manifest.json"
    if not manifest.exists():
        with build_lock(manifest):  # parallel test workers: one builds, the others wait and reuse it
            if not manifest.exists():
                _build_side(script, out, env, what)
    return out, json.loads(manifest.read_text())


def _build_side(script: str, out: Path, env: dict[str, str], what: str) -> None:
    py = mxnet_python()
    if py is None:
        raise RuntimeError("the mxnet side environment is missing; run `make mxnet-env`")
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        proc = subprocess.run([str(py), str(HERE / script), str(tmp)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"mxnet {what} reference build failed:\n{proc.stderr[-4000:]}")
        for f in tmp.iterdir():
            if f.name != "manifest.json":
                os.replace(f, out / f.name)
        os.replace(tmp / "manifest.json", out / "manifest.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
