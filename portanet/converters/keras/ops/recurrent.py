"""Recurrent layers: LSTM, GRU, SimpleRNN (and ``RNN`` over their cells), Bidirectional.

Each layer becomes one ONNX ``LSTM``/``GRU``/``RNN`` node (time-major, ``layout=0``):

* LSTM: Keras gates (i, f, c, o) are reordered to ONNX's (i, o, f, c); the bias goes into
  the input half of ``B``. ``activation`` is ONNX's g and h, ``recurrent_activation`` its f.
* GRU: Keras and ONNX share the gate order (z, r, h) and the update rule
  ``h = z * h_prev + (1 - z) * hh``; ``reset_after=True`` is ``linear_before_reset=1`` with
  the recurrent bias in ``Rb``; ``reset_after=False`` is ``linear_before_reset=0``.
* SimpleRNN: ``h = act(x W + h U + b)``, ONNX ``RNN``.

Inside the IR a sequence is held time-major: the Keras tensor ``(N, T, F)`` with
``perm = (1, 0, 2)``; stacked recurrent layers therefore need no Transpose in between.

``go_backwards`` reverses the input (Keras iterates over the reversed sequence and returns
outputs in that order). A Bidirectional layer over two matching layers is one
``direction="bidirectional"`` node (Keras flips the backward sequence output back, which
is exactly the reverse direction's output).

Masks (``Embedding(mask_zero=True)``, ``Masking``): Keras skips a masked step, carrying the
states through it, and outputs zeros there (``zero_output_for_mask``) or repeats the
previous output (zeros before the first valid step). That is the recurrence over the
valid steps alone, so the valid steps are gathered to the front of the sequence (stable),
run with ``sequence_lens`` = their count, and the outputs gathered back to their time
steps: exact for any mask, not only right-padded ones. A sample without valid steps keeps
its initial state and outputs zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import masking
from portanet.converters.keras.context import KerasContext, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.converters.keras.ops.activations import activation_name
from portanet.errors import ConversionError

#: a sequence held time-major: IR value = transpose(keras (N, T, F), TIME_MAJOR) = (T, N, F)
TIME_MAJOR = (1, 0, 2)
_INT64_MIN = np.iinfo(np.int64).min

#: Keras activation -> (ONNX recurrent activation, alpha, beta) (None: the function takes none)
_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "tanh": ("Tanh", None, None), "sigmoid": ("Sigmoid", None, None), "relu": ("Relu", None, None),
    "linear": ("Affine", 1.0, 0.0), "softsign": ("Softsign", None, None), "softplus": ("Softplus", None, None),
    "elu": ("Elu", 1.0, None),
    # Keras 3: relu6(x + 3) / 6 = clip(x / 6 + 0.5, 0, 1)
    "hard_sigmoid": ("HardSigmoid", 1.0 / 6.0, 0.5),
}

_LAYERS = ("LSTM", "GRU", "SimpleRNN", "RNN")


@dataclass
class Cell:
    """One direction of an ONNX recurrent node, from a Keras cell."""

    op: str  # LSTM | GRU | RNN
    units: int
    W: np.ndarray  # (gates*H, F)
    R: np.ndarray  # (gates*H, H)
    B: np.ndarray  # (2*gates*H,): input bias then recurrent bias
    activations: list[tuple[str, float | None, float | None]]
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_states(self) -> int:
        return 2 if self.op == "LSTM" else 1

    def same_node(self, other: Cell) -> bool:
        return (self.op, self.units, self.activations, self.attrs) == (
            other.op, other.units, other.activations, other.attrs)


def _onnx_activation(fn: Any, what: str) -> tuple[str, float | None, float | None]:
    name = activation_name(fn)
    if name not in _ACTIVATIONS:
        raise ConversionError(f"{what} '{name}' is not supported in a recurrent layer; "
                              f"supported: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]


def activation_attrs(acts: list[tuple[str, float | None, float | None]]) -> dict[str, Any]:
    """``activations`` and, where a function takes them, ``activation_alpha``/``_beta``
    (ONNX consumes one value per function that takes one, in order)."""
    attrs: dict[str, Any] = {"activations": [a[0] for a in acts]}
    alphas = [a[1] for a in acts if a[1] is not None]
    betas = [a[2] for a in acts if a[2] is not None]
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs


def _split(a: np.ndarray, n: int, axis: int = -1) -> list[np.ndarray]:
    return np.split(a, n, axis=axis)


def cell_of(layer: Any) -> Cell:
    """The ONNX parameters of a Keras recurrent layer's cell."""
    cell = layer.cell
    kind = type(cell).__name__
    kernel = to_numpy(cell.kernel, np.float32)  # (F, gates*H)
    rec = to_numpy(cell.recurrent_kernel, np.float32)  # (H, gates*H)
    h = int(cell.units)
    act = _onnx_activation(cell.activation, "activation")
    bias = to_numpy(cell.bias, np.float32) if cell.use_bias else None
    if kind == "LSTMCell":
        order = [0, 3, 1, 2]  # Keras (i, f, c, o) -> ONNX (i, o, f, c)
        ra = _onnx_activation(cell.recurrent_activation, "recurrent_activation")

        def gates(a: np.ndarray) -> np.ndarray:
            parts = _split(a, 4)
            return np.concatenate([parts[i] for i in order], axis=-1)

        wb = gates(bias) if bias is not None else np.zeros(4 * h, np.float32)
        return Cell("LSTM", h, gates(kernel).T, gates(rec).T, np.concatenate([wb, np.zeros(4 * h, np.float32)]),
                    [ra, act, act])
    if kind == "GRUCell":
        ra = _onnx_activation(cell.recurrent_activation, "recurrent_activation")
        reset_after = bool(cell.reset_after)
        if bias is None:
            b = np.zeros(6 * h, np.float32)
        elif reset_after:
            b = bias.reshape(2, 3 * h).reshape(-1)  # (input bias, recurrent bias)
        else:
            b = np.concatenate([bias.reshape(-1), np.zeros(3 * h, np.float32)])
        return Cell("GRU", h, kernel.T, rec.T, b, [ra, act], {"linear_before_reset": int(reset_after)})
    if kind == "SimpleRNNCell":
        b = np.concatenate([bias if bias is not None else np.zeros(h, np.float32), np.zeros(h, np.float32)])
        return Cell("RNN", h, kernel.T, rec.T, b, [act])
    raise ConversionError(f"expected an LSTM, GRU or SimpleRNN cell, received {kind}")


@masking.refusal(*_LAYERS, "Bidirectional")
def _stateful(layer: Any) -> str | None:
    return "stateful=True" if getattr(layer, "stateful", False) else None


masking.consumes_masks(*_LAYERS, "Bidirectional")


# -- IR building blocks ------------------------------------------------------------------

def _flip_time(ctx: KerasContext, x: ir.Value, axis: int) -> ir.Value:
    """Reverse ``x`` along ``axis`` (symbolic length): Slice with step -1."""
    return ctx.op("Slice", [x, ctx.ints([-1]), ctx.ints([_INT64_MIN]), ctx.ints([axis]), ctx.ints([-1])])


@dataclass
class Masked:
    """A mask prepared for one recurrent node (time-major)."""

    valid: ir.Value  # (T, N) bool: mask transposed
    csum: ir.Value  # (T, N) int64: valid steps up to and including t
    count: ir.Value  # (N,) int64: valid steps per sample
    lens: ir.Value  # (N,) int32: sequence_lens


def _prepare_mask(ctx: KerasContext, mask: ir.Value) -> Masked:
    valid = ctx.op("Transpose", [mask], {"perm": [1, 0]})  # (N, T) -> (T, N)
    ones = ctx.op("Cast", [valid], {"to": ir.DataType.INT64})
    csum = ctx.op("CumSum", [ones, ctx.const(0, np.int64)])
    count = ctx.op("ReduceSum", [ones, ctx.ints([0])], {"keepdims": 0})
    lens = ctx.op("Cast", [count], {"to": ir.DataType.INT32})
    return Masked(valid, csum, count, lens)


def _compact(ctx: KerasContext, x: ir.Value, m: Masked) -> ir.Value:
    """(T, N, F): each sample's valid steps first, in order (masked steps after them)."""
    ones = ctx.op("Cast", [m.valid], {"to": ir.DataType.INT64})
    shape = ctx.op("Shape", [x])
    t = ctx.op("Shape", [x], {"start": 0, "end": 1})  # (1,) = T
    steps = ctx.op("Range", [ctx.const(0, np.int64), ctx.op("Squeeze", [t, ctx.ints([0])]), ctx.const(1, np.int64)])
    # stable sort key: valid steps keep t, masked steps move past T (distinct keys, so exact)
    key = ctx.op("Add", [ctx.op("Unsqueeze", [steps, ctx.ints([1])]),
                         ctx.op("Mul", [t, ctx.op("Sub", [ctx.const(1, np.int64), ones])])])
    _, src = ctx.op("TopK", [key, t], {"axis": 0, "largest": 0, "sorted": 1}, outputs=2)
    index = ctx.op("Expand", [ctx.op("Unsqueeze", [src, ctx.ints([2])]), shape])
    return ctx.op("GatherElements", [x, index], {"axis": 0})


def _expand_back(ctx: KerasContext, y: ir.Value, m: Masked, zero_masked: bool) -> ir.Value:
    """Outputs of the compacted run (T, D, N, H) back at their time steps: a valid step t
    gets compacted output csum[t]-1; a masked step gets zeros or (carried) the previous
    valid step's output, zeros before the first one."""
    last = ctx.op("Max", [ctx.op("Sub", [m.csum, ctx.const(1, np.int64)]), ctx.const(0, np.int64)])
    index = ctx.op("Expand", [ctx.op("Unsqueeze", [last, ctx.ints([1, 3])]), ctx.op("Shape", [y])])
    g = ctx.op("GatherElements", [y, index], {"axis": 0})
    keep = m.valid if zero_masked else ctx.op("Greater", [m.csum, ctx.const(0, np.int64)])
    return ctx.op("Where", [ctx.op("Unsqueeze", [keep, ctx.ints([1, 3])]), g, ctx.const(0.0)])


@dataclass
class RecurrentOut:
    y: ir.Value | None  # (T, D, N, H) per-step outputs (at their time steps), or None
    last: list[ir.Value]  # per direction: (N, H) last output
    states: list[list[ir.Value]]  # per direction: [(N, H)] * n_states


def run_recurrent(ctx: KerasContext, layer: Any, cells: list[Cell], x: ir.Value, *, key: str = "",
                  initial: list[list[ir.Value]] | None, mask: ir.Value | None,
                  zero_masked: list[bool], sequences: bool) -> RecurrentOut:
    """One ONNX recurrent node over time-major ``x`` (T, N, F): one cell = forward, two =
    bidirectional. ``initial``: per direction, the Keras initial states (N, H) or None."""
    c0 = cells[0]
    d = len(cells)
    w = ctx.weight(layer, f"{key}W", np.stack([c.W for c in cells]))
    r = ctx.weight(layer, f"{key}R", np.stack([c.R for c in cells]))
    b = ctx.weight(layer, f"{key}B", np.stack([c.B for c in cells]))
    m = _prepare_mask(ctx, mask) if mask is not None else None
    if m is not None:
        x = _compact(ctx, x, m)
    init_vals: list[ir.Value | None] = [None, None]
    if initial is not None:
        for k in range(c0.n_states):
            # (N, H) per direction -> (D, N, H)
            parts = [ctx.op("Unsqueeze", [initial[j][k], ctx.ints([0])]) for j in range(d)]
            init_vals[k] = parts[0] if d == 1 else ctx.op("Concat", parts, {"axis": 0})
    inputs: list[ir.Value | None] = [x, w, r, b, m.lens if m is not None else None, init_vals[0]]
    if c0.op == "LSTM":
        inputs.append(init_vals[1])
    while inputs and inputs[-1] is None:
        inputs.pop()
    attrs: dict[str, Any] = {"hidden_size": c0.units, "direction": "forward" if d == 1 else "bidirectional",
                             **activation_attrs([a for c in cells for a in c.activations]), **c0.attrs}
    outs = ctx.op(c0.op, inputs, attrs, outputs=1 + c0.n_states)
    y, finals = outs[0], list(outs[1:])  # Y (T, D, N, H); Y_h, Y_c (D, N, H)
    if m is not None and initial is not None:
        # no valid step: Keras keeps the initial state (ONNX leaves it unspecified)
        some = ctx.op("Unsqueeze", [ctx.op("Greater", [m.count, ctx.const(0, np.int64)]), ctx.ints([0, 2])])
        finals = [ctx.op("Where", [some, f, iv]) for f, iv in zip(finals, init_vals)]
    states = [[_direction(ctx, f, j, d) for f in finals] for j in range(d)]
    last = []
    for j in range(d):
        h = states[j][0]
        if m is not None:
            if zero_masked[j]:
                # the output of the last time step, which is zero when that step is masked
                step = ctx.op("Gather", [m.valid, ctx.const(-1, np.int64)], {"axis": 0})  # (N,)
            else:
                step = ctx.op("Greater", [m.count, ctx.const(0, np.int64)])  # zeros if nothing was valid
            h = ctx.op("Where", [ctx.op("Unsqueeze", [step, ctx.ints([1])]), h, ctx.const(0.0)])
        last.append(h)
    if sequences and m is not None:
        if d == 2 and zero_masked[0] != zero_masked[1]:
            raise ConversionError("expected the same zero_output_for_mask in both directions")
        y = _expand_back(ctx, y, m, zero_masked[0])
    return RecurrentOut(y if sequences else None, last, states)


def _direction(ctx: KerasContext, v: ir.Value, j: int, d: int) -> ir.Value:
    """(D, N, H) -> direction j's (N, H)."""
    if d == 1:
        return ctx.op("Squeeze", [v, ctx.ints([0])])
    return ctx.op("Gather", [v, ctx.const(j, np.int64)], {"axis": 0})


def _call_parts(layer: Any, outputs: list) -> tuple[Any, list | None, Any]:
    """(sequence tensor, initial-state tensors or None, mask tensor or None) of the node's call."""
    node = masking.node_of(layer, outputs)
    args, kwargs = list(node.arguments.args), dict(node.arguments.kwargs)
    seq = args[0] if args else kwargs.get("sequences")
    init = args[1] if len(args) > 1 else kwargs.get("initial_state")
    if init is not None and not isinstance(init, list | tuple):
        init = [init]
    mask = masking.call_masks(node).get("mask")
    if isinstance(mask, list | tuple):
        mask = mask[0] if mask else None
    return seq, (list(init) if init is not None else None), mask


def _time_major(ctx: KerasContext, seq: Any, backwards: bool, mask: ir.Value | None
                ) -> tuple[ir.Value, ir.Value | None]:
    x = ctx.get(seq, TIME_MAJOR)
    if backwards:
        x = _flip_time(ctx, x, 0)
        mask = _flip_time(ctx, mask, 1) if mask is not None else None
    return x, mask


def _check(layer: Any, seq: Any) -> None:
    if len(seq.shape) != 3:
        raise ConversionError(f"expected a (batch, time, features) input, received rank {len(seq.shape)}")
    if getattr(layer, "stateful", False):
        raise ConversionError("stateful=True is not supported (the state would outlive one call)")


def _set_sequence(ctx: KerasContext, tensor: Any, y: ir.Value, j: int, d: int) -> ir.Value:
    """Direction j of Y (T, D, N, H) as the Keras (N, T, H) tensor, held time-major."""
    v = ctx.op("Squeeze", [y, ctx.ints([1])]) if d == 1 else ctx.op(
        "Squeeze", [ctx.op("Slice", [y, ctx.ints([j]), ctx.ints([j + 1]), ctx.ints([1])]), ctx.ints([1])])
    if tensor is not None:
        ctx.set(tensor, v, TIME_MAJOR)
    return v


@HANDLERS.register(*_LAYERS)
def recurrent(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    seq, init, mask_t = _call_parts(layer, outputs)
    _check(layer, seq)
    cell = cell_of(layer)
    mask = masking.mask_value(ctx, mask_t)
    x, mask = _time_major(ctx, seq, bool(layer.go_backwards), mask)
    initial = [[ctx.get(t) for t in init]] if init else None
    if initial is not None and len(initial[0]) != cell.n_states:
        raise ConversionError(f"expected {cell.n_states} initial state(s), received {len(initial[0])}")
    res = run_recurrent(ctx, layer, [cell], x, initial=initial, mask=mask,
                        zero_masked=[bool(layer.zero_output_for_mask)], sequences=bool(layer.return_sequences))
    if layer.return_sequences:
        _set_sequence(ctx, outputs[0], res.y, 0, 1)
    else:
        ctx.set(outputs[0], res.last[0])
    if layer.return_state:
        for t, v in zip(outputs[1:], res.states[0]):
            ctx.set(t, v)


# -- Bidirectional -------------------------------------------------------------------------

def _fusable(fwd: Any, bwd: Any) -> bool:
    """One bidirectional node computes both layers: same type and options, the backward one
    iterating backwards (its sequence output is flipped back by Keras)."""
    if type(fwd) is not type(bwd) or fwd.go_backwards or not bwd.go_backwards:
        return False
    keys = ("return_sequences", "return_state", "zero_output_for_mask")
    return all(getattr(fwd, k) == getattr(bwd, k) for k in keys) and cell_of(fwd).same_node(cell_of(bwd))


def _merge(ctx: KerasContext, mode: str | None, a: ir.Value, b: ir.Value, axis: int) -> ir.Value:
    if mode == "concat":
        return ctx.op("Concat", [a, b], {"axis": axis})
    if mode == "sum":
        return ctx.op("Add", [a, b])
    if mode == "mul":
        return ctx.op("Mul", [a, b])
    if mode == "ave":
        return ctx.op("Div", [ctx.op("Add", [a, b]), ctx.const(2.0)])
    raise ConversionError(f"expected merge_mode concat, sum, mul, ave or None, received {mode!r}")


@HANDLERS.register("Bidirectional")
def bidirectional(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    seq, init, mask_t = _call_parts(layer, outputs)
    _check(layer, seq)
    fwd, bwd = layer.forward_layer, layer.backward_layer
    if type(fwd).__name__ not in _LAYERS or type(bwd).__name__ not in _LAYERS:
        raise ConversionError(f"expected recurrent layers inside, received {type(fwd).__name__} and "
                              f"{type(bwd).__name__}")
    cf, cb = cell_of(fwd), cell_of(bwd)
    mask = masking.mask_value(ctx, mask_t)
    ns = [cf.n_states, cb.n_states]
    initial = None
    if init:
        if len(init) != sum(ns):
            raise ConversionError(f"expected {sum(ns)} initial states, received {len(init)}")
        vals = [ctx.get(t) for t in init]
        initial = [vals[:ns[0]], vals[ns[0]:]]
    sequences = bool(layer.return_sequences)
    ys: list[ir.Value] = []
    lasts: list[ir.Value] = []
    states: list[ir.Value] = []
    if _fusable(fwd, bwd):
        x = ctx.get(seq, TIME_MAJOR)
        res = run_recurrent(ctx, layer, [cf, cb], x, initial=initial, mask=mask,
                            zero_masked=[bool(fwd.zero_output_for_mask)] * 2, sequences=sequences)
        if sequences:
            ys = [_set_sequence(ctx, None, res.y, j, 2) for j in range(2)]
        lasts = res.last
        states = res.states[0] + res.states[1]
    else:
        for j, (sub, cell) in enumerate(((fwd, cf), (bwd, cb))):
            x, m = _time_major(ctx, seq, bool(sub.go_backwards), mask)
            with ctx.b.layer(f"{layer.name}/{sub.name}", type(sub).__name__):
                res = run_recurrent(ctx, layer, [cell], x, key=f"{sub.name}/", initial=[initial[j]] if initial else None, mask=m,
                                    zero_masked=[bool(sub.zero_output_for_mask)], sequences=sequences)
                if sequences:
                    y = _set_sequence(ctx, None, res.y, 0, 1)
                    # the backward layer's outputs come in its iteration order: Keras flips them back
                    ys.append(_flip_time(ctx, y, 0) if sub.go_backwards else y)
            lasts.append(res.last[0])
            states.extend(res.states[0])
    pair = ys if sequences else lasts
    n_out = 2 if layer.merge_mode is None else 1
    if layer.merge_mode is None:
        merged = pair
    else:
        merged = [_merge(ctx, layer.merge_mode, pair[0], pair[1], 2 if sequences else 1)]
    for t, v in zip(outputs[:n_out], merged):
        ctx.set(t, v, TIME_MAJOR if sequences else None)
    if layer.return_state:
        for t, v in zip(outputs[n_out:], states):
            ctx.set(t, v)
