"""Every zoo model of every importer exported and run beside ONNX Runtime.

Reference: ONNX Runtime on the converted IR (an independent runtime), at batch 1 and 3 on
seeded inputs; the exports run in fresh processes that never import portanet (one process
per framework for all cells, so torch and TensorFlow start once). Tolerance: |got - ref| <=
1e-5 + 1e-4 * max|ref| (pytorch, torchscript, pt2, keras, savedmodel), 1e-4 * max|ref| for
float32 TFLite.

Cost control: the small models (case-study CNNs, LeNet, U-Net, the multi-input and
multi-output nets) go to every target; the large ones (ResNet, MobileNet, SqueezeNet,
DenseNet, Inception, CaffeNet) to the targets that are quick to write — pytorch and keras —
because torchscript/pt2 compile that same generated module and savedmodel/tflite convert
that same Keras model. ``PORTANET_EXPORT_FULL=1`` runs the whole matrix.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

import portanet
import portanet.errors
from portanet.export.graph import ExportGraph
from portanet.export.registry import get_target
from portanet.export.verify import child_feeds, compare_outputs, reference, run_children
from tests.export.conftest import ZOO, zoo_ir

TARGETS = ("pytorch", "torchscript", "pt2", "keras", "savedmodel", "tflite")
SUFFIX = {"pytorch": ".py", "torchscript": ".pt", "pt2": ".pt2", "keras": ".keras", "savedmodel": "",
          "tflite": ".tflite"}
SMALL = {"caffe-case_study", "caffe-lenet", "caffe-misc", "pytorch-case_study_cnn", "pytorch-small_unet",
         "keras-case_study_cnn", "keras-two_input_shared", "cntk-convnet", "mxnet-case_study"}
FAST = {"pytorch", "keras"}
FULL = os.environ.get("PORTANET_EXPORT_FULL") == "1"

CELLS = [(m, t) for m in ZOO for t in TARGETS if FULL or m in SMALL or t in FAST]
_FAMILY = {"pytorch": "torch", "torchscript": "torch", "pt2": "torch"}

_results: dict[tuple[str, str], object] = {}


def _run_all(folder: Path) -> None:
    """Export every cell, then check each framework family in one fresh process."""
    jobs: dict[str, list] = defaultdict(list)
    graphs: dict[str, tuple] = {}
    for model, tgt in CELLS:
        try:
            ir_model = zoo_ir(model)
        except pytest.skip.Exception as exc:
            _results[(model, tgt)] = exc
            continue
        if model not in graphs:
            g = ExportGraph(ir_model)
            graphs[model] = (g, *reference(g, seed=0))
        g, sets, refs = graphs[model]
        path = folder / f"{model}-{tgt}{SUFFIX[tgt]}"
        try:
            result = portanet.export(g.model, to=tgt, path=path, verify=False, opt_level=0)
        except portanet.errors.PortanetError as exc:
            _results[(model, tgt)] = exc
            continue
        jobs[_FAMILY.get(tgt, "tf")].append((model, tgt, g, sets, refs, result.artifact))
    for family in jobs.values():
        outs = run_children([(a, child_feeds(g, a, sets), None) for _m, _t, g, sets, _r, a in family])
        for (model, tgt, g, sets, refs, art), got in zip(family, outs):
            t = get_target(tgt)
            _results[(model, tgt)] = compare_outputs(g, art, sets, refs, got, t.atol, t.rtol)


@pytest.mark.parametrize(("model", "target"), CELLS, ids=[f"{m}-{t}" for m, t in CELLS])
def test_export_matches_onnx_runtime(model: str, target: str, export_dir: Path) -> None:
    if not _results:
        _run_all(export_dir)
    res = _results[(model, target)]
    if isinstance(res, pytest.skip.Exception):
        pytest.skip(str(res))
    assert not isinstance(res, Exception), f"{model} -> {target}: {res}"
    assert res.passed, f"{model} -> {target}: {res.outputs} {res.detail}"
