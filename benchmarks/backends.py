"""Latency of every runtime backend on a converted ResNet-50, next to ONNX Runtime.

    python benchmarks/backends.py [--backends ort,torch,openvino,opencv,tract] [--batch-sizes 1,32]
                                  [--iters 10] [--plot bench.png]

Builds Caffe's ResNet-50 (model_zoo's generator, random weights, 224x224), converts it as
``portanet convert`` does (-O1), saves it as ONNX and benchmarks that file with
``portanet.runtime.bench.bench_model`` on each backend and batch size. Prints a Markdown table
(p50 latency, p10-p90, samples/s, ratio to ONNX Runtime) and the measurement conditions;
asserts nothing (timing is machine-dependent). Same as
``portanet bench resnet50.onnx --backends ort,torch,openvino,opencv,tract --batch-sizes 1,32``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def converted_resnet50() -> Path:
    from model_zoo.caffe.writer import build
    from model_zoo.common import cache_dir
    from portanet.converters.registry import convert_paths
    from portanet.ir.io import save_onnx
    from portanet.optimizer import optimize

    proto, weights = build("resnet50")
    out = cache_dir("bench") / "resnet50-caffe.onnx"
    if not out.exists() or out.stat().st_mtime < weights.stat().st_mtime:
        save_onnx(optimize(convert_paths([proto, weights]), level=1), out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="ort,torch,openvino,opencv,tract")
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args(argv)

    from portanet.ir.io import load_onnx
    from portanet.runtime.bench import bench_model, conditions, plot_results

    path = converted_resnet50()
    model = load_onnx(path, upgrade=False)
    backends = [b for b in args.backends.split(",") if b]
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    results = bench_model(model, backends=backends, batch_sizes=batches, warmup=args.warmup, iters=args.iters,
                          min_seconds=0.0)
    base = {r.batch: r.p50_ms for r in results if r.backend == "ort"}
    print("| backend | batch | p50 ms | p10-p90 ms | samples/s | p50 / ONNX Runtime |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        ratio = f"{r.p50_ms / base[r.batch]:.2f}" if r.batch in base else "-"
        flag = " (!)" if r.unreliable else ""
        print(f"| {r.backend} | {r.batch} | {r.p50_ms:.1f}{flag} | {r.p10_ms:.1f}-{r.p90_ms:.1f} | "
              f"{r.throughput:.1f} | {ratio} |")
    cond = conditions()
    print(f"\nconditions: load average {cond.get('load_average')}, {cond.get('cpu_count')} cores")
    if args.plot:
        plot_results(results, args.plot, title="ResNet-50 (Caffe, 224x224) per backend")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
