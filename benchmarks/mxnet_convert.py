"""MXNet conversion speed and memory on ResNet-50 v2, next to mxnet's own checkpoint load.

    python benchmarks/mxnet_convert.py [--repeat 3]

Uses the Gluon resnet50_v2 checkpoint of the model zoo (random weights, 25.6 M parameters,
~100 MB .params; built by the mxnet side environment on first use). Each measurement runs
in a fresh subprocess:

* portanet (main environment, no mxnet): ``convert_paths([symbol.json])`` — finds the
  params, reads them, lowers every op, runs ONNX shape inference — wall time and peak RSS;
* mxnet 1.9.1 (side environment): ``mx.model.load_checkpoint(prefix, 0)`` — wall time and
  peak RSS — and, separately, load + ``simple_bind`` + copying the weights in (ready to run).

Prints the numbers and their ratios; asserts nothing (timing is machine-dependent).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_PEAK = r"""
def peak_mb():
    # VmHWM: this process's own peak resident set
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
"""

_PORTANET = _PEAK + r"""
import json, sys, time
sys.path.insert(0, {repo!r})
from portanet.converters.registry import ConvertOptions, convert_paths
import portanet.converters.mxnet.handlers  # import cost outside the timed region
base = peak_mb()
t = time.perf_counter()
model = convert_paths([sys.argv[1]], ConvertOptions())
elapsed = time.perf_counter() - t
print(json.dumps({{"seconds": elapsed, "peak_mb": peak_mb(), "import_mb": base,
                   "nodes": sum(1 for _ in model.graph)}}))
"""

_MXNET = _PEAK + r"""
import json, sys, time
import mxnet as mx
prefix, mode = sys.argv[1], sys.argv[2]
base = peak_mb()
t = time.perf_counter()
sym, args, aux = mx.model.load_checkpoint(prefix, 0)
if mode == "bind":
    exe = sym.simple_bind(mx.cpu(), data=(1, 3, 224, 224), grad_req="null")
    exe.copy_params_from(args, aux, allow_extra_params=True)
    mx.nd.waitall()
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "peak_mb": peak_mb(), "import_mb": base}))
"""


def _child(cmd: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from model_zoo import mxnet as mxzoo

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    py = mxzoo.mxnet_python()
    if py is None:
        sys.exit("the mxnet side environment is missing: run `make mxnet-env`")
    folder = mxzoo.build(("zoo",))
    symbol = folder / "resnet50_v2-symbol.json"
    prefix = str(folder / "resnet50_v2")
    size_mb = (folder / "resnet50_v2-0000.params").stat().st_size / 2**20
    env = mxzoo.mxnet_env()

    def best(fn):
        runs = [fn() for _ in range(args.repeat)]
        return min(runs, key=lambda r: r["seconds"])

    ours = best(lambda: _child([sys.executable, "-c", _PORTANET.format(repo=str(REPO)), str(symbol)]))
    load = best(lambda: _child([str(py), "-c", _MXNET, prefix, "load"], env))
    bind = best(lambda: _child([str(py), "-c", _MXNET, prefix, "bind"], env))
    print(f"resnet50_v2: {size_mb:.1f} MB of params, {ours['nodes']} IR nodes; best of {args.repeat}")
    print(f"  portanet convert (no mxnet)     {ours['seconds']:7.3f} s   peak RSS {ours['peak_mb']:7.1f} MB "
          f"(+{ours['peak_mb'] - ours['import_mb']:.1f} over imports)")
    print(f"  mxnet load_checkpoint           {load['seconds']:7.3f} s   peak RSS {load['peak_mb']:7.1f} MB "
          f"(+{load['peak_mb'] - load['import_mb']:.1f} over imports)")
    print(f"  mxnet load + bind (ready)       {bind['seconds']:7.3f} s   peak RSS {bind['peak_mb']:7.1f} MB")
    print(f"ratio convert / mxnet load:       {ours['seconds'] / load['seconds']:.2f}x time")
    print(f"ratio convert / mxnet load+bind:  {ours['seconds'] / bind['seconds']:.2f}x time")
    print(f"ratio peak memory over imports:   "
          f"{(ours['peak_mb'] - ours['import_mb']) / max(load['peak_mb'] - load['import_mb'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
