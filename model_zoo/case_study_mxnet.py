"""Write the case-study CNN with given weights using mxnet 1.9.1's symbol API. Run BY the mxnet
side environment (``make mxnet-env``), from ``case_study_nets.write_mxnet``:

    MXNET_MKLDNN_ENABLED=0 .venv-mxnet/bin/python model_zoo/case_study_mxnet.py WEIGHTS.npz OUT_PREFIX

``WEIGHTS.npz`` holds ``conv1_w``, ``conv1_b``, ... (PyTorch layouts, which MXNet shares for
Convolution (Cout, Cin, kH, kW) and FullyConnected (out, in)). Writes ``OUT_PREFIX-symbol.json``
and ``OUT_PREFIX-0000.params`` and prints their paths as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MXNET_MKLDNN_ENABLED", "0")
# run as a script, this folder is sys.path[0]: its `mxnet` package (the zoo builders) must not
# shadow the real mxnet
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402


def symbol():
    S = mx.sym
    x = S.Variable("data")
    x = S.Activation(S.Convolution(x, kernel=(3, 3), num_filter=16, name="conv1"), act_type="relu", name="relu1")
    x = S.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool1")  # (N, 16, 13, 13)
    x = S.Activation(S.Convolution(x, kernel=(4, 4), num_filter=32, name="conv2"), act_type="relu", name="relu2")
    x = S.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="avg", name="pool2")  # (N, 32, 5, 5)
    x = S.Dropout(x, p=0.3, name="drop1")
    x = S.Activation(S.Convolution(x, kernel=(5, 5), num_filter=64, name="conv3"), act_type="relu", name="relu3")
    x = S.Flatten(x, name="flatten")  # (N, 64, 1, 1) -> (N, 64)
    x = S.Activation(S.FullyConnected(x, num_hidden=32, name="fc1"), act_type="tanh", name="tanh1")
    x = S.Dropout(x, p=0.2, name="drop2")
    x = S.FullyConnected(x, num_hidden=10, name="fc2")
    return S.softmax(x, axis=1, name="prob")


def main(weights_path: str, prefix: str) -> None:
    weights = dict(np.load(weights_path))
    sym = symbol()
    params = {}
    for name in ("conv1", "conv2", "conv3", "fc1", "fc2"):
        params[f"arg:{name}_weight"] = mx.nd.array(weights[f"{name}_w"], dtype="float32")
        params[f"arg:{name}_bias"] = mx.nd.array(weights[f"{name}_b"], dtype="float32")
    missing = set(sym.list_arguments()) - {"data"} - {k[4:] for k in params}
    if missing:
        raise SystemExit(f"parameters missing for {sorted(missing)}")
    sym.save(prefix + "-symbol.json")
    mx.nd.save(prefix + "-0000.params", params)
    print(json.dumps({"symbol": prefix + "-symbol.json", "params": prefix + "-0000.params",
                      "mxnet": mx.__version__}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
