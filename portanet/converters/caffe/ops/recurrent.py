"""Caffe's recurrent layers: LSTM and RNN, with the ``cont`` sequence-continuation input.

Bottoms: x (T, N, ...) time-major, cont (T, N), optionally x_static (N, ...), and with
``expose_hidden`` the initial state(s) h_0 (1, N, H) [and c_0]. Tops: the per-step output
(T, N, H) and, with ``expose_hidden``, the final state(s) h_T [and c_T] (1, N, H).

Caffe unrolls the layer into a net (``FillUnrolledNet``) where, at every step t,

    h_conted = cont_t * h_{t-1}                                  (a new sequence starts at cont_t = 0)
    LSTM: [i f o g] = W_hc h_conted + W_xc x_t + b_c (+ W_xc_static x_static)
          i, f, o = sigmoid, g = tanh
          c_t = cont_t * (f * c_{t-1}) + i * g;  h_t = o * tanh(c_t);  top: h_t
    RNN:  h_t = tanh(W_hh h_conted + W_xh x_t + b_h (+ W_xh_static x_static))
          o_t = tanh(W_ho h_t + b_o);  top: o_t

Blobs: LSTM W_xc (4H, I), b_c (4H), [W_xc_static (4H, S)], W_hc (4H, H); RNN W_xh (H, I),
b_h (H), [W_xh_static], W_hh (H, H), W_ho (H, H), b_o (H).

``cont`` may reset the state anywhere inside the batch of sequences, which the ONNX
recurrent ops cannot express, so the step is an ONNX ``Scan`` body (exact for any ``cont``
values); the input projection of all steps is one MatMul before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.caffe.context import Ctx, Out, prod
from portanet.converters.caffe.ops.table import HANDLERS
from portanet.errors import ConversionError
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY


class _Body:
    """Builds a Scan body graph (nodes carry the layer's provenance)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.nodes: list[ir.Node] = []
        self.prefix = f"{ctx.layer.name}_step"

    def value(self, name: str) -> ir.Value:
        return ir.Value(name=self.ctx.b.unique_value_name(f"{self.prefix}_{name}"))

    def op(self, op_type: str, inputs: list[ir.Value], attrs: dict[str, Any] | None = None, n: int = 1) -> Any:
        outs = [self.value(op_type.lower()) for _ in range(n)]
        node = ir.Node("", op_type, inputs, attributes=ir.convenience.convert_attributes(attrs or {}),
                       outputs=outs, name=self.ctx.b.unique_node_name(f"{self.prefix}_{op_type}"))
        node.metadata_props[SOURCE_KEY] = self.ctx.layer.name
        node.metadata_props[SOURCE_TYPE_KEY] = self.ctx.layer.type
        self.nodes.append(node)
        return outs[0] if n == 1 else outs

    def const(self, array: np.ndarray) -> ir.Value:
        return self.op("Constant", [], {"value": ir.tensor(array)})


def _bottoms(ctx: Ctx, n_states: int) -> tuple[ir.Value, ir.Value, ir.Value | None, list[ir.Value]]:
    expose = ctx.p.recurrent_param.expose_hidden
    n = len(ctx.inputs)
    allowed = [2 + s + (n_states if expose else 0) for s in (0, 1)]
    if n not in allowed:
        raise ConversionError(f"expected {' or '.join(map(str, allowed))} bottoms (x, cont"
                              f"{', x_static' if n > allowed[0] else ''}"
                              f"{', initial states' if expose else ''}), received {n}")
    static = ctx.inputs[2] if n == allowed[1] else None
    states = ctx.inputs[n - n_states:] if expose else []
    return ctx.inputs[0], ctx.inputs[1], static, states


def _recurrent(ctx: Ctx, kind: str) -> list[Out]:
    lstm = kind == "LSTM"
    n_states = 2 if lstm else 1
    hidden = int(ctx.p.recurrent_param.num_output)
    if hidden <= 0:
        raise ConversionError("expected recurrent_param { num_output } > 0")
    x, cont, static, states = _bottoms(ctx, n_states)
    shape = ctx.shape
    if len(shape) < 3 or ctx.shapes[1][:2] != shape[:2]:
        raise ConversionError(f"expected x (T, N, ...) and cont (T, N), received {shape} and {ctx.shapes[1]}")
    steps, batch, feat = shape[0], shape[1], prod(shape[2:])
    g = 4 * hidden if lstm else hidden
    has_static = static is not None
    ctx.expect_blobs((4 if has_static else 3) if lstm else (6 if has_static else 5), "recurrent weights")
    w_x = ctx.blob(0, [g, feat], "W_x")
    b = ctx.blob(1, [g], "b")
    k = 2
    w_static = None
    if has_static:
        sfeat = prod(ctx.shapes[2][1:])
        w_static = ctx.blob(2, [g, sfeat], "W_x_static")
        k = 3
    w_h = ctx.blob(k, [g, hidden], "W_h")

    # (T, N, ...) -> (T, N, I) @ (I, G) + b: every step's input projection at once
    xf = ctx.reshape(x, [0, 0, -1])
    w_x_t = ctx.op("Transpose", [ctx.param("W_x", w_x)], {"perm": [1, 0]})
    xw = ctx.op("Add", [ctx.op("MatMul", [xf, w_x_t]), ctx.param("b", b)])
    if has_static:
        # x_static (N, ...) -> (N, S) @ (S, G), the same for every step
        sf = ctx.op("Flatten", [static], {"axis": 1})
        w_s_t = ctx.op("Transpose", [ctx.param("W_x_static", w_static)], {"perm": [1, 0]})
        xw = ctx.op("Add", [xw, ctx.op("MatMul", [sf, w_s_t])])
    w_h_t = ctx.op("Transpose", [ctx.param("W_h", w_h)], {"perm": [1, 0]})  # (H, G), read by the body

    # initial states (N, H): exposed bottoms (1, N, H), else zeros sized by the run-time batch
    if states:
        init = [ctx.op("Squeeze", [s, ctx.ints([0])]) for s in states]
    else:
        batch_dim = ctx.op("Slice", [ctx.op("Shape", [x]), ctx.ints([1]), ctx.ints([2])])
        dims = ctx.op("Concat", [batch_dim, ctx.ints([hidden])], {"axis": 0})
        zeros = ctx.op("ConstantOfShape", [dims], {"value": ir.tensor(np.zeros(1, np.float32))})
        init = [zeros] * n_states

    body = _Body(ctx)
    h_in = body.value("h_in")
    c_in = body.value("c_in") if lstm else None
    xw_t = body.value("xw_t")  # (N, G)
    cont_t = body.value("cont_t")  # (N,)
    cont_col = body.op("Unsqueeze", [cont_t, body.const(np.array([1], np.int64))])  # (N, 1)
    h_conted = body.op("Mul", [h_in, cont_col])
    gates = body.op("Add", [xw_t, body.op("MatMul", [h_conted, w_h_t])])
    if lstm:
        gi, gf, go, gg = body.op("Split", [gates], {"axis": 1, "num_outputs": 4}, n=4)
        i, f, o = (body.op("Sigmoid", [v]) for v in (gi, gf, go))
        c_out = body.op("Add", [body.op("Mul", [cont_col, body.op("Mul", [f, c_in])]),
                                body.op("Mul", [i, body.op("Tanh", [gg])])])
        h_out = body.op("Mul", [o, body.op("Tanh", [c_out])])
        state_outs = [h_out, c_out]
        body_inputs = [h_in, c_in, xw_t, cont_t]
    else:
        h_out = body.op("Tanh", [gates])
        state_outs = [h_out]
        body_inputs = [h_in, xw_t, cont_t]
    h_seq = body.op("Identity", [h_out])
    graph = ir.Graph(body_inputs, [*state_outs, h_seq], nodes=body.nodes, name=f"{ctx.layer.name}_step")

    scan_outs = ctx.op("Scan", [*init, xw, cont], {"body": ir.AttrGraph("body", graph), "num_scan_inputs": 2},
                       outputs=n_states + 1)
    finals, seq = list(scan_outs[:n_states]), scan_outs[n_states]  # seq (T, N, H)
    if not lstm:
        w_o = ctx.blob(k + 1, [hidden, hidden], "W_ho")
        b_o = ctx.blob(k + 2, [hidden], "b_o")
        w_o_t = ctx.op("Transpose", [ctx.param("W_o", w_o)], {"perm": [1, 0]})
        seq = ctx.op("Tanh", [ctx.op("Add", [ctx.op("MatMul", [seq, w_o_t]), ctx.param("b_o", b_o)])])
    tops = [Out(seq, [steps, batch, hidden])]
    if ctx.p.recurrent_param.expose_hidden:
        tops += [Out(ctx.op("Unsqueeze", [s, ctx.ints([0])]), [1, batch, hidden]) for s in finals]
    return tops


@HANDLERS.register("LSTM")
def lstm(ctx: Ctx) -> list[Out]:
    return _recurrent(ctx, "LSTM")


@HANDLERS.register("RNN")
def rnn(ctx: Ctx) -> list[Out]:
    return _recurrent(ctx, "RNN")
