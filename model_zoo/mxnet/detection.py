"""MXNet detection-op references (``detection_build.py`` run by the mxnet side environment),
built once and cached under ``cache_dir('mxnet-det', <hash of detection_build.py>)``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from model_zoo.common import cache_dir
from model_zoo.mxnet import mxnet_env, mxnet_python

HERE = Path(__file__).resolve().parent


def build_detection() -> tuple[Path, list[dict]]:
    """(folder, manifest) of the detection references; built on first use."""
    digest = hashlib.sha256((HERE / "detection_build.py").read_bytes()).hexdigest()[:12]
    out = cache_dir("mxnet-det", digest)
    if not (out / "manifest.json").exists():
        py = mxnet_python()
        if py is None:
            raise RuntimeError("the mxnet side environment is missing; run `make mxnet-env`")
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
        try:
            proc = subprocess.run([str(py), str(HERE / "detection_build.py"), str(tmp)], env=mxnet_env(),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"mxnet detection reference build failed:\n{proc.stderr[-4000:]}")
            for f in tmp.iterdir():
                if f.name != "manifest.json":
                    os.replace(f, out / f.name)
            os.replace(tmp / "manifest.json", out / "manifest.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out, json.loads((out / "manifest.json").read_text())
