"""Build MXNet recurrent reference models and outputs. Run BY the mxnet side environment, with
oneDNN on (mxnet 1.9.1's RNN op fails inside mxnet when MXNET_MKLDNN_ENABLED=0):

    MXNET_MKLDNN_ENABLED=1 .venv-mxnet/bin/python model_zoo/mxnet/rnn_build.py OUT_DIR

Gluon recurrent layers (fused ``RNN`` op) and unrolled cells with random weights, exported
with ``HybridBlock.export``. Per model ``<name>``: ``<name>-symbol.json``,
``<name>-0000.params`` and, per case ``k`` (a batch size and sequence length),
``<name>-input-k.npz`` (inputs by variable name) and ``<name>-ref-k.npz`` (MXNet's outputs in
``list_outputs()`` order as ``out0``, ``out1``, ...). ``manifest.json`` lists models, cases
and the input shapes (symbolic batch ``N`` and time ``T``) for conversion.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["MXNET_MKLDNN_ENABLED"] = "1"

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet.gluon import HybridBlock, nn, rnn  # noqa: E402

F_IN = 5
#: (batch, steps) of the reference cases; unrolled cells have a fixed number of steps
CASES = [(1, 3), (3, 7), (2, 12)]


class Layer(HybridBlock):
    """A fused Gluon recurrent layer (+ a Dense head on every step), states optional."""

    def __init__(self, layer, head: int | None = None, with_states: bool = False, **kw):
        super().__init__(**kw)
        self.with_states = with_states
        with self.name_scope():
            self.rnn = layer
            self.head = nn.Dense(head, flatten=False) if head else None

    def hybrid_forward(self, F, x, *states):
        if self.with_states:
            out, new_states = self.rnn(x, list(states))
        else:
            out, new_states = self.rnn(x), []
        if self.head is not None:
            out = self.head(out)
        return (out, *new_states) if self.with_states else out


class Unrolled(HybridBlock):
    def __init__(self, cell, steps: int, **kw):
        super().__init__(**kw)
        self.steps = steps
        with self.name_scope():
            self.cell = cell

    def hybrid_forward(self, F, x):
        out, _ = self.cell.unroll(self.steps, x, layout="NTC", merge_outputs=True)
        return out


def models():
    """name -> (block, layout 'NTC'/'TNC', number of state inputs, hidden, layers*dirs, steps or None)."""
    return {
        "lstm_2bi_states": (Layer(rnn.LSTM(8, num_layers=2, bidirectional=True, layout="NTC", input_size=F_IN),
                                  with_states=True), "NTC", 2, 8, 4, None),
        "gru_tnc_head": (Layer(rnn.GRU(6, num_layers=2, layout="TNC", input_size=F_IN), head=3), "TNC", 0, 6, 2, None),
        "gru_bi_states": (Layer(rnn.GRU(4, bidirectional=True, layout="NTC", input_size=F_IN), with_states=True),
                          "NTC", 1, 4, 2, None),
        "rnn_relu_2": (Layer(rnn.RNN(5, activation="relu", num_layers=2, layout="NTC", input_size=F_IN)),
                       "NTC", 0, 5, 2, None),
        "rnn_tanh_bi": (Layer(rnn.RNN(7, activation="tanh", bidirectional=True, layout="NTC", input_size=F_IN)),
                        "NTC", 0, 7, 2, None),
        "lstm_cell_unrolled": (Unrolled(rnn.LSTMCell(6, input_size=F_IN), 4), "NTC", 0, 6, 1, 4),
        "gru_cell_unrolled": (Unrolled(rnn.GRUCell(5, input_size=F_IN), 4), "NTC", 0, 5, 1, 4),
    }


def _data_shape(layout: str, batch: int, steps: int) -> tuple[int, int, int]:
    return (batch, steps, F_IN) if layout == "NTC" else (steps, batch, F_IN)


def _run(block, layout: str, state_names: list[str], state_dims: tuple[int, int], rng, batch: int, steps: int):
    """Random inputs of one case and MXNet's outputs on them."""
    feeds = {"data": rng.standard_normal(_data_shape(layout, batch, steps)).astype(np.float32)}
    for s in state_names:
        feeds[s] = rng.standard_normal((state_dims[0], batch, state_dims[1])).astype(np.float32)
    outs = block(mx.nd.array(feeds["data"]), *[mx.nd.array(feeds[s]) for s in state_names])
    outs = outs if isinstance(outs, list | tuple) else [outs]
    return feeds, [o.asnumpy() for o in outs]


def build(out: Path) -> dict:
    rng = np.random.default_rng(0)
    manifest = {}
    for name, (block, layout, n_states, hidden, ld, fixed) in models().items():
        mx.random.seed(1)
        block.initialize(mx.init.Uniform(0.4))
        block.hybridize()
        state_names = [f"state{i}" for i in range(n_states)]
        cases = [(b, fixed) for b, _ in CASES[:2]] if fixed else CASES

        run = (block, layout, state_names, (ld, hidden), rng)
        _run(*run, *cases[0])  # the first call builds the graph
        block.export(str(out / name))
        for k, (batch, steps) in enumerate(cases):
            feeds, outs = _run(*run, batch, steps)
            np.savez(out / f"{name}-input-{k}.npz", **feeds)
            np.savez(out / f"{name}-ref-{k}.npz", **{f"out{i}": o for i, o in enumerate(outs)})
        # rename the exported data variable ("data") and states ("data1", ...) as fed above
        sym = json.loads((out / f"{name}-symbol.json").read_text())
        var_names = [sym["nodes"][i]["name"] for i in sym["arg_nodes"]]
        data_vars = [v for v in var_names if v.startswith("data")]
        rename = dict(zip(data_vars, ["data", *state_names]))
        for node in sym["nodes"]:
            if node["op"] == "null" and node["name"] in rename:
                node["name"] = rename[node["name"]]
        (out / f"{name}-symbol.json").write_text(json.dumps(sym))
        shapes = {"data": (["N", fixed, F_IN] if fixed else ["N", "T", F_IN]) if layout == "NTC" else ["T", "N", F_IN]}
        for s in state_names:
            shapes[s] = ["LD", "N", hidden]
        manifest[name] = {"cases": len(cases), "input_shapes": shapes, "inputs": ["data", *state_names]}
    manifest["lstm_seqlen"] = _seqlen_model(out, rng)
    return manifest


def _seqlen_model(out: Path, rng) -> dict:
    """A time-major LSTM with ``use_sequence_length``. mxnet 1.9.1's CPU kernel ignores the
    lengths, so the reference applies MXNet's documented semantics with MXNet itself: each
    sample run alone over its own steps; outputs past its length are zero."""
    layer = rnn.LSTM(6, layout="TNC", input_size=F_IN, use_sequence_length=True, bidirectional=True)
    block = Layer(layer)
    mx.random.seed(2)
    block.initialize(mx.init.Uniform(0.4))

    def forward(x, lens):
        return block.rnn(x, sequence_length=lens)

    class Wrap(HybridBlock):
        def __init__(self, **kw):
            super().__init__(**kw)
            with self.name_scope():
                self.inner = block

        def hybrid_forward(self, F, x, lens):
            return self.inner.rnn(x, sequence_length=lens)

    wrap = Wrap()
    wrap.hybridize()
    steps, batch = 6, 3
    x = rng.standard_normal((steps, batch, F_IN)).astype(np.float32)
    lens = np.array([6, 2, 4], dtype=np.float32)
    wrap(mx.nd.array(x), mx.nd.array(lens))
    wrap.export(str(out / "lstm_seqlen"))
    ref = np.zeros((steps, batch, 12), dtype=np.float32)
    for b in range(batch):
        n = int(lens[b])
        single = forward(mx.nd.array(x[:n, b:b + 1]), mx.nd.array(lens[b:b + 1])).asnumpy()
        ref[:n, b] = single[:, 0]
    np.savez(out / "lstm_seqlen-input-0.npz", data=x, lens=lens)
    np.savez(out / "lstm_seqlen-ref-0.npz", out0=ref)
    sym = json.loads((out / "lstm_seqlen-symbol.json").read_text())
    names = [sym["nodes"][i]["name"] for i in sym["arg_nodes"] if sym["nodes"][i]["name"].startswith("data")]
    rename = dict(zip(names, ["data", "lens"]))
    for node in sym["nodes"]:
        if node["op"] == "null" and node["name"] in rename:
            node["name"] = rename[node["name"]]
    (out / "lstm_seqlen-symbol.json").write_text(json.dumps(sym))
    return {"cases": 1, "input_shapes": {"data": ["T", "N", F_IN], "lens": ["N"]}, "inputs": ["data", "lens"]}


if __name__ == "__main__":
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    (target / "manifest.json").write_text(json.dumps(build(target), indent=1))
