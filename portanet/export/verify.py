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
threads = int(spec["threads"])


def torch_runner(kind, path, taps, captured):
    import torch
    torch.set_num_threads(threads)
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
    want = {int(t["key"]): t["var"] for t in taps or []}
    real = os.path.realpath(path)

    def tracer(frame, event, arg):
        # records the local each tapped line of the generated forward assigns
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
            if want:
                sys.settrace(tracer)
            try:
                out = model(*args)
            finally:
                sys.settrace(None)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().numpy() for o in out]
    return run


def tf_runner(kind, path, taps, names):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if kind == "keras":
        import keras
        model = keras.saving.load_model(path)
        if taps:
            model = keras.Model(model.inputs, [model.get_layer(t["key"]).output for t in taps])
        run_model = lambda feeds: model(feeds if len(feeds) > 1 else feeds[0], training=False)
    elif kind == "savedmodel":
        loaded = tf.saved_model.load(path)
        run_model = lambda feeds: loaded.serve([tf.constant(f) for f in feeds] if len(feeds) > 1
                                               else tf.constant(feeds[0]))
    else:
        interp = tf.lite.Interpreter(model_path=path, num_threads=threads)
        # the serving signature names inputs after the Keras inputs and outputs output_0, output_1, ...
        runner = interp.get_signature_runner()

        def run_model(feeds):
            out = runner(**dict(zip(names, feeds)))
            return [out[k] for k in sorted(out, key=lambda k: int(k.rsplit("_", 1)[-1]))]

    def run(feeds):
        out = run_model(feeds)
        out = list(out.values()) if isinstance(out, dict) else out
        out = out if isinstance(out, (tuple, list)) else [out]
        return [np.asarray(o) for o in out]
    return run


def run_job(job):
    kind, path, taps = job["runner"], job["path"], job.get("taps")
    data = np.load(job["inputs"])
    captured = {}
    if kind in ("pytorch", "torchscript", "pt2"):
        run = torch_runner(kind, path, taps, captured)
    else:
        run = tf_runner(kind, path, taps, job["input_names"])
    results = {}
    for s in range(job["sets"]):
        feeds = [data[f"{s}_{k}"] for k in range(job["n_inputs"])]
        outs = run(feeds)
        if taps and kind == "keras":
            for t, o in zip(taps, outs):
                results[f"tap_{t['key']}"] = o
            break
        for j, o in enumerate(outs):
            results[f"{s}_{j}"] = o
        if taps:
            for k, v in captured.items():
                results[f"tap_{k}"] = v
            break
    return results


for job in spec["jobs"]:
    try:
        results = run_job(job)
    except Exception as exc:  # one export failing must not hide the others' results
        results = {"__error__": np.array(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")}
    np.savez(job["outputs"], **results)
if "portanet" in sys.modules:
    raise SystemExit("the exported model imported portanet")
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
              threads: int = 1, timeout: float = 900) -> dict[str, np.ndarray]:
    """Run ``artifact`` in a fresh interpreter (cwd outside the project; portanet not imported)."""
    return run_children([(artifact, feed_sets, taps)], threads=threads, timeout=timeout)[0]


def run_children(jobs: list[tuple[Artifact, list[list[np.ndarray]], list[dict] | None]], threads: int = 1,
                 timeout: float = 900) -> list[dict[str, np.ndarray]]:
    """Run several artifacts in one fresh interpreter (one framework start-up for all)."""
    with tempfile.TemporaryDirectory(prefix="portanet-check-") as tmp:
        specs = []
        for i, (artifact, feed_sets, taps) in enumerate(jobs):
            inputs = Path(tmp) / f"inputs{i}.npz"
            arrays = {f"{s}_{k}": a for s, feeds in enumerate(feed_sets) for k, a in enumerate(feeds)}
            np.savez(inputs, **arrays)
            specs.append({"runner": artifact.runner, "path": str(Path(artifact.path).resolve()),
                          "inputs": str(inputs), "outputs": str(Path(tmp) / f"outputs{i}.npz"),
                          "sets": len(feed_sets), "n_inputs": len(feed_sets[0]), "taps": taps,
                          "input_names": artifact.input_names})
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
        spec = {"jobs": specs, "threads": threads}
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
            names = ", ".join(str(a.path) for a, _, _ in jobs)
            raise RuntimeBackendError(f"{names}: running the export failed: {tail[0]}")
        out = []
        for sp in specs:
            with np.load(sp["outputs"]) as z:
                out.append({k: z[k] for k in z.files})
        return out


def _to_ir(arr: np.ndarray, perm: list[int] | None) -> np.ndarray:
    """Undo an interface permutation (export = ir.transpose(perm))."""
    if perm is None:
        return arr
    return arr.transpose(np.argsort(perm))


def _from_ir(arr: np.ndarray, perm: list[int] | None) -> np.ndarray:
    return arr if perm is None else np.ascontiguousarray(arr.transpose(perm))


def reference(g: ExportGraph, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Seeded feed sets (batch 1 and 3) and ONNX Runtime's outputs on them."""
    from portanet.runtime.session import Session

    sets = _feeds(g, seed)
    session = Session(g.model, backend="ort")
    return sets, [session.run(feeds) for feeds in sets]


def child_feeds(g: ExportGraph, artifact: Artifact, sets: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    names = [v.name or "" for v in g.inputs]
    perms = artifact.input_perms or [None] * len(names)
    return [[_from_ir(feeds[n], p) for n, p in zip(names, perms)] for feeds in sets]


def compare_outputs(g: ExportGraph, artifact: Artifact, sets: list[dict[str, np.ndarray]],
                    refs: list[dict[str, np.ndarray]], got: dict[str, np.ndarray], atol: float,
                    rtol: float) -> ExportCheck:
    """|export - ort| <= atol + rtol * max|ort| per output, over every feed set."""
    out_perms = artifact.output_perms or [None] * len(g.outputs)
    check = ExportCheck(artifact.target, True, batches=[int(next(iter(s.values())).shape[0]) for s in sets])
    if "__error__" in got:
        check.passed, check.detail = False, f"running the export failed: {got['__error__']}"
        return check
    for s, ref in enumerate(refs):
        for j, v in enumerate(g.outputs):
            name = v.name or f"output{j}"
            want = np.asarray(ref[v.name or ""])
            entry = check.outputs.setdefault(name, {"max_abs_err": 0.0, "allowed": 0.0, "max_abs_ref": 0.0})
            if f"{s}_{j}" not in got:
                check.passed, check.detail = False, f"the export returned no output {j}"
                entry["max_abs_err"] = float("inf")
                continue
            have = _to_ir(got[f"{s}_{j}"], out_perms[j])
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
    return check


def check_export(g: ExportGraph, artifact: Artifact, *, atol: float = 1e-5, rtol: float = 1e-4,
                 seed: int = 0, threads: int = 1) -> ExportCheck:
    """Compare ``artifact`` with ONNX Runtime on seeded inputs at batch 1 and 3 (see module doc)."""
    sets, refs = reference(g, seed)
    got = run_child(artifact, child_feeds(g, artifact, sets), threads=threads)
    if "__error__" in got:
        raise RuntimeBackendError(f"{artifact.path}: running the {artifact.target} export failed: {got['__error__']}")
    check = compare_outputs(g, artifact, sets, refs, got, atol, rtol)
    if not check.passed:
        bisect_export(g, artifact, sets[0], check, atol, rtol, threads)
    return check


def bisect_export(g: ExportGraph, artifact: Artifact, feeds: dict[str, np.ndarray], check: ExportCheck,
            atol: float, rtol: float, threads: int) -> None:
    """Fill ``check.layer`` with the source layer of the first tapped IR value that diverges."""
    from portanet.parity.bisect import run_with_outputs

    art = artifact if artifact.taps else artifact.bisect_with
    if art is None or not art.taps:
        return
    try:
        got = run_child(art, child_feeds(g, art, [feeds]), taps=art.taps, threads=threads)
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


__all__ = ["ExportCheck", "bisect_export", "check_export", "compare_outputs", "raise_on_failure", "reference",
           "run_child", "run_children"]
