"""The export check: run the exported model in a fresh Python process that never imports
portanet, beside ONNX Runtime on the IR, on seeded inputs.

The parent (portanet) computes ONNX Runtime's outputs and writes the inputs to an ``.npz``;
the child script below loads the export with its own framework only (``torch``,
``keras``, ``tensorflow``), runs it and writes its outputs back. Layout permutations of
the export's interface (channels-last Keras) are undone by the parent. On a mismatch the
child runs again and returns intermediate values (lines of the generated ``forward``, or
Keras layers), which the parent compares with ONNX Runtime's values of the same IR values
in topological order: the first one out of tolerance names the divergent source layer.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from portanet.errors import ParityError, RuntimeBackendError
from portanet.export.graph import ExportGraph
from portanet.export.registry import Artifact

log = logging.getLogger(__name__)

_CHILD = r'''
import json, os, sys
import numpy as np

spec = json.loads(sys.argv[1])
kind, path = spec["runner"], spec["path"]
data = np.load(spec["inputs"])
taps = spec.get("taps")

if kind in ("pytorch", "torchscript", "pt2"):
    import torch
    torch.set_num_threads(int(spec["threads"]))
    if kind == "pytorch":
        import importlib.util
        mspec = importlib.util.spec_from_file_location("exported_net", path)
        mod = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(mod)
        model = mod.load()
    elif kind == "torchscript":
        model = torch.jit.load(path).eval()
    else:
        model = torch.export.load(path).module()
    captured = {}
    if taps:
        want = {int(t["key"]): t["var"] for t in taps}
        real = os.path.realpath(path)

        def tracer(frame, event, arg):
            if frame.f_code.co_name != "forward" or os.path.realpath(frame.f_code.co_filename) != real:
                return None
            prev = [None]

            def local(frame, event, arg):
                line = prev[0]
                if line in want and want[line] in frame.f_locals:
                    val = frame.f_locals[want[line]]
                    if isinstance(val, torch.Tensor):
                        captured[str(line)] = val.detach().numpy().copy()
                prev[0] = frame.f_lineno if event == "line" else None
                return local
            return local

    def run(feeds):
        with torch.no_grad():
            args = [torch.from_numpy(f) for f in feeds]
            if taps:
                sys.settrace(tracer)
            try:
                out = model(*args)
            finally:
                sys.settrace(None)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().numpy() for o in out]
elif kind in ("keras", "savedmodel"):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(spec["threads"]))
    import keras
    if kind == "keras":
        model = keras.saving.load_model(path)
        if taps:
            model = keras.Model(model.inputs, [model.get_layer(t["key"]).output for t in taps])
        run_model = lambda feeds: model(feeds if len(feeds) > 1 else feeds[0], training=False)
    else:
        loaded = tf.saved_model.load(path)
        run_model = lambda feeds: loaded.serve(*[tf.constant(f) for f in feeds])

    def run(feeds):
        out = run_model(feeds)
        out = list(out.values()) if isinstance(out, dict) else out
        out = out if isinstance(out, (tuple, list)) else [out]
        return [np.asarray(o) for o in out]
else:  # tflite
    import tensorflow as tf
    interp = tf.lite.Interpreter(model_path=path, num_threads=int(spec["threads"]))

    def run(feeds):
        ins = interp.get_input_details()
        for d, f in zip(ins, feeds):
            interp.resize_tensor_input(d["index"], list(f.shape))
        interp.allocate_tensors()
        for d, f in zip(interp.get_input_details(), feeds):
            interp.set_tensor(d["index"], f)
        interp.invoke()
        return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]

results = {}
for s in range(spec["sets"]):
    feeds = [data[f"{s}_{k}"] for k in range(spec["n_inputs"])]
    outs = run(feeds)
    for j, o in enumerate(outs):
        results[f"{s}_{j}"] = o
    if taps:
        if kind in ("keras", "savedmodel"):
            for t, o in zip(taps, outs):
                results[f"tap_{t['key']}"] = o
        else:
            for k, v in captured.items():
                results[f"tap_{k}"] = v
        break
if "portanet" in sys.modules:
    raise SystemExit("the exported model imported portanet")
np.savez(spec["outputs"], **results)
'''


@dataclass
class ExportCheck:
    """Parity of an export with ONNX Runtime."""

    target: str
    passed: bool
    #: per output: max |export - ort|, allowed error, max |ort|
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    layer: str | None = None
    layer_type: str | None = None
    detail: str = ""

    @property
    def max_error(self) -> float:
        return max((o["max_abs_err"] for o in self.outputs.values()), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "passed": self.passed, "outputs": self.outputs, "batches": self.batches,
                "layer": self.layer, "layer_type": self.layer_type}


def _feeds(g: ExportGraph, seed: int) -> list[dict[str, np.ndarray]]:
    from portanet.parity.inputs import random_feed_sets

    return [fs.feeds for fs in random_feed_sets(g.model, None, seed=seed, batches=(1, 3))]


def run_child(artifact: Artifact, feed_sets: list[list[np.ndarray]], taps: list[dict] | None = None,
              threads: int = 1, timeout: float = 600) -> dict[str, np.ndarray]:
    """Run ``artifact`` in a fresh interpreter (cwd outside the project; portanet not imported)."""
    with tempfile.TemporaryDirectory(prefix="portanet-check-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        outputs = Path(tmp) / "outputs.npz"
        arrays = {f"{s}_{k}": a for s, feeds in enumerate(feed_sets) for k, a in enumerate(feeds)}
        np.savez(inputs, **arrays)
        spec = {"runner": artifact.runner, "path": str(Path(artifact.path).resolve()), "inputs": str(inputs),
                "outputs": str(outputs), "sets": len(feed_sets), "n_inputs": len(feed_sets[0]),
                "threads": threads, "taps": taps}
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
            raise RuntimeBackendError(f"{artifact.path}: running the {artifact.target} export failed: {tail[0]}")
        with np.load(outputs) as z:
            return {k: z[k] for k in z.files}


def _to_ir(arr: np.ndarray, perm: list[int] | None) -> np.ndarray:
    """Undo an interface permutation (export = ir.transpose(perm))."""
    if perm is None:
        return arr
    return arr.transpose(np.argsort(perm))


def _from_ir(arr: np.ndarray, perm: list[int] | None) -> np.ndarray:
    return arr if perm is None else np.ascontiguousarray(arr.transpose(perm))


def check_export(g: ExportGraph, artifact: Artifact, *, atol: float = 1e-5, rtol: float = 1e-4,
                 seed: int = 0, threads: int = 1) -> ExportCheck:
    """Compare ``artifact`` with ONNX Runtime on seeded inputs at batch 1 and 3 (see module doc)."""
    from portanet.runtime.session import Session

    sets = _feeds(g, seed)
    names = [v.name or "" for v in g.inputs]
    in_perms = artifact.input_perms or [None] * len(names)
    out_perms = artifact.output_perms or [None] * len(g.outputs)
    session = Session(g.model, backend="ort")
    refs = [session.run(feeds) for feeds in sets]
    child = [[_from_ir(feeds[n], p) for n, p in zip(names, in_perms)] for feeds in sets]
    got = run_child(artifact, child, threads=threads)
    check = ExportCheck(artifact.target, True, batches=[int(next(iter(s.values())).shape[0]) for s in sets])
    for s, ref in enumerate(refs):
        for j, v in enumerate(g.outputs):
            name = v.name or f"output{j}"
            want = np.asarray(ref[v.name or ""])
            have = _to_ir(got[f"{s}_{j}"], out_perms[j])
            entry = check.outputs.setdefault(name, {"max_abs_err": 0.0, "allowed": 0.0, "max_abs_ref": 0.0})
            if have.shape != want.shape:
                check.passed = False
                check.detail = f"output {name}: shape {list(have.shape)}, ONNX Runtime {list(want.shape)}"
                entry["max_abs_err"] = float("inf")
                continue
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            err = float(np.max(np.abs(have.astype(np.float64) - want))) if want.size else 0.0
            allowed = atol + rtol * scale
            entry["max_abs_err"] = max(entry["max_abs_err"], err)
            entry["max_abs_ref"] = max(entry["max_abs_ref"], scale)
            entry["allowed"] = max(entry["allowed"], allowed)
            if not err <= allowed:
                check.passed = False
    if not check.passed:
        _bisect(g, artifact, sets[0], check, atol, rtol, threads)
    return check


def _bisect(g: ExportGraph, artifact: Artifact, feeds: dict[str, np.ndarray], check: ExportCheck,
            atol: float, rtol: float, threads: int) -> None:
    """Fill ``check.layer`` with the first tapped IR value that diverges."""
    from portanet.parity.bisect import run_with_outputs

    art = artifact if artifact.taps else artifact.bisect_with
    if art is None or not art.taps:
        return
    names = [v.name or "" for v in g.inputs]
    in_perms = art.input_perms or [None] * len(names)
    try:
        got = run_child(art, [[_from_ir(feeds[n], p) for n, p in zip(names, in_perms)]], taps=art.taps,
                        threads=threads)
    except RuntimeBackendError as exc:
        log.warning("bisection run failed: %s", exc)
        return
    values = {v.name: v for node in g.graph for v in node.outputs if v.name}
    taps = [t for t in art.taps if t["value"] in values and f"tap_{t['key']}" in got]
    ref = run_with_outputs(g.model, "ort", feeds, [values[t["value"]] for t in taps])
    for t in taps:
        want = np.asarray(ref[t["value"]])
        have = _to_ir(got[f"tap_{t['key']}"], t.get("perm"))
        bad = have.shape != want.shape
        if not bad and want.size:
            err = float(np.max(np.abs(have.astype(np.float64) - want)))
            bad = not err <= atol + rtol * float(np.max(np.abs(want)))
        if bad:
            node = values[t["value"]].producer()
            if node is not None:
                from portanet.ir.provenance import source_of

                src = source_of(node)
                check.layer = src[0] if src else (node.name or node.op_type)
                check.layer_type = src[1] if src else node.op_type
            return


def raise_on_failure(check: ExportCheck, path: Path) -> None:
    """ParityError (exit 3) naming the worst output and the first divergent layer."""
    if check.passed:
        return
    worst = max(check.outputs.items(), key=lambda kv: kv[1]["max_abs_err"] - kv[1]["allowed"])
    where = f"; first divergent layer '{check.layer}' ({check.layer_type})" if check.layer else ""
    detail = check.detail or (f"output '{worst[0]}' differs by {worst[1]['max_abs_err']:.3g} "
                              f"(allowed {worst[1]['allowed']:.3g})")
    raise ParityError(f"{path}: {check.target} export does not match ONNX Runtime: {detail}{where}")


__all__ = ["ExportCheck", "check_export", "raise_on_failure", "run_child"]
