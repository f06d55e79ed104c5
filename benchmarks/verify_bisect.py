"""Peak memory of `verify --bisect` on a ResNet-50-sized network.

Bisection compares source-layer outputs with IR values in topological chunks, so only one
chunk of intermediates per side is alive at a time. This script converts a ResNet-50
(25.6 M parameters, 224x224 input), corrupts one late layer in the converted model, and in
separate processes measures the peak RSS of

  * the forward passes alone (source and ONNX Runtime, no intermediates kept): the floor,
  * bisection with the default chunk (16 layers),
  * bisection with every layer in one chunk (all intermediates at once: the naive way),

then prints the peaks, the ratio of the bounded bisection to the naive one, and whether each
found the corrupted layer.

    python benchmarks/verify_bisect.py [--batch 4] [--layer layer4.1.conv2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _prepare(workdir: Path, layer: str) -> tuple[Path, Path]:
    import torch

    import portanet
    from model_zoo.pytorch import ResNet50, randomize_batchnorm

    src, bad = workdir / "resnet50.pt2", workdir / "resnet50-bad.onnx"
    if not src.exists():
        torch.manual_seed(0)
        module = randomize_batchnorm(ResNet50()).eval()
        ep = torch.export.export(module, (torch.randn(2, 3, 224, 224),),
                                 dynamic_shapes=({0: torch.export.Dim("N")},))
        torch.export.save(ep, src)
    if not bad.exists():
        sys.path.insert(0, str(REPO / "tests" / "parity"))
        from conftest import corrupt_layer

        model = portanet.convert(src)
        corrupt_layer(model, layer)
        portanet.save(model, bad)
    return src, bad


def _child(mode: str, src: str, bad: str, batch: int) -> None:
    """Runs in a fresh process; prints one JSON line with the peak RSS (MiB) and the result."""
    import numpy as np

    import portanet
    from portanet.parity.reference import run_reference, runner_for
    from portanet.parity.verify import options_from_metadata, run_bisect

    model = portanet.load(bad)
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    feeds = {model.graph.inputs[0].name: x}
    options = {"convert_options": options_from_metadata(model), "model": model,
               "output_names": [v.name for v in model.graph.outputs]}
    sources = runner_for("pytorch").prepare([src], options)
    t0 = time.perf_counter()
    layer = None
    if mode == "forward":
        run_reference("pytorch", sources, feeds, output_names=options["output_names"], options=options)
        portanet.Session(model, backend="ort").run(feeds)
        compared = 0
    else:
        chunk = 16 if mode == "chunked" else 10_000
        result = run_bisect("pytorch", sources, model, feeds, options, backend="ort", chunk=chunk)
        layer, compared = result.layer, result.compared
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB
    print(json.dumps({"mode": mode, "peak_mib": peak, "layer": layer, "compared": compared,
                      "seconds": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layer", default="layer4.1.conv2", help="the layer to corrupt (late: the walk is long)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.child[2], args.batch)
        return
    from model_zoo.common import cache_dir

    src, bad = _prepare(cache_dir("bench"), args.layer)
    rows = {}
    for mode in ("forward", "chunked", "all-at-once"):
        out = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--child", mode, str(src), str(bad)],
                             capture_output=True, text=True, check=True)
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"ResNet-50, batch {args.batch}x3x224x224, corrupted layer {args.layer}")
    for mode, r in rows.items():
        found = f", found {r['layer']} after {r['compared']} layers" if mode != "forward" else ""
        print(f"  {mode:12s} peak RSS {r['peak_mib']:8.0f} MiB  ({r['seconds']:.1f} s{found})")
    floor = rows["forward"]["peak_mib"]
    print(f"  chunked / all-at-once peak RSS: {rows['chunked']['peak_mib'] / rows['all-at-once']['peak_mib']:.2f}x")
    print(f"  chunked bisection above the forward-pass floor: {rows['chunked']['peak_mib'] - floor:.0f} MiB; "
          f"all-at-once: {rows['all-at-once']['peak_mib'] - floor:.0f} MiB")


if __name__ == "__main__":
    main()
