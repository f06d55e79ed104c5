"""MXNet reference runner: real mxnet 1.9.1 in its side environment, through a subprocess.

mxnet 1.9.1 needs numpy<1.24, so it lives in ``.venv-mxnet`` (``make mxnet-env``); its
python is ``$PORTANET_MXNET_PYTHON`` or ``<repo>/.venv-mxnet/bin/python``. The subprocess
runs with ``MXNET_MKLDNN_ENABLED=0``: the oneDNN kernels of the pip wheel disagree with
MXNet's reference kernels on some ops (SoftmaxOutput on 4-D input, Deconvolution with
``target_shape``). Symbols with the fused ``RNN`` op run with oneDNN on: mxnet 1.9.1 has
no RNN kernel without it.

Output names follow the importer: graph outputs are ``sym.list_outputs()`` names, and a
requested layer ``name`` returns ``sym.get_internals()[name + '_output']`` (or the first of
``name_output0``..., or ``name`` itself when it already names an internal output).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from portanet.errors import MissingDependencyError, RuntimeBackendError

# Runs inside the side environment: argv = [request.json]; writes outputs.npz beside it.
_SCRIPT = r"""
import json, sys
import numpy as np
import mxnet as mx

req = json.load(open(sys.argv[1]))
sym = mx.sym.load(req["symbol"])
saved = mx.nd.load(req["params"])
if isinstance(saved, list):  # an unnamed (here: empty) list
    if saved:
        raise SystemExit("mxnet: the params file holds unnamed arrays")
    saved = {}
arg_params, aux_params = {}, {}
for k, v in saved.items():
    kind, _, name = k.partition(":")
    if kind == "aux":
        aux_params[name] = v
    elif kind == "arg":
        arg_params[name] = v
    else:
        arg_params[k] = v
feeds = dict(np.load(req["feeds"]))
if req.get("float64"):  # arbitration: the same network in exact(er) arithmetic
    arg_params = {k: v.astype("float64") for k, v in arg_params.items()}
    aux_params = {k: v.astype("float64") for k, v in aux_params.items()}
    feeds = {k: v.astype("float64") if v.dtype.kind == "f" else v for k, v in feeds.items()}
internals = sym.get_internals()
names = internals.list_outputs()
outputs = list(sym.list_outputs())
extra = []
for layer in req["layers"]:
    cands = [layer + "_output", layer + "_output0", layer]
    found = next((c for c in cands if c in names), None)
    if found is not None:  # layers mxnet has no output for are left out
        extra.append((layer, found))
group = mx.sym.Group([sym] + [internals[f] for _, f in extra]) if extra else sym
shapes = {k: v.shape for k, v in feeds.items()}
arg_shapes, _, aux_shapes = group.infer_shape(**shapes)
args = {}
for name, shape in zip(group.list_arguments(), arg_shapes):
    if name in feeds:
        args[name] = mx.nd.array(feeds[name], dtype=feeds[name].dtype)
    elif name in arg_params:
        args[name] = arg_params[name]
    else:  # labels of training heads
        args[name] = mx.nd.zeros(shape, dtype="float64" if req.get("float64") else "float32")
aux = {name: aux_params[name] for name in group.list_auxiliary_states()}
exe = group.bind(mx.cpu(), args, aux_states=aux, grad_req="null")
res = exe.forward(is_train=False)
out = {}
for name, arr in zip(outputs, res[: len(outputs)]):
    out[name] = arr.asnumpy()
for (layer, _), arr in zip(extra, res[len(outputs):]):
    out["layer:" + layer] = arr.asnumpy()
np.savez(req["out"], **out)
"""


def mxnet_python() -> Path:
    """The side environment's python, or MissingDependencyError saying how to make it."""
    env = os.environ.get("PORTANET_MXNET_PYTHON")
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parents[3] / ".venv-mxnet" / "bin" / "python")
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise MissingDependencyError("mxnet==1.9.1 (side environment .venv-mxnet, `make mxnet-env`)", "all")


def _resolve(sources: Sequence[Any], options: Any) -> tuple[Path, Path]:
    from portanet.converters.mxnet.importer import find_params

    paths = [Path(s) for s in sources]
    symbols = [p for p in paths if p.suffix.lower() == ".json"]
    params = [p for p in paths if p.suffix.lower() == ".params"]
    # options: a mapping, or the ConvertOptions given to the importer
    if options is None:
        opts: dict[str, Any] = {}
    elif isinstance(options, Mapping):
        opts = dict(options)
        conv = opts.get("convert_options")
        if conv is not None:
            opts.setdefault("params", getattr(conv, "params", None))
            opts.setdefault("epoch", getattr(conv, "epoch", None))
    else:
        opts = {"params": getattr(options, "params", None), "epoch": getattr(options, "epoch", None)}
    if opts.get("params"):
        params = [Path(opts["params"])]
    if len(symbols) != 1:
        raise RuntimeBackendError(f"the mxnet runner needs one -symbol.json, received {[str(p) for p in paths]}")
    param = params[0] if params else find_params(symbols[0], opts.get("epoch"))
    return symbols[0], param


def _has_rnn(symbol: Path) -> bool:
    try:
        nodes = json.loads(symbol.read_text()).get("nodes", [])
    except (OSError, ValueError):
        return False
    return any(isinstance(n, dict) and n.get("op") == "RNN" for n in nodes)


def run_reference(
    sources: Sequence[Any],
    feeds: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    options: Any = None,
) -> dict[str, np.ndarray]:
    """Run the checkpoint in mxnet 1.9.1 (inference mode) and return its outputs by name,
    plus ``layers``' first outputs keyed by layer name."""
    symbol, params = _resolve(sources, options)
    py = mxnet_python()
    with tempfile.TemporaryDirectory(prefix="portanet-mxnet-") as tmp:
        t = Path(tmp)
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in feeds.items()})
        (t / "feeds.npz").write_bytes(buf.getvalue())
        req = {"symbol": str(symbol.resolve()), "params": str(params.resolve()), "feeds": str(t / "feeds.npz"),
               "layers": list(layers or []), "out": str(t / "out.npz"),
               "float64": bool(options.get("float64")) if isinstance(options, Mapping) else False}
        (t / "request.json").write_text(json.dumps(req))
        (t / "run.py").write_text(_SCRIPT)
        # the fused RNN op exists only with oneDNN in mxnet 1.9.1 (it fails inside mxnet without)
        onednn = "1" if _has_rnn(symbol) else "0"
        env = dict(os.environ, MXNET_MKLDNN_ENABLED=onednn, MXNET_STORAGE_FALLBACK_LOG_VERBOSE="0")
        proc = subprocess.run([str(py), str(t / "run.py"), str(t / "request.json")], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeBackendError(f"mxnet reference run failed: {tail[-1] if tail else proc.returncode}")
        with np.load(t / "out.npz") as z:
            raw = {k: z[k] for k in z.files}
    out = {k: v for k, v in raw.items() if not k.startswith("layer:")}
    out.update({k[len("layer:"):]: v for k, v in raw.items() if k.startswith("layer:")})
    return out
