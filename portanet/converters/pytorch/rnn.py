"""``nn.RNN`` (tanh and relu) as ONNX ``RNN`` nodes with a symbolic time axis.

torch's ONNX translation table has ``aten::lstm`` and ``aten::gru`` but no ``aten::rnn_tanh``
/ ``rnn_relu``: ``torch.export`` decomposes those into one cell per time step, which fixes the
number of steps (and fails outright when the time axis is marked dynamic). While a module is
exported, ``symbolic_rnn`` routes every ``nn.RNN`` of it through one opaque operator,
``portanet::rnn`` (same arguments as ``aten::rnn_tanh.input`` plus the nonlinearity; its
eager implementation is torch's own fused kernel), and supplies the translation of that
operator into one ONNX ``RNN`` node per layer — the way torch's exporter writes
``nn.LSTM``/``nn.GRU``. The modules are restored afterwards.

Inputs the translation does not cover go to ``nn.RNN``'s own ``forward`` (torch's path):
``PackedSequence`` inputs and unbatched (2-D) sequences.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

_OP_NAME = "portanet::rnn"
_op: Any = None  # the registered custom operator (defined once per process)


def _rnn_op() -> Any:
    """``portanet::rnn(input, hx, params, has_biases, num_layers, bidirectional, batch_first,
    nonlinearity) -> (output, h_n)``, registered on first use."""
    global _op
    if _op is not None:
        return _op
    import torch

    # the schema is spelled out: annotations are strings under ``from __future__ import annotations``
    @torch.library.custom_op(
        _OP_NAME, mutates_args=(),
        schema="(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, bool bidirectional, "
               "bool batch_first, str nonlinearity) -> (Tensor, Tensor)",
    )
    def rnn(input, hx, params, has_biases, num_layers, bidirectional, batch_first, nonlinearity):
        kernel = torch._VF.rnn_relu if nonlinearity == "relu" else torch._VF.rnn_tanh
        out, h = kernel(input, hx, params, has_biases, num_layers, 0.0, False, bidirectional, batch_first)
        return out.clone(), h.clone()  # a custom op must not return views of its inputs

    @rnn.register_fake
    def _(input, hx, params, has_biases, num_layers, bidirectional, batch_first, nonlinearity):
        # output (N, T, D*H) batch-first or (T, N, D*H); h_n like hx (L*D, N, H)
        dirs = 2 if bidirectional else 1
        lead = (input.shape[0], input.shape[1])
        return input.new_empty((*lead, dirs * hx.shape[2])), hx.new_empty(hx.shape)

    _op = rnn
    return _op


def _forward(module: Any, original: Any) -> Any:
    """A replacement ``forward`` for one ``nn.RNN`` instance."""
    import torch

    op = _rnn_op()

    def forward(input: Any, hx: Any = None) -> Any:
        if isinstance(input, torch.nn.utils.rnn.PackedSequence) or input.dim() != 3:
            return original(input, hx)
        dirs = 2 if module.bidirectional else 1
        batch = input.shape[0 if module.batch_first else 1]
        if hx is None:
            hx = input.new_zeros(module.num_layers * dirs, batch, module.hidden_size)
        out, h = op(input, hx, list(module._flat_weights), module.bias, module.num_layers,
                    module.bidirectional, module.batch_first, module.nonlinearity)
        return out, h

    return forward


def _translate(input: Any, hx: Any, params: Any, has_biases: bool, num_layers: int, bidirectional: bool,
               batch_first: bool, nonlinearity: str) -> tuple[Any, Any]:
    """``portanet::rnn`` -> one ONNX RNN per layer (traced by torch's exporter)."""
    from onnxscript import opset18 as op

    dirs = 2 if bidirectional else 1
    hidden = hx.shape[2]
    per_dir = 4 if has_biases else 2  # w_ih, w_hh[, b_ih, b_hh] per layer and direction
    act = "Relu" if nonlinearity == "relu" else "Tanh"
    x = op.Transpose(input, perm=[1, 0, 2]) if batch_first else input  # (T, N, I)
    states = []
    for layer in range(num_layers):
        ws, rs, bs = [], [], []
        for d in range(dirs):
            base = (layer * dirs + d) * per_dir
            ws.append(op.Unsqueeze(params[base], [0]))  # (1, H, I)
            rs.append(op.Unsqueeze(params[base + 1], [0]))  # (1, H, H)
            if has_biases:  # ONNX B = [Wb, Rb]: (1, 2H)
                bs.append(op.Unsqueeze(op.Concat(params[base + 2], params[base + 3], axis=0), [0]))
        w = op.Concat(*ws, axis=0) if dirs > 1 else ws[0]
        r = op.Concat(*rs, axis=0) if dirs > 1 else rs[0]
        b = (op.Concat(*bs, axis=0) if dirs > 1 else bs[0]) if has_biases else None
        h0 = op.Slice(hx, [layer * dirs], [(layer + 1) * dirs], [0])  # (D, N, H)
        y, y_h = op.RNN(x, w, r, b, None, h0, activations=[act] * dirs, hidden_size=hidden,
                        direction="bidirectional" if bidirectional else "forward")
        # Y (T, D, N, H) -> (T, N, D*H): the next layer's input
        x = op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), [0, 0, -1])
        states.append(y_h)
    out = op.Transpose(x, perm=[1, 0, 2]) if batch_first else x
    h_n = op.Concat(*states, axis=0) if len(states) > 1 else states[0]
    return out, h_n


@contextlib.contextmanager
def symbolic_rnn(module: Any) -> Iterator[dict[Any, Any]]:
    """While active, every ``nn.RNN`` in ``module`` runs through ``portanet::rnn``; yields the
    ``custom_translation_table`` entries torch's exporter needs (empty without ``nn.RNN``)."""
    import torch

    rnns = [m for m in module.modules() if isinstance(m, torch.nn.RNN)] if isinstance(module, torch.nn.Module) else []
    if not rnns:
        yield {}
        return
    op = _rnn_op()
    patched = []
    try:
        for m in rnns:
            if "forward" in m.__dict__:  # the user's own per-instance forward: leave it
                continue
            m.forward = _forward(m, m.forward)
            patched.append(m)
        yield {op._opoverload: _translate} if patched else {}
    finally:
        for m in patched:
            del m.forward
