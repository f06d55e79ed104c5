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

IMPORTERS = sorted({m.split("-")[0] for m, _ in CELLS})


def _check_importer(importer: str, folder: Path) -> dict[tuple[str, str], object]:
    """Export every cell of ``importer``'s models, then check each framework family in one
    fresh process; (model, target) -> ExportCheck, or the error / skip that stopped it."""
    results: dict[tuple[str, str], object] = {}
    jobs: dict[str, list] = defaultdict(list)
    graphs: dict[str, tuple] = {}
    for model, tgt in CELLS:
        if not model.startswith(importer + "-"):
            continue
        try:
            ir_model = zoo_ir(model)
        except pytest.skip.Exception as exc:
            results[(model, tgt)] = exc
            continue
        if model not in graphs:
            g = ExportGraph(ir_model)
            graphs[model] = (g, *reference(g, seed=0))
        g, sets, refs = graphs[model]
        path = folder / f"{model}-{tgt}{SUFFIX[tgt]}"
        try:
            result = portanet.export(g.model, to=tgt, path=path, verify=False, opt_level=0)
        except portanet.errors.PortanetError as exc:
            results[(model, tgt)] = exc
            continue
        jobs[_FAMILY.get(tgt, "tf")].append((model, tgt, g, sets, refs, result.artifact))
    for family in jobs.values():
        try:
            outs = run_children([(a, child_feeds(g, a, sets), None) for _m, _t, g, sets, _r, a in family])
        except portanet.errors.PortanetError as exc:  # the process itself died: every cell reports it
            for model, tgt, *_ in family:
                results[(model, tgt)] = exc
            continue
        for (model, tgt, g, sets, refs, art), got in zip(family, outs):
            t = get_target(tgt)
            results[(model, tgt)] = compare_outputs(g, art, sets, refs, got, t.atol, t.rtol)
    return results


@pytest.mark.parametrize("importer", IMPORTERS)
def test_zoo_exports_match_onnx_runtime(importer: str, tmp_path: Path) -> None:
    """One test per importer (its models x their targets), so parallel workers share nothing."""
    results = _check_importer(importer, tmp_path)
    skipped = {k: v for k, v in results.items() if isinstance(v, pytest.skip.Exception)}
    if skipped and len(skipped) == len(results):
        pytest.skip(str(next(iter(skipped.values()))))
    bad = []
    for (model, tgt), res in sorted(results.items()):
        if isinstance(res, Exception):
            bad.append(f"{model} -> {tgt}: {res}")
        elif not res.passed:
            bad.append(f"{model} -> {tgt}: {res.detail or res.outputs}")
    checked = [k for k, v in results.items() if not isinstance(v, Exception)]
    assert not bad, "\n".join(bad)
    assert len(checked) == len([c for c in CELLS if c[0].startswith(importer + "-")])
