"""Inference latency of the torch backend vs eager PyTorch vs ONNX Runtime.

For each model of the PyTorch zoo: the eager ``nn.Module``, the same model converted by
portanet and lowered to torch.fx (``Session(backend="torch")``'s module), and ONNX Runtime on
the converted model. Prints the median latency per batch and the ratios
(eager / torch backend: >= 1.0 means the lowering is at least as fast as eager PyTorch).

    python benchmarks/torch_backend_latency.py [--models case_study_cnn resnet18] [--batch 1 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # model_zoo lives beside the package

import portanet  # noqa: E402
from model_zoo.pytorch.models import ZOO, build  # noqa: E402
from portanet.runtime import Session  # noqa: E402
from portanet.runtime.torch_backend import lower  # noqa: E402


def median_ms(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds per call of each function; the functions are timed in turns so
    that load changes on a shared machine hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


ORT_THREADS = 1


def bench(name: str, batch: int, repeat: int) -> dict[str, float]:
    entry = ZOO[name]
    eager = build(name).eval()
    x = torch.randn(batch, *entry.input_shape)
    model = portanet.convert(eager, example_inputs=(x,))
    fx_module = lower(model).eval()
    ort = Session(model, backend="ort", intra_op_threads=ORT_THREADS)
    feeds = {ort.inputs[0].name: x.numpy()}
    with torch.no_grad():
        err = float((fx_module(x) - eager(x)).abs().max())
        t = median_ms({"eager": lambda: eager(x), "torch_backend": lambda: fx_module(x), "ort": lambda: ort.run(feeds)}, repeat)
    return {**t, "max_err": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["case_study_cnn", "lenet5", "resnet18", "mobilenetv2"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and ORT")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global ORT_THREADS
    ORT_THREADS = args.threads
    header = f"{'model':<16}{'batch':>6}{'eager ms':>10}{'fx ms':>10}{'ort ms':>10}{'eager/fx':>10}{'ort/fx':>9}{'max err':>10}"
    print(header)
    print("-" * len(header))
    ratios = []
    for name in args.models:
        for batch in args.batch:
            r = bench(name, batch, args.repeat)
            ratios.append(r["eager"] / r["torch_backend"])
            print(
                f"{name:<16}{batch:>6}{r['eager']:>10.3f}{r['torch_backend']:>10.3f}{r['ort']:>10.3f}"
                f"{r['eager'] / r['torch_backend']:>10.2f}{r['ort'] / r['torch_backend']:>9.2f}{r['max_err']:>10.1e}"
            )
    print(f"geometric mean eager/torch-backend speed ratio: {float(np.exp(np.mean(np.log(ratios)))):.3f}")


if __name__ == "__main__":
    main()
