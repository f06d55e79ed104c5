"""Attention layers: MultiHeadAttention, Attention (Luong), AdditiveAttention (Bahdanau).

Computed in the Keras order (sequences ``(N, T, D)``), with Keras' masking exactly:

* MultiHeadAttention: the attention mask is the AND of the query mask ``(N, T, 1)``, the
  value/key masks ``(N, 1, S)``, an explicit ``attention_mask`` and the causal mask
  (``row >= col``). Masked logits become a large negative number before the softmax. When
  Keras takes its fused path (no dropout, no returned scores) that is all; otherwise its
  Softmax layer also zeroes the masked probabilities (a fully masked row gives zeros, not
  a uniform row). The query is scaled before the product on the second path, the logits
  after it on the first, as in Keras.
* Attention / AdditiveAttention: masked scores are ``scores - 1e9``; the output rows of
  masked query steps are zero.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import masking
from portanet.converters.keras.context import KerasContext, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.errors import ConversionError

_BOOL = ir.DataType.BOOL
#: Keras' large negative logit (keras.layers.Softmax and the TensorFlow attention kernel
#: differ; any value whose exp underflows to 0 next to real logits gives the same result)
_LARGE_NEG = -1e9

masking.consumes_masks("MultiHeadAttention", "Attention", "AdditiveAttention")


def _causal(ctx: KerasContext, q: ir.Value, v: ir.Value) -> ir.Value:
    """(T, S) bool: row >= col, for the symbolic lengths of q (N, T, .) and v (N, S, .)."""

    def steps(x: ir.Value) -> ir.Value:
        n = ctx.op("Squeeze", [ctx.op("Shape", [x], {"start": 1, "end": 2}), ctx.ints([0])])
        return ctx.op("Range", [ctx.const(0, np.int64), n, ctx.const(1, np.int64)])

    rows = ctx.op("Unsqueeze", [steps(q), ctx.ints([1])])
    return ctx.op("GreaterOrEqual", [rows, steps(v)])


def _and(ctx: KerasContext, a: ir.Value | None, b: ir.Value | None) -> ir.Value | None:
    if a is None:
        return b
    if b is None:
        return a
    return ctx.op("And", [a, b])


def _as_bool(ctx: KerasContext, tensor: Any) -> ir.Value:
    v = ctx.get(tensor)
    return v if str(tensor.dtype) == "bool" else ctx.op("Cast", [v], {"to": _BOOL})


def _project(ctx: KerasContext, layer: Any, dense: Any, key: str, x: ir.Value, heads: int) -> ir.Value:
    """EinsumDense (D, heads, dim) on (N, T, D) -> (N, heads, T, dim)."""
    kernel = to_numpy(dense.kernel, np.float32)
    if kernel.ndim != 3:
        raise ConversionError(f"expected a (features, heads, dim) projection kernel, received {kernel.shape}")
    d, h, dim = kernel.shape
    y = ctx.op("MatMul", [x, ctx.weight(layer, f"{key}/kernel", kernel.reshape(d, h * dim))])
    if dense.bias is not None:
        y = ctx.op("Add", [y, ctx.weight(layer, f"{key}/bias", to_numpy(dense.bias, np.float32).reshape(-1))])
    y = ctx.op("Reshape", [y, ctx.ints([0, 0, h, dim])])
    return ctx.op("Transpose", [y], {"perm": [0, 2, 1, 3]})


@HANDLERS.register("MultiHeadAttention")
def multi_head_attention(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    node = masking.node_of(layer, outputs)
    args, kw = list(node.arguments.args), dict(node.arguments.kwargs)
    names = ("query", "value", "key")
    given = {n: (args[i] if i < len(args) else kw.get(n)) for i, n in enumerate(names)}
    q_t, v_t = given["query"], given["value"]
    k_t = given["key"] if given["key"] is not None else v_t
    if len(q_t.shape) != 3 or len(v_t.shape) != 3:
        raise ConversionError(f"expected (batch, steps, features) query and value, received ranks "
                              f"{len(q_t.shape)} and {len(v_t.shape)}")
    if tuple(layer._attention_axes) not in ((1,), (-2,)):
        raise ConversionError(f"attention_axes={layer._attention_axes} is not supported (only the steps axis)")
    if getattr(layer, "_use_gate", False):
        raise ConversionError("use_gate=True is not supported")
    if getattr(layer, "_sliding_window", None) is not None:
        raise ConversionError("sliding_window is not supported")
    heads, kd = int(layer.num_heads), int(layer.key_dim)
    q = _project(ctx, layer, layer._query_dense, "query", ctx.get(q_t), heads)  # (N, h, T, kd)
    k = _project(ctx, layer, layer._key_dense, "key", ctx.get(k_t), heads)  # (N, h, S, kd)
    v = _project(ctx, layer, layer._value_dense, "value", ctx.get(v_t), heads)  # (N, h, S, vd)
    # the masks Keras builds the attention mask from (query's own mask, value/key masks)
    kw.update(masking.call_masks(node))
    mask = None
    q_mask = masking.keras_mask(q_t)
    if q_mask is not None:
        mask = ctx.op("Unsqueeze", [ctx.get(q_mask), ctx.ints([-1])])  # (N, T, 1)
    for name in ("value_mask", "key_mask"):
        m = kw.get(name)
        if m is not None and (name != "key_mask" or given["key"] is not None):
            mask = _and(ctx, mask, ctx.op("Unsqueeze", [_as_bool(ctx, m), ctx.ints([-2])]))  # (N, 1, S)
    if kw.get("use_causal_mask"):
        causal = ctx.op("Unsqueeze", [_causal(ctx, ctx.get(q_t), ctx.get(v_t)), ctx.ints([0])])  # (1, T, S)
        mask = _and(ctx, mask, causal)
    if kw.get("attention_mask") is not None:
        mask = _and(ctx, _as_bool(ctx, kw["attention_mask"]), mask)
    return_scores = bool(kw.get("return_attention_scores"))
    softmax_layer_path = float(layer.dropout) > 0.0 or return_scores
    scale = ctx.const(1.0 / math.sqrt(float(kd)))
    kt = ctx.op("Transpose", [k], {"perm": [0, 1, 3, 2]})
    if softmax_layer_path:
        logits = ctx.op("MatMul", [ctx.op("Mul", [q, scale]), kt])
    else:
        logits = ctx.op("Mul", [ctx.op("MatMul", [q, kt]), scale])  # (N, h, T, S)
    if mask is not None:
        mask4 = ctx.op("Unsqueeze", [mask, ctx.ints([1])])  # (N|1, 1, T|1, S|1): every head
        logits = ctx.op("Where", [mask4, logits, ctx.const(_LARGE_NEG)])
    probs = ctx.op("Softmax", [logits], {"axis": -1})
    if mask is not None and softmax_layer_path:
        probs = ctx.op("Where", [mask4, probs, ctx.const(0.0)])
    o = ctx.op("MatMul", [probs, v])  # (N, h, T, vd)
    o = ctx.op("Transpose", [o], {"perm": [0, 2, 1, 3]})
    out_dense = layer._output_dense
    kernel = to_numpy(out_dense.kernel, np.float32)  # (h, vd, *output_shape)
    o = ctx.op("Reshape", [o, ctx.ints([0, 0, kernel.shape[0] * kernel.shape[1]])])
    y = ctx.op("MatMul", [o, ctx.weight(layer, "output/kernel", kernel.reshape(kernel.shape[0] * kernel.shape[1], -1))])
    if out_dense.bias is not None:
        y = ctx.op("Add", [y, ctx.weight(layer, "output/bias", to_numpy(out_dense.bias, np.float32).reshape(-1))])
    if kernel.ndim > 3:
        y = ctx.op("Reshape", [y, ctx.ints([0, 0, *kernel.shape[2:]])])
    ctx.set(outputs[0], y)
    if return_scores and len(outputs) > 1:
        ctx.set(outputs[1], probs)


def _attention_inputs(node: Any) -> tuple[list, list | None, dict]:
    args, kw = list(node.arguments.args), dict(node.arguments.kwargs)
    ins = args[0] if args else kw["inputs"]
    mask = masking.call_masks(node).get("mask")
    return list(ins), (list(mask) if isinstance(mask, list | tuple) else None), kw


@HANDLERS.register("Attention", "AdditiveAttention")
def attention(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    node = masking.node_of(layer, outputs)
    ins, masks, kw = _attention_inputs(node)
    q_t, v_t = ins[0], ins[1]
    k_t = ins[2] if len(ins) > 2 else v_t
    q, v, k = ctx.get(q_t), ctx.get(v_t), ctx.get(k_t)  # (N, T, D), (N, S, D), (N, S, D)
    additive = type(layer).__name__ == "AdditiveAttention"
    if not additive and layer.score_mode == "dot":
        scores = ctx.op("MatMul", [q, ctx.op("Transpose", [k], {"perm": [0, 2, 1]})])  # (N, T, S)
        if layer.scale is not None:
            scores = ctx.op("Mul", [scores, ctx.weight(layer, "scale", to_numpy(layer.scale, np.float32))])
    else:
        # sum(w * tanh(q[:, :, None] + k[:, None]), -1): (N, T, 1, D) + (N, 1, S, D)
        s = ctx.op("Add", [ctx.op("Unsqueeze", [q, ctx.ints([2])]), ctx.op("Unsqueeze", [k, ctx.ints([1])])])
        if additive:
            t = ctx.op("Tanh", [s])
            if layer.use_scale:
                t = ctx.op("Mul", [ctx.weight(layer, "scale", to_numpy(layer.scale, np.float32)), t])
            scores = ctx.op("ReduceSum", [t, ctx.ints([-1])], {"keepdims": 0})
        else:
            if layer.scale is not None:
                s = ctx.op("Mul", [ctx.weight(layer, "scale", to_numpy(layer.scale, np.float32)), s])
            t = ctx.op("ReduceSum", [ctx.op("Tanh", [s]), ctx.ints([-1])], {"keepdims": 0})
            w = ctx.weight(layer, "concat_score_weight", to_numpy(layer.concat_score_weight, np.float32))
            scores = ctx.op("Mul", [w, t])
    q_mask = masks[0] if masks else None
    v_mask = masks[1] if masks and len(masks) > 1 else None
    score_mask = ctx.op("Unsqueeze", [_as_bool(ctx, v_mask), ctx.ints([-2])]) if v_mask is not None else None
    if kw.get("use_causal_mask"):
        score_mask = _and(ctx, score_mask, _causal(ctx, q, v))
    if score_mask is not None:
        shifted = ctx.op("Sub", [scores, ctx.const(-_LARGE_NEG)])
        scores = ctx.op("Where", [score_mask, scores, shifted])
    weights = ctx.op("Softmax", [scores], {"axis": -1})
    y = ctx.op("MatMul", [weights, v])
    if q_mask is not None:
        y = ctx.op("Where", [ctx.op("Unsqueeze", [_as_bool(ctx, q_mask), ctx.ints([-1])]), y, ctx.const(0.0)])
    ctx.set(outputs[0], y)
    if kw.get("return_attention_scores") and len(outputs) > 1:
        ctx.set(outputs[1], weights)


@masking.mask_rule("Attention", "AdditiveAttention")
def _attention_mask(ctx: KerasContext, layer: Any, node: Any) -> list[ir.Value | None]:
    # Keras: the query's mask
    _, masks, _ = _attention_inputs(node)
    q_mask = masks[0] if masks else None
    return [_as_bool(ctx, q_mask) if q_mask is not None else None] * len(node.output_tensors)
