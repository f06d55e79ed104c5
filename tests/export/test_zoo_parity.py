"""Every zoo model of every importer exported and run beside ONNX Runtime.

Reference: ONNX Runtime on the converted IR (an independent runtime), at batch 1 and 3 on
seeded inputs; the exports run in fresh processes that never import portanet (one process
per framework for all cells, so torch and TensorFlow start once). Tolerance: |got - ref| <=
1e-5 + 1e-4 * max|ref| (pytorch, torchscript, pt2, keras, savedmodel), 1e-4 * max|ref| for
float32 TFLite.

Cost control (the whole file should stay near two minutes): every zoo model goes to the two
targets the others derive from — pytorch (torchscript and pt2 compile that generated module)
and keras (savedmodel and tflite convert that Keras model); three models exercising the
interface (Caffe case-study CNN, the PyTorch U-Net, the two-input three-output Keras net) go to
all six. ``PORTANET_EXPORT_FULL=1`` runs every model on every target, plus more zoo models
(``ZOO_EXTRA``).
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
from tests.export.conftest import ZOO, ZOO_EXTRA, zoo_ir

TARGETS = ("pytorch", "torchscript", "pt2", "keras", "savedmodel", "tflite")
SUFFIX = {"pytorch": ".py", "torchscript": ".pt", "pt2": ".pt2", "keras": ".keras", "savedmodel": "",
          "tflite": ".tflite"}
#: every target: one model per importer family that exercises the interface (multi-input and
#: multi-output Keras net, the U-Net's ConvTranspose/Resize/Concat, Caffe's case-study CNN)
SMALL = {"caffe-case_study", "pytorch-small_unet", "keras-two_input_shared"}
FAST = {"pytorch", "keras"}
FULL = os.environ.get("PORTANET_EXPORT_FULL") == "1"

MODELS = [*ZOO, *(ZOO_EXTRA if FULL else [])]
CELLS = [(m, t) for m in MODELS for t in TARGETS if FULL or m in SMALL or t in FAST]
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
        try:
            outs = run_children([(a, child_feeds(g, a, sets), None) for _m, _t, g, sets, _r, a in family])
        except portanet.errors.PortanetError as exc:  # the process itself died: every cell reports it
            for model, tgt, *_ in family:
                _results[(model, tgt)] = exc
            continue
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
