"""Keras ResNet50: portanet's conversion vs tf2onnx's ``from_function`` on the same model, and
ONNX Runtime latency of both outputs, in one run. Prints times and ratios (no assertions).

    python benchmarks/keras_convert.py [--size 224] [--runs 30] [--threads 2] [--whole-process-only]
                                       [--process-runs 2]

First, whole processes from a saved ``resnet50.keras``: ``portanet convert resnet50.keras``
(the CLI: the file's config and HDF5 weights, no Keras, TensorFlow or torch) vs a process
that loads the file in Keras on TensorFlow and converts it with tf2onnx ``from_function``
— wall time, peak resident memory and CPU time of each process (best of ``--process-runs``
alternating runs), and their ratios (targets <= 0.1x and <= 0.15x). Then, in this process:
conversion time of the in-memory model and ONNX Runtime latency of both outputs.

Target: portanet converts >= 5x faster and its output runs no slower than tf2onnx's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def _session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def _latencies(sessions: list[tuple[object, str]], x: np.ndarray, runs: int) -> tuple[list[float], list[np.ndarray]]:
    """Median ONNX Runtime latency (ms) of each session; runs are interleaved (A, B, A, B, ...)
    so that load from other processes hits both alike."""
    outs = []
    for sess, name in sessions:
        for _ in range(3):  # warm-up
            out = sess.run(None, {name: x})[0]
        outs.append(out)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, (sess, name) in enumerate(sessions):
            t = time.perf_counter()
            sess.run(None, {name: x})
            times[i].append((time.perf_counter() - t) * 1e3)
    return [statistics.median(ts) for ts in times], outs


_TF2ONNX_CHILD = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, tensorflow as tf, tf2onnx
src, out = sys.argv[1:3]
model = keras.saving.load_model(src, compile=False)
shape = tuple(model.inputs[0].shape)
spec = [tf.TensorSpec(shape, tf.float32, name="input_layer")]
fn = tf.function(lambda inp: model(inp, training=False))
proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=18)
with open(out, "wb") as f:
    f.write(proto.SerializeToString())
"""

_SAVE_CHILD = r"""
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, sys.argv[3])
import keras
from model_zoo.keras.models import randomize_batchnorm
keras.utils.set_random_seed(0)
size = int(sys.argv[2])
randomize_batchnorm(keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))).save(sys.argv[1])
"""


def _measure(cmd: list[str]) -> tuple[float, float, float]:
    """Wall time (s), peak resident memory (MB) and CPU time (s, user + system) of one child process."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
    return wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime  # maxrss: KiB on Linux


def whole_process(size: int, runs: int) -> None:
    """`portanet convert resnet50.keras` vs tf2onnx from_function, each a whole fresh process
    (run before this process imports anything large, so the children's peak RSS is their own).
    Each is run ``runs`` times, alternately; the best wall time of each is compared (on a
    shared machine other processes only ever add time), with the CPU time of that run."""
    import compileall
    import tempfile

    repo = str(Path(__file__).resolve().parents[1])
    # byte-compiled like an installed package (an editable checkout run with
    # PYTHONDONTWRITEBYTECODE would recompile portanet in every process; TensorFlow's are)
    compileall.compile_dir(str(Path(repo) / "portanet"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        src = str(Path(tmp) / "resnet50.keras")
        _measure([sys.executable, "-c", _SAVE_CHILD, src, str(size), repo])
        p_runs, t_runs = [], []
        for _ in range(runs):
            p_runs.append(_measure([sys.executable, "-m", "portanet.cli", "convert", src, "-o",
                                    str(Path(tmp) / "p.onnx")]))
            t_runs.append(_measure([sys.executable, "-c", _TF2ONNX_CHILD, src, str(Path(tmp) / "t.onnx")]))
    (p_wall, p_mem, p_cpu), (t_wall, t_mem, t_cpu) = min(p_runs), min(t_runs)
    print(f"Whole process, resnet50.keras ({size}x{size}) -> ONNX, best of {runs} runs each")
    print(f"  portanet convert (CLI)     : {p_wall:7.2f} s  peak {p_mem:7.0f} MB  cpu {p_cpu:6.2f} s   "
          f"(all runs: {', '.join(f'{r[0]:.2f}' for r in p_runs)} s)")
    print(f"  tf2onnx from_function      : {t_wall:7.2f} s  peak {t_mem:7.0f} MB  cpu {t_cpu:6.2f} s   "
          f"(all runs: {', '.join(f'{r[0]:.2f}' for r in t_runs)} s)")
    print(f"  ratio portanet / tf2onnx   : wall {p_wall / t_wall:5.2f}x (target <= 0.1x), "
          f"peak memory {p_mem / t_mem:5.2f}x (target <= 0.15x), cpu {p_cpu / t_cpu:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224, help="input height/width")
    ap.add_argument("--runs", type=int, default=30, help="timed ORT runs per model")
    ap.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    ap.add_argument("--repeat", type=int, default=3, help="portanet conversions timed (best of)")
    ap.add_argument("--whole-process-only", action="store_true", help="only the whole-process comparison")
    ap.add_argument("--process-runs", type=int, default=2, help="runs of each whole process (best of)")
    args = ap.parse_args()
    whole_process(args.size, args.process_runs)
    if args.whole_process_only:
        return

    import keras
    import onnx_ir as ir
    import tensorflow as tf
    import tf2onnx

    import portanet
    from model_zoo.keras.models import randomize_batchnorm

    keras.utils.set_random_seed(0)
    model = randomize_batchnorm(keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3)))
    x = np.random.default_rng(0).standard_normal((1, args.size, args.size, 3)).astype(np.float32)
    ref = np.asarray(model(x, training=False))

    # portanet: walk the layer graph -> IR -> ONNX bytes (serialization counted: tf2onnx returns a proto)
    p_times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        ir_model = portanet.convert(model)
        p_bytes = ir.serde.serialize_model(ir_model).SerializeToString()
        p_times.append(time.perf_counter() - t)
    p_conv = min(p_times)

    # tf2onnx: from_function on the same model (its Keras path is broken under Keras 3)
    spec = [tf.TensorSpec((None, args.size, args.size, 3), tf.float32, name="input_layer")]
    fn = tf.function(lambda inp: model(inp, training=False))
    t = time.perf_counter()
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=18)
    t_bytes = proto.SerializeToString()
    t_conv = time.perf_counter() - t

    p_in = ir_model.graph.inputs[0].name
    t_in = proto.graph.input[0].name
    # portanet's inference build: the -O2 optimizer pipeline (what `portanet convert -O 2` writes)
    t = time.perf_counter()
    opt_model = portanet.optimize(portanet.convert(model), level=2)
    o_time = time.perf_counter() - t
    o_bytes = ir.serde.serialize_model(opt_model).SerializeToString()
    (p_lat, t_lat, o_lat), (p_out, t_out, o_out) = _latencies(
        [(_session(p_bytes, args.threads), p_in), (_session(t_bytes, args.threads), t_in),
         (_session(o_bytes, args.threads), opt_model.graph.inputs[0].name)], x, args.runs)

    p_nodes = sum(1 for _ in ir_model.graph)
    t_transposes = sum(n.op_type == "Transpose" for n in proto.graph.node)
    p_transposes = sum(n.op_type == "Transpose" for n in ir_model.graph)
    print(f"ResNet50 {args.size}x{args.size}, batch 1, ORT CPU {args.threads} threads, {args.runs} interleaved runs")
    print(f"  portanet convert : {p_conv:8.3f} s   ({p_nodes} nodes, {p_transposes} Transpose)")
    print(f"  tf2onnx  convert : {t_conv:8.3f} s   ({len(proto.graph.node)} nodes, {t_transposes} Transpose)")
    print(f"  conversion speed-up (tf2onnx / portanet): {t_conv / p_conv:6.1f}x   (target >= 5x)")
    print(f"  ORT latency portanet : {p_lat:8.2f} ms")
    print(f"  ORT latency tf2onnx  : {t_lat:8.2f} ms")
    print(f"  ORT latency portanet -O2 : {o_lat:8.2f} ms   (convert + optimize {o_time:.3f} s, "
          f"{sum(1 for _ in opt_model.graph)} nodes)")
    print(f"  latency ratio (tf2onnx / portanet): {t_lat / p_lat:6.2f}x, with -O2: {t_lat / o_lat:6.2f}x   "
          "(target >= 1.0: no slower)")
    print(f"  max |portanet - Keras| = {np.max(np.abs(p_out - ref)):.3g}, "
          f"max |tf2onnx - Keras| = {np.max(np.abs(t_out - ref)):.3g}, "
          f"max |portanet -O2 - Keras| = {np.max(np.abs(o_out - ref)):.3g}")


if __name__ == "__main__":
    main()
