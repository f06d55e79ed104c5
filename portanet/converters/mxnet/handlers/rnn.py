"""Recurrent layers: the fused ``RNN`` op (what Gluon's ``rnn.LSTM/GRU/RNN`` export), its
``_rnn_param_concat`` parameter vector, ``_zeros`` / ``_ones`` initial states, and ``stack``
(used by unrolled Gluon cells with ``merge_outputs``).

MXNet's ``RNN`` takes data (T, N, C), one flat parameter vector, the initial state
(L*D, N, H) (and the LSTM cell state), optionally per-sample sequence lengths (N,), and
returns (T, N, D*H) [plus the final states]. The flat vector holds, for each layer and
direction in turn, the input-to-hidden weights (G*H, C_l) and the hidden-to-hidden weights
(G*H, H); then, in the same order, the two bias vectors (G*H,). C_0 = C, C_l = D*H after.
Gates are stacked as LSTM ``i f c o`` and GRU ``r z n`` (ONNX: ``i o f c`` and ``z r h``);
MXNet's GRU applies the reset gate after the hidden-to-hidden product (ONNX
``linear_before_reset=1``).

Each layer becomes one ONNX LSTM / GRU / RNN node whose W, R and B are sliced from the
parameter vector by IR nodes, so the stored MXNet arrays stay the trainable initializers
(under their MXNet names).

``use_sequence_length``: MXNet documents (and its cuDNN kernel applies) per-sample lengths:
outputs past a sample's length are zero and its final state is the one at its last step;
that is what the IR computes (ONNX ``sequence_lens``). MXNet 1.9.1's CPU kernel ignores the
lengths altogether.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.converters.mxnet.context import NodeCtx
from portanet.converters.mxnet.handlers import HANDLERS
from portanet.converters.mxnet.symbol import MxNode
from portanet.errors import ConversionError

#: mode -> (ONNX op, gates, MXNet gate k -> position of ONNX gate k in MXNet's stack)
_MODES = {
    "lstm": ("LSTM", 4, [0, 3, 1, 2]),  # ONNX i o f c from MXNet i f c o
    "gru": ("GRU", 3, [1, 0, 2]),  # ONNX z r h from MXNet r z n
    "rnn_tanh": ("RNN", 1, [0]),
    "rnn_relu": ("RNN", 1, [0]),
}


def op_variant(node: MxNode) -> str:
    """The op type to check for support: ``node.op``, or a variant name no handler takes
    (``RNN(projection_size)``, ...) for recurrent options portanet cannot express exactly."""
    if node.op != "RNN":
        return node.op
    a = node.attrs
    if a.int("projection_size", None) is not None:
        return "RNN(projection_size)"
    if a.float("lstm_state_clip_min", None) is not None or a.float("lstm_state_clip_max", None) is not None:
        return "RNN(lstm_state_clip)"
    if a.str("mode", "") not in _MODES:
        return f"RNN(mode={a.str('mode', '')})"
    return node.op


@HANDLERS.register("_rnn_param_concat")
def rnn_param_concat(n: NodeCtx) -> ir.Value:
    return n.op("Concat", n.inputs(), {"axis": n.attrs.int("dim", 1)})


@HANDLERS.register("stack")
def stack(n: NodeCtx) -> ir.Value:
    axis = n.attrs.int("axis", 0)
    xs = n.inputs()
    if axis < 0:
        axis += n.rank(xs[0]) + 1
    return n.op("Concat", [n.op("Unsqueeze", [x, n.ints([axis])]) for x in xs], {"axis": axis})


def _fill(value: float):
    def handler(n: NodeCtx) -> ir.Value:
        shape = list(n.attrs.tuple("shape", ()))
        dtype = np.dtype(n.attrs.str("dtype", "float32") or "float32")
        if all(isinstance(d, int) and d > 0 for d in shape):
            return n.const(np.full(shape, value, dtype=dtype))
        # 0 = "inferred by MXNet": only the batch axis is inferred here (a begin state)
        batch = _batch_size(n)
        layout = n.attrs.str("__layout__", "") or ""
        pieces = []
        for i, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                pieces.append(n.ints([d]))
            elif i < len(layout) and layout[i] != "N":
                raise ConversionError(f"cannot infer dimension {i} ('{layout[i]}') of shape {tuple(shape)}")
            else:
                pieces.append(batch)
        dims = pieces[0] if len(pieces) == 1 else n.op("Concat", pieces, {"axis": 0})
        return n.op("ConstantOfShape", [dims], {"value": ir.tensor(np.asarray([value], dtype=dtype))})

    return handler


HANDLERS.register("_zeros", "zeros")(_fill(0.0))
HANDLERS.register("_ones", "ones")(_fill(1.0))


def _batch_size(n: NodeCtx) -> ir.Value:
    """The batch size as a 1-element int64 tensor, for a begin state with an inferred batch:
    axis 1 of the data of the ``RNN`` op it feeds; otherwise axis 0 of the graph's first
    data input (unrolled Gluon cells over batch-major data)."""
    conv = n.conv
    for consumer, _pos in conv.symbol.consumers().get(n.node.index, []):
        if consumer.op == "RNN":
            src, idx = consumer.inputs[0]
            src_node = conv.symbol.nodes[src]
            data = conv.variable(src_node, consumer) if src_node.is_variable else conv.values.get((src, idx))
            if data is None:
                raise ConversionError(f"the data of '{consumer.name}' is not converted yet")
            return n.dim(data, 1)
    for node in conv.symbol.nodes:
        if node.is_variable and node.name not in conv.params and not node.name.endswith("_label"):
            return n.dim(conv.variable(node, None), 0)
    raise ConversionError("cannot infer the batch size of a begin state: the graph has no data input")


@HANDLERS.register("RNN")
def rnn(n: NodeCtx) -> list[ir.Value] | ir.Value:
    a = n.attrs
    mode = a.str("mode")
    if mode not in _MODES:
        raise ConversionError(f"expected mode lstm, gru, rnn_tanh or rnn_relu, received '{mode}'")
    onnx_op, gates, order = _MODES[mode]
    hidden = a.int("state_size")
    layers = a.int("num_layers", 1)
    dirs = 2 if a.bool("bidirectional", False) else 1
    lstm = mode == "lstm"
    x = n.input(0)  # (T, N, C)
    flat = n.weight(1)
    state = n.input(2) if n.n_inputs > 2 else None
    cell = n.input(3) if lstm and n.n_inputs > 3 else None
    lens_pos = 4 if lstm else 3
    lens = None
    if a.bool("use_sequence_length", False):
        lens = n.op("Cast", [n.input(lens_pos)], {"to": ir.DataType.INT32})
    in_size = _input_size(n, x, flat, gates, hidden, layers, dirs)
    gh = gates * hidden
    # rows of a (G*H, ...) MXNet block in ONNX gate order
    rows = n.ints([g * hidden + k for g in order for k in range(hidden)])

    # offsets of every block in the flat vector: all weights, then all biases
    offset = 0
    w_off: dict[tuple[int, int], tuple[int, int, int]] = {}
    for layer in range(layers):
        cin = in_size if layer == 0 else dirs * hidden
        for d in range(dirs):
            w_off[layer, d] = (offset, offset + gh * cin, cin)
            offset += gh * cin + gh * hidden
    b_off: dict[tuple[int, int], int] = {}
    for layer in range(layers):
        for d in range(dirs):
            b_off[layer, d] = offset
            offset += 2 * gh
    flat_dims = n.dims(flat)
    if flat_dims and isinstance(flat_dims[0], int) and flat_dims[0] != offset:
        raise ConversionError(
            f"expected {offset} parameters for a {layers}-layer {'bidirectional ' if dirs == 2 else ''}{mode} "
            f"with {hidden} units and {in_size} inputs, received {flat_dims[0]}"
        )

    def block(start: int, size: int, shape: list[int]) -> ir.Value:
        piece = n.op("Slice", [flat, n.ints([start]), n.ints([start + size])])
        piece = n.op("Reshape", [piece, n.ints(shape)]) if len(shape) > 1 else piece
        return n.op("Gather", [piece, rows], {"axis": 0})

    def per_dir(values: list[ir.Value]) -> ir.Value:
        values = [n.op("Unsqueeze", [v, n.ints([0])]) for v in values]
        return values[0] if len(values) == 1 else n.op("Concat", values, {"axis": 0})

    attrs: dict = {"hidden_size": hidden, "direction": "bidirectional" if dirs == 2 else "forward"}
    if onnx_op == "GRU":
        attrs["linear_before_reset"] = 1
    if onnx_op == "RNN":
        attrs["activations"] = ["Relu" if mode == "rnn_relu" else "Tanh"] * dirs
    y = x
    hs, cs = [], []
    for layer in range(layers):
        ws, rs, bs = [], [], []
        for d in range(dirs):
            start, r_start, cin = w_off[layer, d]
            ws.append(block(start, gh * cin, [gh, cin]))
            rs.append(block(r_start, gh * hidden, [gh, hidden]))
            bo = b_off[layer, d]
            bs.append(n.op("Concat", [block(bo, gh, [gh]), block(bo + gh, gh, [gh])], {"axis": 0}))
        sl = [n.ints([layer * dirs]), n.ints([(layer + 1) * dirs])]
        h0 = n.op("Slice", [state, *sl]) if state is not None else None
        c0 = n.op("Slice", [cell, *sl]) if cell is not None else None
        inputs = [y, per_dir(ws), per_dir(rs), per_dir(bs), lens, h0] + ([c0] if lstm else [])
        outs = n.op(onnx_op, inputs, attrs, outputs=3 if lstm else 2)
        hs.append(outs[1])
        if lstm:
            cs.append(outs[2])
        y = outs[0]
        if layer < layers - 1:
            y = _merge_directions(n, y)
    states = []
    if a.bool("state_outputs", False):
        states.append(hs[0] if layers == 1 else n.op("Concat", hs, {"axis": 0}))
        if lstm:
            states.append(cs[0] if layers == 1 else n.op("Concat", cs, {"axis": 0}))
    # the layer's main output comes last, so that its value is the layer's value for bisection
    y = _merge_directions(n, y)
    return [y, *states] if states else y


def _merge_directions(n: NodeCtx, y: ir.Value) -> ir.Value:
    """ONNX Y (T, D, N, H) -> MXNet's (T, N, D*H) (also the next layer's input)."""
    yt = n.op("Transpose", [y], {"perm": [0, 2, 1, 3]})
    return n.op("Reshape", [yt, n.ints([0, 0, -1])])


def _input_size(n: NodeCtx, x: ir.Value, flat: ir.Value, gates: int, hidden: int, layers: int, dirs: int) -> int:
    """C: the data's static feature size, or solved from the parameter count."""
    d = n.dims(x)
    if d is not None and len(d) == 3 and isinstance(d[2], int):
        return d[2]
    fd = n.dims(flat)
    if fd and isinstance(fd[0], int):
        gh = gates * hidden
        rest = (layers - 1) * dirs * gh * (dirs * hidden + hidden) + 2 * layers * dirs * gh
        c = (fd[0] - rest) // (dirs * gh) - hidden
        if c > 0 and dirs * gh * (c + hidden) + rest == fd[0]:
            return c
    raise ConversionError("cannot tell the input size of the RNN; give the data's shape with --input-shape")
