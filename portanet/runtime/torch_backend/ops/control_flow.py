"""Control flow: ONNX If, Loop and Scan with their subgraphs.

Each subgraph is lowered once into a callable module (``LowerCtx.subgraph``); the op is a
small ``nn.Module`` that runs Python control flow around it at run time. Autograd records
exactly the branch / iterations that ran, so gradients flow through them (and into
parameters the subgraphs read from the enclosing graph, which are passed in as
arguments). An ``If`` whose condition is a constant while lowering is inlined.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from portanet.runtime.torch_backend.lowering import Subgraph
from portanet.runtime.torch_backend.ops._util import attr
from portanet.runtime.torch_backend.registry import register


def _pick(captured: tuple[Any, ...], index: list[int]) -> list[Any]:
    return [captured[i] for i in index]


def _merge(*lists: list) -> tuple[list, list[list[int]]]:
    """Union of several subgraphs' captured references (fx nodes, by identity) and, per
    subgraph, the positions of its own captures in the union."""
    union: list = []
    where: list[list[int]] = []
    for refs in lists:
        idx = []
        for r in refs:
            for k, u in enumerate(union):
                if u is r:
                    idx.append(k)
                    break
            else:
                union.append(r)
                idx.append(len(union) - 1)
        where.append(idx)
    return union, where


class If(nn.Module):
    """``forward(cond, *captured)`` -> the outputs of the branch ``cond`` selects."""

    def __init__(self, then_branch: Subgraph, else_branch: Subgraph, then_idx: list[int], else_idx: list[int]):
        super().__init__()
        self.then_branch = then_branch
        self.else_branch = else_branch
        self.then_idx = then_idx
        self.else_idx = else_idx

    def forward(self, cond: torch.Tensor, *captured: Any) -> tuple[torch.Tensor, ...]:
        if bool(cond.reshape(-1)[0]):
            return self.then_branch(*_pick(captured, self.then_idx))
        return self.else_branch(*_pick(captured, self.else_idx))


@register("If")
def if_(ctx, node, cond):
    then_g, else_g = attr(node, "then_branch"), attr(node, "else_branch")
    known = ctx.const(cond)
    if known is not None:  # decided while lowering: only the taken branch becomes code
        return ctx.inline(then_g if bool(known.reshape(-1)[0]) else else_g)
    then_m, then_cap = ctx.subgraph(then_g)
    else_m, else_cap = ctx.subgraph(else_g)
    union, (ti, ei) = _merge(then_cap, else_cap)
    out = ctx.module(If(then_m, else_m, ti, ei), cond, *union, hint="if")
    return ctx.unpack(out, len(node.outputs))


def _stack(slices: list[torch.Tensor], axis: int) -> torch.Tensor:
    return torch.stack(slices, axis)


class Loop(nn.Module):
    """ONNX Loop: ``forward(M, cond, *v_initial, *captured)`` -> (*v_final, *scan_outputs).

    body(iteration_num, cond_in, *v) -> (cond_out, *v_next, *scan_slices); the loop runs
    while ``iteration < M`` (M omitted: unbounded) and ``cond`` (omitted: true). Scan
    outputs stack the per-iteration slices along a new leading axis.
    """

    def __init__(self, body: Subgraph, n_carried: int, n_scan: int, has_m: bool, has_cond: bool) -> None:
        super().__init__()
        self.body = body
        self.n_carried = n_carried
        self.n_scan = n_scan
        self.has_m = has_m
        self.has_cond = has_cond

    def forward(self, m: Any, cond: Any, *args: Any) -> tuple[torch.Tensor, ...]:
        carried = list(args[: self.n_carried])
        captured = args[self.n_carried:]
        trips = int(m.reshape(-1)[0]) if self.has_m else None
        go = bool(cond.reshape(-1)[0]) if self.has_cond else True
        device = carried[0].device if carried else (captured[0].device if captured else None)
        cond_t = torch.tensor(go, device=device)
        scans: list[list[torch.Tensor]] = [[] for _ in range(self.n_scan)]
        i = 0
        while go and (trips is None or i < trips):
            out = self.body(torch.tensor(i, dtype=torch.int64, device=device), cond_t, *carried, *captured)
            cond_t = out[0]
            carried = list(out[1:1 + self.n_carried])
            for k, s in enumerate(out[1 + self.n_carried:]):
                scans[k].append(s)
            if self.has_cond:  # without a cond input ONNX ignores the body's cond output
                go = bool(cond_t.reshape(-1)[0])
            i += 1
        stacked = []
        for k in range(self.n_scan):
            if scans[k]:
                stacked.append(_stack(scans[k], 0))
            else:  # no iteration ran: an empty scan output (its per-step shape is unknown)
                stacked.append(torch.zeros(0, device=device))
        return (*carried, *stacked)


@register("Loop")
def loop(ctx, node, m=None, cond=None, *v_initial):
    body_g = attr(node, "body")
    body, captured = ctx.subgraph(body_g)
    n_carried = len(v_initial)
    n_scan = len(body_g.outputs) - 1 - n_carried
    mod = Loop(body, n_carried, n_scan, m is not None, cond is not None)
    out = ctx.module(mod, m, cond, *v_initial, *captured, hint="loop")
    return ctx.unpack(out, len(node.outputs))


class Scan(nn.Module):
    """ONNX Scan (opset 9+): ``forward(*states, *scan_inputs, *captured)`` ->
    (*final_states, *scan_outputs). The body maps (*states, *input_slices) to
    (*states_next, *output_slices), once per position along each scan input's axis."""

    def __init__(self, body: Subgraph, n_state: int, n_in: int, in_axes: list[int], in_dirs: list[int],
                 out_axes: list[int], out_dirs: list[int]) -> None:
        super().__init__()
        self.body = body
        self.n_state = n_state
        self.n_in = n_in
        self.in_axes = in_axes
        self.in_dirs = in_dirs
        self.out_axes = out_axes
        self.out_dirs = out_dirs

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        states = list(args[: self.n_state])
        xs = args[self.n_state:self.n_state + self.n_in]
        captured = args[self.n_state + self.n_in:]
        axes = [a % x.dim() for a, x in zip(self.in_axes, xs)]
        steps = xs[0].shape[axes[0]]
        n_out = self.body.n_outputs - self.n_state
        outs: list[list[torch.Tensor]] = [[] for _ in range(n_out)]
        for t in range(steps):
            slices = [x.select(a, steps - 1 - t if d else t) for x, a, d in zip(xs, axes, self.in_dirs)]
            res = self.body(*states, *slices, *captured)
            states = list(res[: self.n_state])
            for k, y in enumerate(res[self.n_state:]):
                outs[k].append(y)
        stacked = []
        for k in range(n_out):
            seq = outs[k][::-1] if self.out_dirs[k] else outs[k]
            stacked.append(_stack(seq, self.out_axes[k]))
        return (*states, *stacked)


class BatchedScan(nn.Module):
    """ONNX Scan-8: every input has a leading batch axis and the first input is the
    optional ``sequence_lens`` (N,); each batch item is one Scan-9 run over axis 0 of its
    slices (``directions`` reverses inputs). Scan outputs of short sequences are
    zero-padded to the longest one."""

    def __init__(self, scan: Scan, has_lens: bool) -> None:
        super().__init__()
        self.scan = scan
        self.has_lens = has_lens

    def forward(self, lens: Any, *args: Any) -> tuple[torch.Tensor, ...]:
        n_state, n_in = self.scan.n_state, self.scan.n_in
        batch = args[0].shape[0]
        per_item: list[tuple[torch.Tensor, ...]] = []
        for b in range(batch):
            states = [a[b] for a in args[:n_state]]
            xs = [a[b] for a in args[n_state:n_state + n_in]]
            if self.has_lens:
                xs = [x[: int(lens[b])] for x in xs]
            per_item.append(self.scan(*states, *xs, *args[n_state + n_in:]))
        outs = []
        for k in range(len(per_item[0])):
            items = [r[k] for r in per_item]
            longest = max(t.shape[0] for t in items) if k >= n_state else None
            if longest is not None:
                items = [torch.cat([t, t.new_zeros(longest - t.shape[0], *t.shape[1:])]) for t in items]
            outs.append(torch.stack(items, 0))
        return tuple(outs)


@register("Scan")
def scan(ctx, node, *inputs):
    body_g = attr(node, "body")
    n_in = int(attr(node, "num_scan_inputs"))
    batched = ctx.opset < 9
    lens, inputs = (inputs[0], inputs[1:]) if batched else (None, inputs)
    n_state = len(inputs) - n_in
    n_out = len(body_g.outputs) - n_state
    body, captured = ctx.subgraph(body_g)
    if batched:
        dirs = list(attr(node, "directions", [0] * n_in))
        mod = Scan(body, n_state, n_in, [0] * n_in, dirs, [0] * n_out, [0] * n_out)
        out = ctx.module(BatchedScan(mod, lens is not None), lens, *inputs, *captured, hint="scan")
        return ctx.unpack(out, len(node.outputs))
    mod = Scan(
        body, n_state, n_in,
        list(attr(node, "scan_input_axes", [0] * n_in)), list(attr(node, "scan_input_directions", [0] * n_in)),
        list(attr(node, "scan_output_axes", [0] * n_out)), list(attr(node, "scan_output_directions", [0] * n_out)),
    )
    out = ctx.module(mod, *inputs, *captured, hint="scan")
    return ctx.unpack(out, len(node.outputs))
