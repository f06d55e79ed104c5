"""Recurrent layers: ONNX LSTM, GRU and RNN (one layer, one or two directions).

Two execution paths with identical results:

* torch's fused kernels (``torch._VF.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``, the ones
  ``nn.LSTM`` runs) whenever the ONNX node uses only what they compute: the default
  activations, no ``clip``, no peepholes, no ``input_forget`` and, for GRU,
  ``linear_before_reset=1``. ``sequence_lens`` shorter than the time axis go through packed
  sequences (what ``nn.LSTM`` does for ``pack_padded_sequence`` input);
* an exact step loop for everything else: every activation with its alpha/beta, clip,
  peepholes, input_forget, GRU ``linear_before_reset=0``, zero-length sequences.

W, R, B and P stay whatever the lowering made of them (trainable parameters for
initializers). The fused path reads them in torch's layout, computed by ``torch_layout`` as
a separate graph call: an expression of parameters only, so inference computes it once and
reuses it until a parameter changes (``param_cache``), while training recomputes it every
step and gradients reach the ONNX tensors.

Shapes (layout 0; layout 1 swaps the first two axes of X, Y, initial_h/c and Y_h/c):
X (T, N, I), W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H), sequence_lens (N,),
initial_h/initial_c (D, N, H), P (D, 3*H) -> Y (T, D, N, H), Y_h/Y_c (D, N, H)
with D = 2 for ``bidirectional`` else 1 and G gates (LSTM 4 ``iofc``, GRU 3 ``zrh``, RNN 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from portanet.runtime.torch_backend.ops._util import attr
from portanet.runtime.torch_backend.registry import register

# -- activations ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Act:
    fn: Callable[[torch.Tensor, float, float], torch.Tensor]
    #: default alpha / beta, or None when the function takes none
    alpha: float | None = None
    beta: float | None = None


# the activation functions the ONNX recurrent ops name (lower-cased)
_ACTS: dict[str, _Act] = {
    "relu": _Act(lambda x, a, b: torch.relu(x)),
    "tanh": _Act(lambda x, a, b: torch.tanh(x)),
    "sigmoid": _Act(lambda x, a, b: torch.sigmoid(x)),
    "affine": _Act(lambda x, a, b: x * a + b, 1.0, 0.0),
    "leakyrelu": _Act(lambda x, a, b: F.leaky_relu(x, a), 0.01),
    "thresholdedrelu": _Act(lambda x, a, b: torch.where(x > a, x, torch.zeros_like(x)), 1.0),
    "scaledtanh": _Act(lambda x, a, b: a * torch.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": _Act(lambda x, a, b: torch.clamp(x * a + b, 0.0, 1.0), 0.2, 0.5),
    "elu": _Act(lambda x, a, b: F.elu(x, a), 1.0),
    "softsign": _Act(lambda x, a, b: F.softsign(x)),
    "softplus": _Act(lambda x, a, b: F.softplus(x)),
}

#: kind -> (number of gates, activations per direction, default activations)
_KINDS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "LSTM": (4, 3, ("sigmoid", "tanh", "tanh")),
    "GRU": (3, 2, ("sigmoid", "tanh")),
    "RNN": (1, 1, ("tanh",)),
}

Activation = tuple[str, float, float]  # (name, alpha, beta)


def _activations(kind: str, num_dirs: int, names: list[str] | None, alphas: list[float] | None,
                 betas: list[float] | None) -> tuple[Activation, ...]:
    """The per-direction activation list with alpha/beta resolved.

    ONNX consumes ``activation_alpha`` / ``activation_beta`` in the order of the activation
    functions, one value per function that takes one; missing values take the function's
    default. A single direction's list given for a bidirectional op serves both.
    """
    _, per_dir, default = _KINDS[kind]
    names = [n.lower() for n in names] if names else list(default) * num_dirs
    if len(names) == per_dir and num_dirs == 2:
        names = names * 2
    if len(names) != per_dir * num_dirs:
        raise ValueError(f"expected {per_dir * num_dirs} activations for {kind} with {num_dirs} direction(s), "
                         f"received {len(names)}")
    a_iter, b_iter = iter(alphas or []), iter(betas or [])
    out = []
    for n in names:
        act = _ACTS.get(n)
        if act is None:
            raise ValueError(f"unknown activation '{n}'; expected one of {', '.join(sorted(_ACTS))}")
        a = float(next(a_iter, act.alpha)) if act.alpha is not None else 0.0
        b = float(next(b_iter, act.beta)) if act.beta is not None else 0.0
        out.append((n, a, b))
    return tuple(out)


def _apply(act: Activation, x: torch.Tensor, clip: float | None) -> torch.Tensor:
    if clip is not None:
        x = torch.clamp(x, -clip, clip)
    name, a, b = act
    return _ACTS[name].fn(x, a, b)


# -- gate layouts -----------------------------------------------------------------------
# ONNX stacks LSTM gates as i, o, f, c and GRU gates as z, r, h; torch as i, f, g(c), o and
# r, z, n(h). Index = position of torch's k-th gate in the ONNX stack.
_TORCH_ORDER = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2], "RNN": [0]}


def _reorder(t: torch.Tensor, kind: str, hidden: int) -> torch.Tensor:
    """(G*H, ...) in ONNX gate order -> the same in torch's gate order.

    One gather of rows (a single backward op, where slices + cat cost one zero-filled
    gradient per gate)."""
    order = _TORCH_ORDER[kind]
    if len(order) == 1:
        return t
    return t.index_select(0, _gate_rows(kind, hidden, t.device))


_ROWS: dict[tuple[str, int, torch.device], torch.Tensor] = {}


def _gate_rows(kind: str, hidden: int, device: torch.device) -> torch.Tensor:
    """Row indices taking ONNX's gate stack to torch's (cached per kind, size and device)."""
    key = (kind, hidden, device)
    rows = _ROWS.get(key)
    if rows is None:
        rows = torch.cat([torch.arange(g * hidden, (g + 1) * hidden) for g in _TORCH_ORDER[kind]]).to(device)
        _ROWS[key] = rows
    return rows


def _reverse_index(lens: torch.Tensor | None, steps: int, batch: int, device: torch.device) -> torch.Tensor | None:
    """(T, N) time indices reversing each sequence within its own length (an involution);
    None when every sequence is ``steps`` long (a plain flip)."""
    if lens is None:
        return None
    t = torch.arange(steps, device=device).unsqueeze(1).expand(steps, batch)
    lens = lens.to(device=device, dtype=torch.long).unsqueeze(0)
    return torch.where(t < lens, lens - 1 - t, t)


def _reverse(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    # x (T, N, ...) reversed along time, per sequence when ``index`` is given
    if index is None:
        return x.flip(0)
    idx = index.reshape(*index.shape, *[1] * (x.dim() - 2)).expand_as(x)
    return x.gather(0, idx)


class Recurrent(nn.Module):
    """One ONNX LSTM / GRU / RNN node (attributes fixed at lowering, tensors as inputs)."""

    def __init__(self, kind: str, direction: str, acts: tuple[Activation, ...], clip: float | None,
                 input_forget: bool, linear_before_reset: bool, layout: int, n_outputs: int,
                 peepholes: bool = False) -> None:
        super().__init__()
        self.kind = kind
        self.direction = direction
        self.num_dirs = 2 if direction == "bidirectional" else 1
        self.acts = acts
        self.clip = clip
        self.input_forget = input_forget
        self.linear_before_reset = linear_before_reset
        self.layout = layout
        self.n_outputs = n_outputs
        per_dir = _KINDS[kind][1]
        self._per_dir = per_dir
        default = all(a[0] == d for a, d in zip(acts, _KINDS[kind][2] * self.num_dirs))
        if kind == "RNN":
            names = {a[0] for a in acts}
            default = len(names) == 1 and names <= {"tanh", "relu"}
        self.fusable = (
            default and clip is None and not input_forget and not peepholes
            and (kind != "GRU" or linear_before_reset)
        )

    def extra_repr(self) -> str:
        return (f"{self.kind}, direction={self.direction}, layout={self.layout}, clip={self.clip}, "
                f"fused={self.fusable}")

    def forward(self, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None, prepared=None):
        """``prepared``: ``torch_layout(kind, w, r, b)`` for a fusable node (the fused path
        recomputes it when omitted)."""
        lstm = self.kind == "LSTM"
        if self.layout == 1:  # (N, T, I) -> (T, N, I); states (N, D, H) -> (D, N, H)
            x = x.transpose(0, 1)
            h0 = h0.transpose(0, 1) if h0 is not None else None
            c0 = c0.transpose(0, 1) if c0 is not None else None
        steps, batch = x.shape[0], x.shape[1]
        hidden = r.shape[-1]
        gates = _KINDS[self.kind][0]
        if b is None:
            b = x.new_zeros(self.num_dirs, 2 * gates * hidden)
        if h0 is None:
            h0 = x.new_zeros(self.num_dirs, batch, hidden)
        if lstm and c0 is None:
            c0 = x.new_zeros(self.num_dirs, batch, hidden)
        lens = None
        if seq_lens is not None:
            lens = seq_lens.to(torch.long)
            if bool((lens == steps).all()):
                lens = None  # every sequence spans the whole time axis
        use_fused = self.fusable and (lens is None or bool((lens > 0).all()))
        if use_fused:
            params = prepared if prepared is not None else torch_layout(self.kind, w, r, b)
            y, hn, cn = self._fused(x, params, hidden, lens, h0, c0)
        else:
            y, hn, cn = self._loop(x, w, r, b, lens, h0, c0, p)
        # y (T, D, N, H); hn, cn (D, N, H)
        if self.layout == 1:
            y = y.permute(2, 0, 1, 3)
            hn = hn.transpose(0, 1)
            cn = cn.transpose(0, 1) if cn is not None else None
        outs = (y, hn, cn) if lstm else (y, hn)
        return outs[: self.n_outputs]

    # -- torch's fused kernels ------------------------------------------------------------
    def _fused(self, x, params, hidden, lens, h0, c0):
        reverse_only = self.direction == "reverse"
        rev = None
        if reverse_only:  # torch has no reverse-only layer: reverse the time axis around it
            rev = _reverse_index(lens, x.shape[0], x.shape[1], x.device)
            x = _reverse(x, rev)
        bidir = self.num_dirs == 2
        lstm = self.kind == "LSTM"
        hx = (h0.contiguous(), c0.contiguous()) if lstm else h0.contiguous()
        if lens is None:
            out = self._kernel(x.contiguous(), hx, params, bidir)
            y, state = out[0], out[1:]
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lens.cpu(), enforce_sorted=False)
            order, unorder = packed.sorted_indices, packed.unsorted_indices
            hx = tuple(h.index_select(1, order) for h in hx) if lstm else hx.index_select(1, order)
            out = self._kernel_packed(packed.data, packed.batch_sizes, hx, params, bidir)
            y, _ = nn.utils.rnn.pad_packed_sequence(
                nn.utils.rnn.PackedSequence(out[0], packed.batch_sizes, order, unorder), total_length=x.shape[0]
            )
            state = tuple(s.index_select(1, unorder) for s in out[1:])
        if reverse_only:
            y = _reverse(y, rev)
        # (T, N, D*H) -> (T, D, N, H)
        y = y.reshape(y.shape[0], y.shape[1], self.num_dirs, hidden).permute(0, 2, 1, 3)
        hn = state[0]
        cn = state[1] if lstm else None
        return y, hn, cn

    def _kernel(self, x, hx, params, bidir):
        if self.kind == "LSTM":
            y, h, c = torch._VF.lstm(x, hx, params, True, 1, 0.0, False, bidir, False)
            return y, h, c
        fn = {"GRU": torch._VF.gru, "RNN": _rnn_kernel(self.acts)}[self.kind]
        y, h = fn(x, hx, params, True, 1, 0.0, False, bidir, False)
        return y, h

    def _kernel_packed(self, data, batch_sizes, hx, params, bidir):
        if self.kind == "LSTM":
            y, h, c = torch._VF.lstm(data, batch_sizes, hx, params, True, 1, 0.0, False, bidir)
            return y, h, c
        fn = {"GRU": torch._VF.gru, "RNN": _rnn_kernel(self.acts)}[self.kind]
        y, h = fn(data, batch_sizes, hx, params, True, 1, 0.0, False, bidir)
        return y, h

    # -- the exact step loop --------------------------------------------------------------
    def _loop(self, x, w, r, b, lens, h0, c0, p):
        steps, batch = x.shape[0], x.shape[1]
        gh = w.shape[1]
        mask = None
        if lens is not None:
            # (T, N, 1): whether step t lies inside sequence n
            mask = (torch.arange(steps, device=x.device).unsqueeze(1) < lens.to(x.device).unsqueeze(0)).unsqueeze(-1)
        ys, hs, cs = [], [], []
        for d in range(self.num_dirs):
            backward = self.direction == "reverse" or d == 1
            rev = _reverse_index(lens, steps, batch, x.device) if backward else None
            xd = _reverse(x, rev) if backward else x
            # input projections of every step at once: (T, N, I) @ (I, G*H) + Wb
            xw = torch.matmul(xd, w[d].t()) + b[d, :gh]
            acts = self.acts[d * self._per_dir:(d + 1) * self._per_dir]
            pd = p[d] if p is not None else None
            c_prev = c0[d] if c0 is not None else None
            y, hn, cn = self._direction(xw, r[d], b[d, gh:], h0[d], c_prev, pd, acts, mask)
            ys.append(_reverse(y, rev) if backward else y)
            hs.append(hn)
            cs.append(cn)
        y = torch.stack(ys, 1)
        cn = torch.stack(cs, 0) if self.kind == "LSTM" else None
        return y, torch.stack(hs, 0), cn

    def _direction(self, xw, r, rb, h, c, p, acts, mask):
        """One direction over time: xw (T, N, G*H) -> Y (T, N, H), last H and C (N, H)."""
        hidden = r.shape[-1]
        clip = self.clip
        out = []
        if self.kind == "LSTM":
            pi, po, pf = (p[:hidden], p[hidden:2 * hidden], p[2 * hidden:]) if p is not None else (None,) * 3
        for t in range(xw.shape[0]):
            if self.kind == "LSTM":
                g = xw[t] + torch.matmul(h, r.t()) + rb
                gi, go, gf, gc = g.split(hidden, -1)
                if pi is not None:
                    gi, gf = gi + pi * c, gf + pf * c
                i = _apply(acts[0], gi, clip)
                f = 1 - i if self.input_forget else _apply(acts[0], gf, clip)
                c_new = f * c + i * _apply(acts[1], gc, clip)
                if po is not None:
                    go = go + po * c_new
                o = _apply(acts[0], go, clip)
                h_new = o * _apply(acts[2], c_new, None)
            elif self.kind == "GRU":
                xz, xr, xh = xw[t].split(hidden, -1)
                if self.linear_before_reset:
                    hz, hr, hh = (torch.matmul(h, r.t()) + rb).split(hidden, -1)
                    z = _apply(acts[0], xz + hz, clip)
                    rg = _apply(acts[0], xr + hr, clip)
                    cand = _apply(acts[1], xh + rg * hh, clip)
                else:
                    hz, hr = (torch.matmul(h, r[:2 * hidden].t()) + rb[:2 * hidden]).split(hidden, -1)
                    z = _apply(acts[0], xz + hz, clip)
                    rg = _apply(acts[0], xr + hr, clip)
                    cand = _apply(acts[1], xh + torch.matmul(rg * h, r[2 * hidden:].t()) + rb[2 * hidden:], clip)
                h_new = (1 - z) * cand + z * h
                c_new = None
            else:
                h_new = _apply(acts[0], xw[t] + torch.matmul(h, r.t()) + rb, clip)
                c_new = None
            if mask is not None:
                # past the end of a sequence: the state stays, the output is zero
                m = mask[t]
                out.append(torch.where(m, h_new, torch.zeros_like(h_new)))
                h = torch.where(m, h_new, h)
                if c_new is not None:
                    c = torch.where(m, c_new, c)
            else:
                out.append(h_new)
                h = h_new
                c = c_new
        if not out:  # an empty time axis
            return xw.new_zeros(0, h.shape[0], hidden), h, c
        return torch.stack(out, 0), h, c


def torch_layout(kind: str, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """ONNX W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) or None -> the flat weight list of
    torch's fused kernels: per direction w_ih, w_hh, b_ih, b_hh in torch's gate order."""
    hidden = r.shape[-1]
    gh = w.shape[1]
    if b is None:
        b = w.new_zeros(w.shape[0], 2 * gh)
    params: list[torch.Tensor] = []
    for d in range(w.shape[0]):
        params += [
            _reorder(w[d], kind, hidden), _reorder(r[d], kind, hidden),
            _reorder(b[d, :gh], kind, hidden), _reorder(b[d, gh:], kind, hidden),
        ]
    return tuple(params)


def _rnn_kernel(acts: tuple[Activation, ...]):
    return torch._VF.rnn_relu if acts[0][0] == "relu" else torch._VF.rnn_tanh


def _lower(kind: str):
    def lower(ctx, node, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
        direction = str(attr(node, "direction", "forward"))
        if direction not in ("forward", "reverse", "bidirectional"):
            raise ValueError(f"expected direction forward, reverse or bidirectional, received '{direction}'")
        num_dirs = 2 if direction == "bidirectional" else 1
        acts = _activations(kind, num_dirs, attr(node, "activations"), attr(node, "activation_alpha"),
                            attr(node, "activation_beta"))
        clip = attr(node, "clip")
        layout = int(attr(node, "layout", 0))
        mod = Recurrent(
            kind, direction, acts, float(clip) if clip is not None else None,
            bool(attr(node, "input_forget", 0)), bool(attr(node, "linear_before_reset", 0)), layout,
            len(node.outputs), peepholes=p is not None,
        )
        args = [x, w, r, b, seq_lens, h0] + ([c0, p] if kind == "LSTM" else [None, None])
        if mod.fusable:  # the weights in torch's layout: a parameter-only call, cached in inference
            args.append(ctx.call(torch_layout, kind, w, r, b))
        out = ctx.module(mod, *args, hint=kind.lower())
        return ctx.unpack(out, len(node.outputs))

    return lower


for _kind in _KINDS:
    register(_kind)(_lower(_kind))
