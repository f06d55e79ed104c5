"""Seed models per reader and the fuzz campaign loop (used by the tests and runnable alone).

``python -m tests.fuzz.campaign [cases-per-target] [seed] [target ...]`` runs a larger campaign
and prints every distinct bug with one reproducing (target, seed, case) triple.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# as the test suite (tests/conftest.py) and the CLI run TensorFlow: without its start-up banner
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from model_zoo.common import build_lock, cache_dir, cached  # noqa: E402
from tests.fuzz import mutators as M  # noqa: E402
from tests.fuzz.harness import Outcome, convert_case  # noqa: E402


@dataclass
class Target:
    """One reader under fuzz: seed files, which of them is mutated, and how."""

    name: str
    #: builds the seed files (role -> path); cached
    seed: Callable[[], dict[str, Path]]
    #: role of the file that is mutated
    role: str
    mutate: Callable[[random.Random, bytes], bytes]
    #: roles passed to convert, in order
    order: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    framework: str | None = None


# --------------------------------------------------------------------------------- seeds
@functools.cache
def caffe_seed() -> dict[str, Path]:
    from model_zoo.caffe.writer import build

    proto, model = build("lenet")
    return {"prototxt": proto, "caffemodel": model}


@functools.cache
def mxnet_seed() -> dict[str, Path]:
    from model_zoo import mxnet as mxzoo

    folder = mxzoo.build(("case_study",))
    return {"symbol": folder / "mnist_cnn-symbol.json", "params": folder / "mnist_cnn-0000.params"}


@functools.cache
def cntk_seed() -> dict[str, Path]:
    """The zoo's CNTK convnet, copied once (the writer's byte order varies between processes)."""
    from model_zoo.cntk.nets import build

    path = cached(cache_dir("fuzz", "cntk") / "convnet.model", lambda tmp: shutil.copyfile(build("convnet").path, tmp))
    return {"model": path}


@functools.cache
def onnx_seed() -> dict[str, Path]:
    """LeNet converted from Caffe by portanet: one self-contained file and one with external data."""
    from portanet.converters.registry import convert_paths
    from portanet.ir.io import save_onnx

    folder = cache_dir("fuzz", "onnx")
    inline, ext = folder / "lenet.onnx", folder / "ext" / "lenet.onnx"
    if not inline.exists() or not ext.exists():
        with build_lock(inline):  # parallel test workers: one writes, the others wait
            if not inline.exists() or not ext.exists():
                seed = caffe_seed()
                model = convert_paths([seed["prototxt"], seed["caffemodel"]])
                ext.parent.mkdir(exist_ok=True)
                save_onnx(model, ext, external_data=True)
                save_onnx(model, inline)
    return {"onnx": inline, "ext_onnx": ext, "ext_data": ext.with_name("lenet.onnx.data")}


@functools.cache
def keras_seed() -> dict[str, Path]:
    from model_zoo.keras.models import save_model

    return {"keras": save_model("case_study_cnn", ".keras"), "h5": save_model("case_study_cnn", ".h5")}


@functools.cache
def torch_seed() -> dict[str, Path]:
    import torch

    from model_zoo.pytorch.models import build, save_pt2

    ts = cached(cache_dir("fuzz", "pytorch") / "case_study_cnn.pt",
                lambda tmp: torch.jit.trace(build("case_study_cnn"), torch.randn(2, 1, 28, 28)).save(str(tmp)))
    return {"pt2": save_pt2("case_study_cnn"), "torchscript": ts}


def _zip_member_mutators() -> dict[str, Callable]:
    return {".json": M.mutate_json, ".h5": M.mutate_bytes, ".pkl": M.mutate_bytes}


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("caffe-prototxt", caffe_seed, "prototxt", M.mutate_text, ("prototxt", "caffemodel")),
    Target("caffe-caffemodel", caffe_seed, "caffemodel", M.mutate_protobuf, ("prototxt", "caffemodel")),
    Target("mxnet-json", mxnet_seed, "symbol", M.mutate_json, ("symbol", "params"),
           {"input_shapes": {"data": [1, 1, 28, 28]}}),
    Target("mxnet-params", mxnet_seed, "params", M.mutate_params, ("symbol", "params"),
           {"input_shapes": {"data": [1, 1, 28, 28]}}),
    Target("cntk", cntk_seed, "model", M.mutate_protobuf, ("model",)),
    Target("onnx", onnx_seed, "onnx", M.mutate_protobuf, ("onnx",)),
    Target("onnx-external", onnx_seed, "ext_onnx", M.mutate_protobuf, ("ext_onnx",)),
    Target("onnx-external-data", onnx_seed, "ext_data", M.mutate_bytes, ("ext_onnx",)),
    Target("keras", keras_seed, "keras", lambda r, d: M.mutate_zip(r, d, _zip_member_mutators()), ("keras",)),
    Target("keras-h5", keras_seed, "h5", M.mutate_bytes, ("h5",)),
    Target("pt2", torch_seed, "pt2", lambda r, d: M.mutate_zip(r, d, _zip_member_mutators()), ("pt2",)),
    Target("torchscript", torch_seed, "torchscript", lambda r, d: M.mutate_zip(r, d, _zip_member_mutators()),
           ("torchscript",), {"input_shapes": {"": [2, 1, 28, 28]}}),
]}


def make_case(target: Target, seed: int, case: int, folder: Path) -> list[Path]:
    """Copy the seed files into ``folder`` with the target's file mutated (deterministic)."""
    seeds = target.seed()
    rng = random.Random(f"{target.name}/{seed}/{case}")
    paths: dict[str, Path] = {}
    roles = [*target.order, *(["ext_data"] if "ext_onnx" in target.order else [])]
    for role in roles:
        src = seeds[role]
        dst = folder / src.name
        data = src.read_bytes()
        if role == target.role:
            data = target.mutate(rng, data)
        dst.write_bytes(data)
        paths[role] = dst
    return [paths[r] for r in target.order]


def run_target(target: Target, n: int, seed: int = 0, *, on_bug: Callable | None = None) -> dict[str, int]:
    """Run ``n`` cases; returns counts per outcome kind and calls ``on_bug(case, outcome)``."""
    counts = {"ok": 0, "error": 0, "bug": 0}
    for case in range(n):
        with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
            folder = Path(tmp)
            paths = make_case(target, seed, case, folder)
            out = folder / "out" / "converted.onnx"
            out.parent.mkdir()
            res: Outcome = convert_case(paths, out, framework=target.framework, **target.options)
            counts[res.kind] += 1
            if res.kind == "bug" and on_bug is not None:
                on_bug(case, res)
    return counts


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 100
    seed = int(argv[1]) if len(argv) > 1 else 0
    names = argv[2:] or list(TARGETS)
    bugs: dict[str, list[tuple[str, int]]] = {}
    total = {"ok": 0, "error": 0, "bug": 0}
    for name in names:
        t0 = time.time()

        def on_bug(case: int, res: Outcome, name: str = name) -> None:
            key = res.message.splitlines()[0][:160] + (" [noise]" if res.noise else "")
            bugs.setdefault(key, []).append((name, case))
            if len(bugs[key]) == 1:
                print(f"  BUG {name} case {case}: {res}", flush=True)

        counts = run_target(TARGETS[name], n, seed, on_bug=on_bug)
        for k, v in counts.items():
            total[k] += v
        print(f"{name}: {counts} in {time.time() - t0:.1f} s", flush=True)
    print(f"total: {total}; {len(bugs)} distinct bugs")
    for key, where in sorted(bugs.items(), key=lambda kv: -len(kv[1])):
        print(f"{len(where):4d} x {key}  e.g. {where[0]}")
    shutil.rmtree(cache_dir("fuzz", "tmp"), ignore_errors=True)
    return 1 if total["bug"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
