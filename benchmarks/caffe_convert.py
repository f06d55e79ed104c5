"""Caffe conversion speed and memory on a ResNet-50-sized net, next to OpenCV's load time.

    python benchmarks/caffe_convert.py [--repeat 3]

Builds ResNet-50 (Caffe naming, BatchNorm+Scale, 25.6 M parameters, ~100 MB caffemodel)
with random weights through the model zoo writer, then, each in a fresh subprocess:

* portanet: ``convert_paths([prototxt, caffemodel])`` (parse, deploy graph, lowering, ONNX
  shape inference) — wall time and peak resident memory;
* OpenCV DNN: ``cv2.dnn.readNetFromCaffe(prototxt, caffemodel)`` — wall time and peak memory.

Prints the numbers and their ratios; asserts nothing (timing is machine-dependent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
which, proto, model = sys.argv[1:4]

def peak_mb():
    # VmHWM: this process's peak resident set (ru_maxrss would include the parent's, kept across exec)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

if which == "portanet":
    from portanet.converters.registry import ConvertOptions, convert_paths
    import portanet.converters.caffe.converter  # import cost outside the timed region
    base = peak_mb()
    t = time.perf_counter()
    model_ir = convert_paths([proto, model], ConvertOptions())
    elapsed = time.perf_counter() - t
    nodes = sum(1 for _ in model_ir.graph)
else:
    import cv2
    base = peak_mb()
    t = time.perf_counter()
    net = cv2.dnn.readNetFromCaffe(proto, model)
    elapsed = time.perf_counter() - t
    nodes = len(net.getLayerNames())
print(json.dumps({{"seconds": elapsed, "peak_mb": peak_mb(), "import_mb": base, "nodes": nodes}}))
"""


def _run(which: str, proto: Path, model: Path) -> dict:
    code = _CHILD.format(repo=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, which, str(proto), str(model)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; the best time is kept")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from model_zoo.caffe.writer import build

    proto, model = build("resnet50")
    size_mb = model.stat().st_size / 2**20
    results = {}
    for which in ("portanet", "opencv"):
        runs = [_run(which, proto, model) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["seconds"])
        best["peak_mb"] = max(r["peak_mb"] for r in runs)
        results[which] = best
    p, o = results["portanet"], results["opencv"]
    print(f"ResNet-50 caffemodel: {size_mb:.1f} MB, best of {args.repeat} runs each")
    print(f"  portanet convert : {p['seconds']:.2f} s, peak RSS {p['peak_mb']:.0f} MB "
          f"(after imports {p['import_mb']:.0f} MB), {p['nodes']} IR nodes")
    print(f"  OpenCV load      : {o['seconds']:.2f} s, peak RSS {o['peak_mb']:.0f} MB "
          f"(after imports {o['import_mb']:.0f} MB), {o['nodes']} layers")
    grow_p, grow_o = p["peak_mb"] - p["import_mb"], o["peak_mb"] - o["import_mb"]
    print(f"  ratio portanet/OpenCV: time {p['seconds'] / o['seconds']:.2f}x, "
          f"peak memory {p['peak_mb'] / o['peak_mb']:.2f}x (growth while loading {grow_p:.0f} vs {grow_o:.0f} MB, "
          f"{grow_p / max(grow_o, 1e-9):.2f}x)")
    print(f"  target < 5 s: {'met' if p['seconds'] < 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
