"""``portanet export`` speed: the generated code against hand-written models, and export time.

    python benchmarks/export.py [--threads 1] [--iters 30]

* PyTorch: ResNet-18 and the case-study CNN, hand-written in ``model_zoo/pytorch/models.py``,
  converted to the IR and exported back to PyTorch code (``--to pytorch``); eager latency of
  the generated module / the hand-written one at batch 1 and 8 (target <= 1.05).
* Keras: the native ``keras.applications`` ResNet-50 (64x64) and the case-study CNN, converted
  and exported back (``--to keras``); latency of the export / the native model in TensorFlow
  at batch 1 and 8 (target <= 1.1).
* Export time of ResNet-50 (the Caffe zoo's, 25.6 M parameters) from the converted IR to
  PyTorch code and to Keras, verification off (target <= 5 s).

Prints the numbers and the ratios; asserts nothing (timings depend on the machine and its load:
medians of interleaved runs, one thread by default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def interleaved(fns: dict[str, Callable[[], object]], iters: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, the calls interleaved so load hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_pytorch(tmp: Path, iters: int) -> list[tuple[str, int, float, float]]:
    import torch

    import portanet
    from model_zoo.pytorch.models import ZOO, build
    from portanet.export.pytorch import import_generated

    rows = []
    for name in ("resnet18", "case_study_cnn"):
        hand = build(name).eval()
        shape = ZOO[name].input_shape
        ir_model = portanet.convert(hand, example_inputs=(torch.randn(2, *shape),))
        py = tmp / f"{name}.py"
        portanet.export(ir_model, to="pytorch", path=py, verify=False)
        gen = import_generated(py).load()
        for batch in (1, 8):
            x = torch.randn(batch, *shape)
            with torch.no_grad():
                t = interleaved({"hand": lambda m=hand, x=x: m(x), "gen": lambda m=gen, x=x: m(x)}, iters)
            rows.append((name, batch, t["hand"] * 1e3, t["gen"] * 1e3))
    return rows


def bench_keras(tmp: Path, iters: int) -> list[tuple[str, int, float, float]]:
    import keras
    import numpy as np

    import portanet
    from model_zoo.keras.models import build

    rows = []
    for name in ("resnet50", "case_study_cnn"):
        native = build(name)
        ir_model = portanet.convert(native)
        out = tmp / f"{name}.keras"
        portanet.export(ir_model, to="keras", path=out, verify=False)
        exported = keras.saving.load_model(out)
        shape = tuple(native.inputs[0].shape[1:])
        for batch in (1, 8):
            x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
            t = interleaved({"native": lambda m=native, x=x: m(x, training=False),
                             "export": lambda m=exported, x=x: m(x, training=False)}, iters)
            rows.append((name, batch, t["native"] * 1e3, t["export"] * 1e3))
    return rows


def bench_export_time(tmp: Path) -> dict[str, float]:
    import portanet
    from model_zoo.caffe.writer import build

    prototxt, weights = build("resnet50")
    ir_model = portanet.optimize(portanet.convert(str(prototxt), str(weights)), level=1)
    out = {}
    for target, suffix in (("pytorch", ".py"), ("keras", ".keras")):
        res = portanet.export(ir_model, to=target, path=tmp / f"resnet50{suffix}", verify=False, opt_level=0)
        out[target] = res.seconds
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=30)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        print("\nPyTorch eager: generated module vs hand-written (target <= 1.05)")
        for name, batch, hand, gen in bench_pytorch(tmpd, args.iters):
            print(f"  {name:15s} b{batch}: hand-written {hand:8.3f} ms  generated {gen:8.3f} ms  ratio {gen / hand:.3f}")
        print("\nKeras in TensorFlow: export vs native model (target <= 1.1)")
        for name, batch, native, exp in bench_keras(tmpd, args.iters):
            print(f"  {name:15s} b{batch}: native {native:8.3f} ms  export {exp:8.3f} ms  ratio {exp / native:.3f}")
        print("\nExport time of ResNet-50 (Caffe zoo, 25.6 M parameters), verification off (target <= 5 s)")
        for target, seconds in bench_export_time(tmpd).items():
            print(f"  {target:8s} {seconds:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
