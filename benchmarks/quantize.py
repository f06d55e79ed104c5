"""int8 (and float16) against float32: file size and ONNX Runtime latency of converted models.

Models: ResNet-50 from the Caffe zoo generator (224x224, converted by portanet's Caffe
importer), MobileNetV2 from keras.applications (224x224, converted by the Keras importer,
NCHW interface) and the PyTorch zoo's ResNet-18 (64x64). Each is quantized by
``portanet.quantize`` exactly as ``portanet quantize`` does it (-O2, static QDQ, per-channel
int8 weights, minmax calibration) on seeded random images (the zoo weights are random, so
there is no accuracy to keep; the cosine column says how closely int8 follows float on them).
Latency: ONNX Runtime sessions (portanet's ``Session``, default threads) of the float and int8
(and float16) models run *interleaved* on the same random batch, batch 1 and 32; the median
of each is reported, so a busy machine slows both alike. The float column is the -O2 model
quantization starts from.

    python benchmarks/quantize.py                 # all models
    python benchmarks/quantize.py --models resnet50
    python benchmarks/quantize.py --markdown      # the README table

Target (issue): int8 at most 0.5x float latency at batch 32 for ResNet-50. Timing belongs
here, not in tests: the script prints numbers and ratios and asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from model_zoo.common import cache_dir  # noqa: E402

log = logging.getLogger("bench.quantize")
CACHE = cache_dir("benchmarks", "quantize")


# -- models: name -> builder of the converted float model --------------------------------------------
def caffe_resnet50() -> Any:
    import portanet
    from model_zoo.caffe.writer import build

    prototxt, caffemodel = build("resnet50")
    return portanet.convert(str(prototxt), str(caffemodel))


def keras_mobilenetv2() -> Any:
    import portanet
    from model_zoo.keras.models import _application

    return portanet.convert(_application("MobileNetV2", (224, 224, 3))(0), nchw=True)


def pytorch_resnet18() -> Any:
    import torch

    import portanet
    from model_zoo.pytorch.models import ZOO, build

    return portanet.convert(build("resnet18"), example_inputs=(torch.randn(2, *ZOO["resnet18"].input_shape),))


MODELS: dict[str, Callable[[], Any]] = {
    "caffe/resnet50": caffe_resnet50,
    "keras/mobilenetv2": keras_mobilenetv2,
    "pytorch/resnet18": pytorch_resnet18,
}


def converted(name: str) -> Path:
    """The converted float model, cached (conversion is not what this script measures)."""
    import portanet

    path = CACHE / (name.replace("/", "-") + ".onnx")
    if not path.exists():
        portanet.save(MODELS[name](), path)
    return path


def random_images(model: Any, path: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """An .npz of seeded random uint8 images in the model input's own per-sample shape."""
    dims = [d if isinstance(d, int) else None for d in model.graph.inputs[0].shape.dims]
    shape = tuple(int(d) for d in dims[1:])
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n_train + n_test, *shape), dtype=np.uint8)
    np.savez(path, x=x[:n_train], y=np.zeros(n_train, np.float32), x_test=x[n_train:],
             y_test=np.zeros(n_test, np.float32))
    return path


def interleaved_ms(models: dict[str, Any], batches: list[int], iters: int) -> dict[str, dict[int, float]]:
    """Median ms per model and batch size, the models' runs alternating on one random batch."""
    from portanet.runtime.session import Session

    sessions = {k: Session(m, backend="ort") for k, m in models.items()}
    first = next(iter(sessions.values()))
    out: dict[str, dict[int, float]] = {k: {} for k in models}
    for b in batches:
        feeds = first.random_feeds(batch=b, seed=0)
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(2):  # warm-up
            for sess in sessions.values():
                sess.run(feeds)
        for _ in range(iters):
            for k, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(feeds)
                times[k].append(1000 * (time.perf_counter() - t0))
        for k in models:
            out[k][b] = float(np.median(times[k]))
    return out


def run(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import portanet
    from portanet.quantize import QuantizeOptions, quantize, to_float16
    from portanet.quantize.evaluate import file_size

    t0 = time.perf_counter()
    model = portanet.load(converted(name))
    data = random_images(model, tmp / "data.npz", args.samples, args.test_samples)
    result = quantize(model, data, QuantizeOptions(samples=args.samples, latency_batches=()))
    f, q = result.report.rows
    row: dict[str, Any] = {"model": name, "float_mb": f.size_bytes / 1e6, "int8_mb": q.size_bytes / 1e6,
                           "cosine": q.cosine}
    models = {"float": result.float_model, "int8": result.model}
    if args.fp16:
        models["fp16"] = to_float16(result.float_model)
        portanet.save(models["fp16"], tmp / "half.onnx")
        row["fp16_mb"] = file_size(tmp / "half.onnx") / 1e6
    for k, ms in interleaved_ms(models, args.batches, args.iters).items():
        row[f"{k}_ms"] = ms
    row["seconds"] = time.perf_counter() - t0
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="", help="only models whose name contains this")
    p.add_argument("--samples", type=int, default=64, help="calibration images (random)")
    p.add_argument("--test-samples", type=int, default=16, help="images for the cosine column")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 32])
    p.add_argument("--iters", type=int, default=10, help="timed runs per batch size (p50 reported)")
    p.add_argument("--fp16", action="store_true", help="also float16 (ORT's CPU provider upcasts most ops)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows = []
    for name in MODELS:
        if args.models and args.models not in name:
            continue
        with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
            try:
                rows.append(run(name, args, Path(tmp)))
            except Exception as exc:  # noqa: BLE001 - one model's failure is its line
                print(f"{name}: failed: {type(exc).__name__}: {exc}")
    load = os.getloadavg()
    cols = ["model", "float MB", "int8 MB", "size ratio"]
    for b in args.batches:
        cols += [f"b{b} float ms", f"b{b} int8 ms", f"b{b} int8/float"]
    cols.append("cosine int8 vs float")
    if args.fp16:
        cols.append("fp16 MB")
        for b in args.batches:
            cols += [f"b{b} fp16 ms", f"b{b} fp16/float"]
    lines = []
    for r in rows:
        cells = [r["model"], f"{r['float_mb']:.1f}", f"{r['int8_mb']:.1f}", f"{r['int8_mb'] / r['float_mb']:.2f}x"]
        for b in args.batches:
            fm, qm = r["float_ms"][b], r["int8_ms"][b]
            cells += [f"{fm:.1f}", f"{qm:.1f}", f"{qm / fm:.2f}x"]
        cells.append(f"{r['cosine']:.4f}")
        if args.fp16:
            cells.append(f"{r['fp16_mb']:.1f}")
            for b in args.batches:
                cells += [f"{r['fp16_ms'][b]:.1f}", f"{r['fp16_ms'][b] / r['float_ms'][b]:.2f}x"]
        lines.append(cells)
    if args.markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---" for _ in cols) + "|")
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
    else:
        for cells in lines:
            print("  ".join(f"{c}: {v}" for c, v in zip(cols, cells)))
    for r in rows:
        if "resnet50" in r["model"] and 32 in r["float_ms"]:
            ratio = r["int8_ms"][32] / r["float_ms"][32]
            print(f"target: {r['model']} int8/float latency at batch 32 = {ratio:.2f}x "
                  f"({'meets' if ratio <= 0.5 else 'misses'} <= 0.5x)")
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          "(other jobs were running: ratios are more reliable than absolute times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
