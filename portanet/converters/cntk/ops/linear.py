"""Times and TransposeTimes: CNTK's tensor products.

``Times(W, x)`` with ``outputRank`` r: W's CNTK dims are [out (r dims), in (k dims)], x's are
[in (k dims), extra...]. In NumPy order W is (in..., out...) and x is (..., in...), so the
product is ``x.reshape(..., K) @ W.reshape(K, M)`` reshaped to (..., out...).
"""

from __future__ import annotations

import math

import numpy as np

from portanet.converters.cntk.context import HANDLERS, Ctx, T, attr
from portanet.converters.cntk.graph import Function
from portanet.errors import ConversionError

#: inferInputRankToMap value asking Times to reduce over the sequence axis
_REDUCE_SEQUENCE = -3


def _matmul(ctx: Ctx, f: Function, x: T, w: T, k_rank: int, w_matrix: np.ndarray | None) -> T:
    """x (..., in dims [k_rank]) times W ((in dims), (out dims)) -> (..., out dims)."""
    ws = w.shape
    in_dims, out_dims = ws[:k_rank], ws[k_rank:]
    if x.rank < k_rank or tuple(x.shape[x.rank - k_rank:]) != tuple(in_dims):
        raise ConversionError(
            f"expected the operand's trailing dims (NumPy order) to be {list(in_dims)} to match the weights "
            f"{list(ws)}, received {list(x.shape)}"
        )
    extra = x.shape[: x.rank - k_rank]
    K, M = math.prod(in_dims), math.prod(out_dims)
    if x.rank != len(extra) + 1 or k_rank != 1:
        x = ctx.reshape(f, x, extra + (K,))  # (N, extra..., in...) -> (N, extra..., K)
    if w_matrix is not None:
        wv = ctx.b.initializer(w.value.name or f"{f.uid}_W", w_matrix.reshape(K, M)) if w_matrix.shape != (K, M) \
            else w.value
    else:
        wv = w.value if w.shape == (K, M) else ctx.reshape(f, w, (K, M)).value
    final = len(out_dims) == 1
    y = x.like(ctx.op(f, "MatMul", [x.value, wv], final=final), extra + (M,))
    if not final:
        y = ctx.reshape(f, y, extra + tuple(out_dims), final=True)
    return y


@HANDLERS.register("Times")
def times(ctx: Ctx, f: Function, ins: list[T]) -> T:
    if len(ins) != 2:
        raise ConversionError(f"expected 2 inputs (W, x), received {len(ins)}")
    w, x = ins
    if w.batched:
        raise ConversionError("Times with a batched (data-dependent) left operand is not supported")
    if int(attr(f, "inferInputRankToMap", -1)) == _REDUCE_SEQUENCE:
        raise ConversionError("Times reducing over the sequence axis is not supported")
    r = int(attr(f, "outputRank", 1))
    k_rank = w.rank - r
    if k_rank < 0:
        raise ConversionError(f"outputRank {r} exceeds the weights' rank {w.rank}")
    return _matmul(ctx, f, x, w, k_rank, w.array)


@HANDLERS.register("TransposeTimes")
def transpose_times(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """TransposeTimes(W, x) = W^T x; W is a matrix (or vector) in CNTK, so in NumPy order the
    product is x @ W_np^T."""
    if len(ins) != 2:
        raise ConversionError(f"expected 2 inputs (W, x), received {len(ins)}")
    w, x = ins
    if w.batched or w.rank not in (1, 2):
        raise ConversionError(f"expected an unbatched rank-1/2 left operand, received shape {list(w.full_shape)}")
    if int(attr(f, "outputRank", 1)) != 1:
        raise ConversionError("TransposeTimes supports outputRank 1 only")
    if w.rank == 1:
        # CNTK [a] is an a x 1 matrix: its transpose maps (a,) -> (1,)
        mat_shape = (w.shape[0], 1)
        if w.array is not None:
            return _matmul(ctx, f, x, T(w.value, mat_shape, False, w.array.reshape(mat_shape)), 1,
                           w.array.reshape(mat_shape))
        return _matmul(ctx, f, x, ctx.reshape(f, w, mat_shape), 1, None)
    if w.array is not None:
        wt = np.ascontiguousarray(w.array.T)
        wv = ctx.b.initializer(f"{w.value.name}_T", wt)
        return _matmul(ctx, f, x, T(wv, wt.shape, False, wt), 1, wt)
    wt = T(ctx.op(f, "Transpose", [w.value], {"perm": [1, 0]}), (w.shape[1], w.shape[0]), False)
    return _matmul(ctx, f, x, wt, 1, None)
