"""Recurrent speed: a 2-layer bidirectional LSTM on the torch backend vs native nn.LSTM, and
ONNX Runtime on portanet's output vs ONNX Runtime on torch.onnx's output.

    python benchmarks/rnn_speed.py [--repeat 20] [--batch 32 --steps 50 --units 128]

The model is ``nn.LSTM(units, units, num_layers=2, bidirectional=True, batch_first=True)``
(batch 32, 50 steps, 128 units by default), converted by ``portanet.convert``. Measured:

* inference: native module vs the lowered TorchModule (no_grad), median of ``repeat`` runs
  each, the two timed alternately so that both see the same machine load;
* training step: forward, sum-of-squares loss, backward, SGD step, same median;
* ONNX Runtime (CPU) on portanet's optimized output vs on ``torch.onnx.export(dynamo=True)``.

Prints throughput ratios (>= 1 means portanet is at least as fast; the target for the torch
backend is >= 0.9). Asserts nothing: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np


def _median_seconds(ref: Callable[[], object], ours: Callable[[], object], repeat: int,
                    warmup: int = 3) -> tuple[float, float]:
    """Median seconds of ``ref`` and of ``ours``, timed alternately (ref, ours, ref, ...) so
    that both see the same load on a shared machine."""
    for _ in range(warmup):
        ref()
        ours()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in zip((ref, ours), times):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--units", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads (1: steadier on a busy machine)")
    args = ap.parse_args()

    import onnx_ir as ir
    import onnxruntime as ort
    import torch

    import portanet
    from portanet.runtime.torch_backend import lower

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(args.units, args.units, num_layers=2, bidirectional=True, batch_first=True)

        def forward(self, x):
            return self.lstm(x)[0]

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    native = Net().eval()
    x = torch.randn(args.batch, args.steps, args.units)
    model = portanet.convert(native, example_inputs=(x,))
    ours = lower(model).eval()
    with torch.no_grad():
        err = float((ours(x) - native(x)).abs().max())
    print(f"model: 2-layer bidirectional LSTM, batch {args.batch}, {args.steps} steps, {args.units} units; "
          f"torch threads {torch.get_num_threads()}; max |ours - native| = {err:.2e}")

    def infer(net):
        def run():
            with torch.no_grad():
                net(x)
        return run

    def train_step(net):
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)

        def run():
            out = net(x)
            out = out if isinstance(out, torch.Tensor) else out[0]
            loss = out.square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return run

    # ONNX Runtime first (the training steps below change the weights): portanet's optimized
    # output vs torch.onnx's own export of the same module
    import warnings

    optimized = portanet.optimize(model)
    ours_bytes = ir.serde.serialize_model(optimized).SerializeToString()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(native.eval(), (x,), dynamo=True, verbose=False)
    theirs_bytes = ir.serde.serialize_model(program.model).SerializeToString()
    feeds = {"x": x.numpy()}
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess_ours = ort.InferenceSession(ours_bytes, so, providers=["CPUExecutionProvider"])
    sess_theirs = ort.InferenceSession(theirs_bytes, so, providers=["CPUExecutionProvider"])
    in_ours = sess_ours.get_inputs()[0].name
    in_theirs = sess_theirs.get_inputs()[0].name
    np.testing.assert_allclose(sess_ours.run(None, {in_ours: feeds["x"]})[0],
                               sess_theirs.run(None, {in_theirs: feeds["x"]})[0], rtol=1e-4, atol=1e-5)
    t_theirs, t_ours = _median_seconds(lambda: sess_theirs.run(None, {in_theirs: feeds["x"]}),
                                       lambda: sess_ours.run(None, {in_ours: feeds["x"]}), args.repeat)
    ort_row = ("ONNX Runtime inference (vs torch.onnx output)", t_theirs, t_ours)

    rows = []
    for what, make in (("inference", infer), ("training step", train_step)):
        native.train(what != "inference")
        ours.train(what != "inference")
        t_native, t_ours = _median_seconds(make(native), make(ours), args.repeat)
        rows.append((f"torch backend {what}", t_native, t_ours))
    rows.append(ort_row)

    print(f"{'':48s} {'reference ms':>12s} {'portanet ms':>12s} {'ratio':>7s}")
    for name, ref, got in rows:
        print(f"{name:48s} {ref * 1e3:12.2f} {got * 1e3:12.2f} {ref / got:7.2f}x")
    print("ratio = reference time / portanet time (throughput ratio; >= 1 is as fast or faster)")


if __name__ == "__main__":
    main()
