"""MXNet recurrent reference models (``rnn_build.py`` run by the mxnet side environment).

Built once and cached under ``cache_dir('mxnet-rnn', <hash of rnn_build.py>)``. Unlike the
other MXNet references these run with oneDNN on: mxnet 1.9.1's RNN op fails inside mxnet
with ``MXNET_MKLDNN_ENABLED=0``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from model_zoo.common import cache_dir
from model_zoo.mxnet import mxnet_python

HERE = Path(__file__).resolve().parent


def rnn_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MXNET_MKLDNN_ENABLED": "1", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2")})
    return env


def build_rnn() -> tuple[Path, dict]:
    """(folder, manifest) of the recurrent references; built on first use."""
    digest = hashlib.sha256((HERE / "rnn_build.py").read_bytes()).hexdigest()[:12]
    out = cache_dir("mxnet-rnn", digest)
    if not (out / "manifest.json").exists():
        py = mxnet_python()
        if py is None:
            raise RuntimeError("the mxnet side environment is missing; run `make mxnet-env`")
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
        try:
            proc = subprocess.run([str(py), str(HERE / "rnn_build.py"), str(tmp)], env=rnn_env(),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"mxnet recurrent reference build failed:\n{proc.stderr[-4000:]}")
            for f in tmp.iterdir():
                if f.name != "manifest.json":
                    os.replace(f, out / f.name)
            os.replace(tmp / "manifest.json", out / "manifest.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out, json.loads((out / "manifest.json").read_text())
