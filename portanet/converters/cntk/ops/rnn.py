"""OptimizedRNNStack: CNTK's cuDNN-fused recurrent stack -> ONNX LSTM / GRU / RNN nodes.

``OptimizedRNNStack(x, W)`` with attributes ``hiddenSize``, ``numLayers``, ``bidirectional``
and ``recurrentOp`` (``lstm``, ``gru``, ``rnnTanh``, ``rnnReLU``) runs cuDNN's RNN over the
sequence; the output is the last layer's hidden state at every step, forward and backward
directions concatenated (D*H features). The initial states are zero.

``W`` is one parameter holding cuDNN's flat parameter vector (its values in memory order,
i.e. the NumPy-order array flattened; the parameter's own shape is irrelevant). As CNTK's own
``cntk.misc.converter`` unpacks it: for each layer, for each direction (forward, backward),
the input weights (G*H, C_l) then the recurrent weights (G*H, H), both row-major with the
gate blocks stacked along the rows; after all layers' weights come the biases, for each
layer and direction the input bias (G*H,) then the recurrent bias (G*H,). C_0 is the input
size, C_l = D*H for later layers. Gate blocks are cuDNN's: LSTM ``i f c o``, GRU ``r z h``
(ONNX: ``i o f c`` and ``z r h``). cuDNN's GRU applies the reset gate to the recurrent
product including its bias: ONNX ``linear_before_reset=1``.

Each layer is one ONNX node (bidirectional when asked) with W (D, G*H, C), R (D, G*H, H) and
B (D, 2*G*H) unpacked at conversion time. The sequence is time-major inside the stack:
(N, T, C) -> (T, N, C) once before the first layer and back after the last.
"""

from __future__ import annotations

import numpy as np

from portanet.converters.cntk.context import HANDLERS, Ctx, T, attr
from portanet.converters.cntk.graph import Function
from portanet.errors import ConversionError

#: recurrentOp -> (ONNX op, gates, cuDNN gate block of each ONNX gate, ONNX activations)
RECURRENT_OPS: dict[str, tuple[str, int, list[int], list[str] | None]] = {
    "lstm": ("LSTM", 4, [0, 3, 1, 2], None),  # ONNX i o f c from cuDNN i f c o
    "gru": ("GRU", 3, [1, 0, 2], None),  # ONNX z r h from cuDNN r z h
    "rnnTanh": ("RNN", 1, [0], ["Tanh"]),
    "rnnReLU": ("RNN", 1, [0], ["Relu"]),
}


def unpack_cudnn(flat: np.ndarray, recurrent_op: str, in_size: int, hidden: int, layers: int,
                 dirs: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """cuDNN's flat vector -> per layer ONNX (W (D, G*H, C), R (D, G*H, H), B (D, 2*G*H))."""
    _, gates, order, _ = RECURRENT_OPS[recurrent_op]
    gh = gates * hidden
    rows = np.array([g * hidden + k for g in order for k in range(hidden)])
    need = 0
    for layer in range(layers):
        cin = in_size if layer == 0 else dirs * hidden
        need += dirs * (gh * cin + gh * hidden + 2 * gh)
    if flat.size != need:
        raise ConversionError(
            f"expected {need} weights for a {layers}-layer {'bidirectional ' if dirs == 2 else ''}{recurrent_op} "
            f"with {hidden} units and {in_size} inputs, received {flat.size}"
        )
    off = 0
    mats: list[list[tuple[np.ndarray, np.ndarray]]] = []
    for layer in range(layers):
        cin = in_size if layer == 0 else dirs * hidden
        per_dir = []
        for _ in range(dirs):
            w = flat[off:off + gh * cin].reshape(gh, cin)
            off += gh * cin
            r = flat[off:off + gh * hidden].reshape(gh, hidden)
            off += gh * hidden
            per_dir.append((w[rows], r[rows]))
        mats.append(per_dir)
    out = []
    for layer in range(layers):
        bs = []
        for _ in range(dirs):
            bw, br = flat[off:off + gh], flat[off + gh:off + 2 * gh]
            off += 2 * gh
            bs.append(np.concatenate([bw[rows], br[rows]]))
        out.append((np.stack([m[0] for m in mats[layer]]), np.stack([m[1] for m in mats[layer]]), np.stack(bs)))
    return out


@HANDLERS.register("OptimizedRNNStack")
def optimized_rnn_stack(ctx: Ctx, f: Function, ins: list[T]) -> T:
    if len(ins) != 2:
        raise ConversionError(f"expected 2 inputs (x, weights), received {len(ins)}")
    x, w = ins
    if not x.seq:
        raise ConversionError(f"expected a sequence operand, received shape {list(x.full_shape)}")
    if w.array is None:
        raise ConversionError("expected the weights to be a stored Parameter/Constant")
    rop = str(attr(f, "recurrentOp", "lstm"))
    if rop not in RECURRENT_OPS:
        raise ConversionError(f"recurrentOp '{rop}' is not one of {', '.join(RECURRENT_OPS)}")
    onnx_op, _, _, acts = RECURRENT_OPS[rop]
    hidden = int(attr(f, "hiddenSize", 0))
    layers = int(attr(f, "numLayers", 1))
    dirs = 2 if bool(attr(f, "bidirectional", False)) else 1
    if hidden <= 0 or layers <= 0:
        raise ConversionError(f"expected hiddenSize and numLayers > 0, received {hidden} and {layers}")
    in_size = int(np.prod(x.shape)) if x.shape else 1
    params = unpack_cudnn(w.array.astype(np.float32).reshape(-1), rop, in_size, hidden, layers, dirs)
    y = x.value
    if x.rank != 1:
        y = ctx.reshape(f, x, (in_size,)).value
    y = ctx.op(f, "Transpose", [y], {"perm": [1, 0, 2]})  # (T, N, C)
    attrs: dict = {"hidden_size": hidden, "direction": "bidirectional" if dirs == 2 else "forward"}
    if onnx_op == "GRU":
        attrs["linear_before_reset"] = 1
    if acts:
        attrs["activations"] = acts * dirs
    name = w.value.name or f.uid
    for layer, (wl, rl, bl) in enumerate(params):
        wv = ctx.b.initializer(f"{name}_l{layer}_W", wl)
        rv = ctx.b.initializer(f"{name}_l{layer}_R", rl)
        bv = ctx.b.initializer(f"{name}_l{layer}_B", bl)
        yl = ctx.b.op(onnx_op, [y, wv, rv, bv], attrs, outputs=2)[0]  # Y (T, D, N, H)
        yl = ctx.op(f, "Transpose", [yl], {"perm": [0, 2, 1, 3]})  # (T, N, D, H)
        y = ctx.op(f, "Reshape", [yl, ctx.i64([0, 0, dirs * hidden])])  # (T, N, D*H): fw then bw features
    out = ctx.op(f, "Transpose", [y], {"perm": [1, 0, 2]}, final=True)  # (N, T, D*H)
    return x.like(out, (dirs * hidden,))
