"""MXNet recurrent reference models (``rnn_build.py`` run by the mxnet side environment).

Built once and cached under ``cache_dir('mxnet-rnn', <hash of rnn_build.py>)``. Unlike the
other MXNet references these run with oneDNN on: mxnet 1.9.1's RNN op fails inside mxnet
with ``MXNET_MKLDNN_ENABLED=0``.
"""

from __future__ import annotations

import os
from pathlib import Path

from model_zoo.mxnet import build_side_references


def rnn_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MXNET_MKLDNN_ENABLED": "1", "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "2")})
    return env


def build_rnn() -> tuple[Path, dict]:
    """(folder, manifest) of the recurrent references; built on first use."""
    return build_side_references("rnn_build.py", "mxnet-rnn", rnn_env(), "recurrent")
