"""Graph optimizer benchmark: portanet -O2 against onnxsim and onnxscript's optimizer.

For every model it finds - the PyTorch zoo exported by ``torch.onnx.export``, the Keras zoo
exported by tf2onnx (``from_function``), and the zoo models converted by portanet's own
importers (Caffe, Keras, CNTK, PyTorch; whichever exist and import here) - it prints one
table: node count, initializer bytes, ONNX Runtime latency with graph optimizations disabled
and enabled (best of ``--runs`` interleaved runs, batch 1, one thread), and the largest output difference
from the original on a random input.

    python benchmarks/optimize.py                    # everything found
    python benchmarks/optimize.py --models resnet    # names containing "resnet"
    python benchmarks/optimize.py --markdown         # a table to paste into the README

Timing belongs here, not in tests: the script prints numbers and ratios, it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from model_zoo.common import cache_dir  # noqa: E402

log = logging.getLogger("bench.optimize")
CACHE = cache_dir("benchmarks", "optimize")

#: a model source: name -> function writing the ONNX file to the given path
Source = tuple[str, Callable[[Path], None]]


# -- model sources ---------------------------------------------------------------------------------
def torch_onnx_sources() -> Iterator[Source]:
    try:
        import torch

        from model_zoo.pytorch.models import ZOO, build
    except ImportError as exc:
        log.warning("skipping torch.onnx models: %s", exc)
        return
    for name, entry in ZOO.items():
        def export(path: Path, name: str = name, shape: tuple = entry.input_shape) -> None:
            module = build(name)
            x = torch.randn(1, *shape)
            with contextlib.redirect_stderr(io.StringIO()):
                torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=18,
                                  dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False)

        yield f"torch.onnx/{name}", export


def tf2onnx_sources() -> Iterator[Source]:
    try:
        import tensorflow as tf
        import tf2onnx

        from model_zoo.keras.models import BUILDERS
    except ImportError as exc:
        log.warning("skipping tf2onnx models: %s", exc)
        return
    for name, builder in BUILDERS.items():
        def export(path: Path, builder: Callable = builder) -> None:
            model = builder(0)
            spec = [tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=f"in{i}") for i, t in enumerate(model.inputs)]
            fn = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False), input_signature=spec)
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=18)
            onnx.save(proto, str(path))

        yield f"tf2onnx/{name}", export


def portanet_sources() -> Iterator[Source]:
    """Zoo models converted by portanet's importers (as they are before optimization)."""
    import portanet

    def save(model: ir.Model, path: Path) -> None:
        portanet.save(model, path)

    try:
        from model_zoo.caffe.writer import ZOO as CAFFE_ZOO
        from model_zoo.caffe.writer import build as caffe_build

        for name in CAFFE_ZOO:
            if "train" in name:
                continue
            yield f"portanet-caffe/{name}", lambda p, n=name: save(portanet.convert(*caffe_build(n)), p)
    except ImportError as exc:
        log.warning("skipping Caffe zoo: %s", exc)
    try:
        from model_zoo.keras.models import BUILDERS

        for name, builder in BUILDERS.items():
            yield f"portanet-keras/{name}", lambda p, b=builder: save(portanet.convert(b(0), nchw=True), p)
    except ImportError as exc:
        log.warning("skipping Keras zoo: %s", exc)
    try:
        from model_zoo.cntk.nets import NETS
        from model_zoo.cntk.nets import build as cntk_build

        for name in NETS:
            yield f"portanet-cntk/{name}", lambda p, n=name: save(portanet.convert(str(cntk_build(n).path)), p)
    except ImportError as exc:
        log.warning("skipping CNTK zoo: %s", exc)
    try:
        import json

        from model_zoo.mxnet import build as mxnet_build

        zoo_dir = mxnet_build(("zoo", "case_study"))  # needs the .venv-mxnet side environment
        for part in ("zoo", "case_study"):
            for entry in json.loads((zoo_dir / f"manifest-{part}.json").read_text()):
                sym = zoo_dir / f"{entry['name']}-symbol.json"
                shape = ["N", *entry["inputs"]["data"][1:]]
                yield f"portanet-mxnet/{entry['name']}", lambda p, f=sym, s=shape: save(
                    portanet.convert(str(f), input_shapes={"data": s}), p)
    except (ImportError, RuntimeError) as exc:
        log.warning("skipping MXNet zoo: %s", exc)
    try:
        import torch

        from model_zoo.pytorch.models import ZOO, build

        for name, entry in ZOO.items():
            yield f"portanet-pytorch/{name}", lambda p, n=name, s=entry.input_shape: save(
                portanet.convert(build(n), example_inputs=(torch.randn(2, *s),)), p)
    except ImportError as exc:
        log.warning("skipping PyTorch zoo via portanet: %s", exc)


# -- variants ----------------------------------------------------------------------------------------
def variant_portanet(proto: onnx.ModelProto) -> onnx.ModelProto:
    import portanet
    from portanet.optimizer import optimize

    model = ir.serde.deserialize_model(proto)
    if model.opset_imports.get("", 18) < 13:
        from portanet.ir.io import convert_opset

        model = ir.serde.deserialize_model(convert_opset(proto, 18))
    del portanet
    return ir.serde.serialize_model(optimize(model, level=2))


def variant_onnxsim(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    out, ok = onnxsim.simplify(proto)
    if not ok:
        raise RuntimeError("onnxsim check failed")
    return out


def variant_onnxscript(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxscript

    return onnxscript.optimizer.optimize(proto)


VARIANTS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "portanet -O2": variant_portanet,
    "onnxsim": variant_onnxsim,
    "onnxscript": variant_onnxscript,
}


# -- measuring ---------------------------------------------------------------------------------------
def feeds_for(proto: onnx.ModelProto, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    inits = {i.name for i in proto.graph.initializer}
    feeds = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = (rng.standard_normal(dims) if dtype.kind == "f" else rng.integers(0, 4, dims)).astype(dtype)
    return feeds


def session(proto: onnx.ModelProto, optimized: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def init_bytes(proto: onnx.ModelProto) -> int:
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)


def measure(name: str, proto: onnx.ModelProto, runs: int) -> list[dict]:
    """Build every variant, then time them interleaved (round-robin, best of ``runs``), so a
    burst of load on a shared machine hits all variants alike."""
    feeds = feeds_for(proto)
    reference = session(proto, False).run(None, feeds)
    rows, timed = [], []
    for variant, fn in [("original", lambda p: p), *VARIANTS.items()]:
        row = {"model": name, "variant": variant}
        try:
            t0 = time.perf_counter()
            out = fn(onnx.ModelProto.FromString(proto.SerializeToString()))
            row["seconds"] = time.perf_counter() - t0
            row["nodes"] = len(out.graph.node)
            row["bytes"] = init_bytes(out)
            sessions = {key: session(out, key == "ms_on") for key in ("ms_off", "ms_on")}
            names = {i.name for i in sessions["ms_off"].get_inputs()}
            own_feeds = {k: v for k, v in feeds.items() if k in names}  # -O2 drops unused inputs
            got = sessions["ms_off"].run(None, own_feeds)
            row["diff"] = max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                               for a, b in zip(reference, got) if np.asarray(a).size), default=0.0)
            for key, sess in sessions.items():
                for _ in range(3):  # warm-up
                    sess.run(None, own_feeds)
                timed.append((row, key, sess, own_feeds))
                row[key] = float("inf")
        except Exception as exc:  # noqa: BLE001 - a peer failing on a model is a result, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
            log.debug("%s / %s failed\n%s", name, variant, traceback.format_exc())
        rows.append(row)
    for _ in range(runs):
        for row, key, sess, own_feeds in timed:
            t0 = time.perf_counter()
            sess.run(None, own_feeds)
            row[key] = min(row[key], 1000 * (time.perf_counter() - t0))
    return rows


def _zoo_key(name: str) -> str:
    """Hash of the model_zoo sources: cached exports are rebuilt when a builder changes."""
    h = hashlib.sha256()
    zoo = Path(__file__).resolve().parents[1] / "model_zoo"
    for f in sorted(zoo.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:10]


def load_or_build(name: str, build: Callable[[Path], None], rebuild: bool = False) -> onnx.ModelProto:
    path = CACHE / f"{name.replace('/', '__')}-{_zoo_key(name)}.onnx"
    if rebuild or not path.exists():
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        build(tmp)
        os.replace(tmp, path)
        data = tmp.with_name(tmp.name + ".data")
        if data.exists():
            os.replace(data, path.with_name(path.name + ".data"))
    return onnx.load(str(path))


# -- output ------------------------------------------------------------------------------------------
def fmt_row(r: dict, base: dict | None) -> list[str]:
    if "error" in r:
        return [r["model"], r["variant"], "failed", "", "", "", "", r["error"]]
    def ratio(key: str) -> str:
        if base is None or "error" in base or r is base:
            return f"{r[key]:.3f}"
        return f"{r[key]:.3f} ({r[key] / base[key]:.2f}x)"
    return [r["model"], r["variant"], str(r["nodes"]), f"{r['bytes'] / 1024:,.1f}", ratio("ms_off"), ratio("ms_on"),
            f"{r['diff']:.2g}", ""]


HEADER = ["model", "variant", "nodes", "init KiB", "ORT ms (opt off)", "ORT ms (opt on)", "max |diff|", "note"]


def print_table(rows: list[dict], markdown: bool) -> None:
    lines = []
    base = None
    for r in rows:
        if r["variant"] == "original":
            base = r
        lines.append(fmt_row(r, base))
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "|".join("---" for _ in HEADER) + "|")
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Graph optimizers (ratios vs the original model)")
    for h in HEADER:
        table.add_column(h, justify="left" if h in ("model", "variant", "note") else "right")
    for line in lines:
        table.add_row(*line)
    Console(width=200).print(table)


def summary(rows: list[dict]) -> None:
    by_model: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["variant"]] = r
    worse = []
    for model, variants in by_model.items():
        ours, sim = variants.get("portanet -O2"), variants.get("onnxsim")
        if ours and sim and "error" not in ours and "error" not in sim and ours["nodes"] > sim["nodes"]:
            worse.append(f"{model}: portanet {ours['nodes']} > onnxsim {sim['nodes']}")
    print(f"\n{len(by_model)} models; portanet -O2 has more nodes than onnxsim on {len(worse)}")
    for w in worse:
        print("  " + w)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="only models whose name contains this text")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (best of, interleaved)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--rebuild", action="store_true", help="export/convert again instead of using the cache")
    parser.add_argument("--no-portanet-importers", action="store_true", help="only torch.onnx and tf2onnx exports")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for noisy in ("tensorflow", "tf2onnx", "absl", "onnxscript", "portanet"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    sources = [*torch_onnx_sources(), *tf2onnx_sources()]
    if not args.no_portanet_importers:
        sources += list(portanet_sources())
    rows: list[dict] = []
    for name, build in sources:
        if args.models not in name:
            continue
        try:
            proto = load_or_build(name, build, args.rebuild)
        except Exception as exc:  # noqa: BLE001 - a zoo model that does not build is reported and skipped
            print(f"skip {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}",
                  file=sys.stderr)
            continue
        rows += measure(name, proto, args.runs)
        print(f"measured {name}", file=sys.stderr)
    print_table(rows, args.markdown)
    summary(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
