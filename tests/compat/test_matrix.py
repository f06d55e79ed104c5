"""The compatibility matrix: every zoo model of every importer (and the ONNX importer's test
models), converted as ``portanet convert`` does, saved at output opsets 13, 15, 17, 18 and
21, loaded by every consumer and run at batch 1 and 3 (where the batch is symbolic).

Consumers: ONNX Runtime, the ONNX reference evaluator (small models), portanet's torch
backend, OpenCV DNN 4.x, OpenVINO (f32) and tract, the last three through portanet's
backends (which hand them the file as ``save_onnx`` writes it). Each cell must match ONNX
Runtime on the opset-18 file within 1e-5 + 1e-4 * max|ref|. Cells listed in
``tests/compat/limits.py`` must fail (the README shows that list); no other cell may.

Large models (``models.Source.large``, the ImageNet-sized zoo nets) are written at opsets 13
and 18 only, run in ONNX Runtime at both and in the other consumers at 18, to keep ``make test``
within minutes (the op types they add over the small models are few; every op's conversion
is exercised by the small models at every opset). ``PORTANET_COMPAT_FULL=1`` runs every cell
for them too.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.compat.conftest import FULL, LARGE_OPSETS, OPSETS, REFERENCE_OPSET, Converted
from tests.compat.limits import limit_for
from tests.compat.models import SOURCES, Source

CONSUMERS = ("ort", "reference", "torch", "opencv", "openvino", "tract")
#: consumer -> module it needs (an optional extra)
NEEDS = {"torch": "torch", "opencv": "cv2", "openvino": "openvino", "tract": "tract"}


def cell_opsets(source: Source, consumer: str) -> tuple[int, ...]:
    if not source.large or FULL:
        return OPSETS
    return LARGE_OPSETS if consumer == "ort" else (REFERENCE_OPSET,)


def _requires(source: Source, consumer: str) -> None:
    if consumer in NEEDS:
        pytest.importorskip(NEEDS[consumer], reason=f"{consumer} runtime not installed")
    if source.importer == "mxnet":
        from model_zoo import mxnet as mxzoo

        if mxzoo.mxnet_python() is None:
            pytest.skip("the mxnet side environment is missing (make mxnet-env builds the MXNet zoo)")
    if source.importer in ("keras",) or source.id == "onnx-tf2onnx_export":
        pytest.importorskip("tensorflow", reason="TensorFlow (portanet[tf]) not installed")
    if source.importer == "pytorch" or source.id == "onnx-torch_export":
        pytest.importorskip("torch", reason="PyTorch (portanet[torch]) not installed")


class _Runner:
    """One consumer loaded with one file; ``run(feeds) -> {output: array}``."""

    def __init__(self, consumer: str, path) -> None:
        if consumer == "reference":
            import onnx
            from onnx.reference import ReferenceEvaluator

            proto = onnx.load(str(path))
            self._names = [o.name for o in proto.graph.output]
            self._ref = ReferenceEvaluator(proto)
            self._session = None
        else:
            from portanet.runtime.session import Session

            self._session = Session(path, backend=consumer)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is not None:
            return self._session.run(feeds)
        return dict(zip(self._names, self._ref.run(None, feeds)))


def _compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str | None:
    """None if every output matches, else what differs."""
    for name, want in ref.items():
        if name not in got:
            return f"output '{name}' missing"
        g = np.asarray(got[name])
        if g.shape != want.shape:
            return f"output '{name}': shape {list(g.shape)}, expected {list(want.shape)}"
        if want.dtype.kind not in "fc":
            if not np.array_equal(g, want):
                return f"output '{name}': values differ"
            continue
        err = float(np.max(np.abs(g.astype(np.float64) - want))) if want.size else 0.0
        tol = 1e-5 + 1e-4 * (float(np.max(np.abs(want))) if want.size else 0.0)
        if not err <= tol:
            return f"output '{name}': max |err| {err:.3g} > {tol:.3g}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _ops(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def run_cells(conv: Converted, consumer: str) -> dict[tuple[int, int], str | None]:
    """(opset, batch) -> None (match) or the failure, for every cell of this row."""
    out: dict[tuple[int, int], str | None] = {}
    for opset in cell_opsets(conv.source, consumer):
        if opset in conv.errors:
            for b in conv.batches:
                out[opset, b] = f"not written at opset {opset}: {conv.errors[opset]}"
            continue
        try:
            runner = _Runner(consumer, conv.paths[opset])
        except Exception as exc:  # noqa: BLE001 - any consumer error is the cell's result
            for b in conv.batches:
                out[opset, b] = f"load: {_first_line(exc)}"
            continue
        for b in conv.batches:
            try:
                out[opset, b] = _compare(runner.run(conv.feeds(b)), conv.reference(b))
            except Exception as exc:  # noqa: BLE001
                out[opset, b] = f"run: {_first_line(exc)}"
    return out


@pytest.mark.parametrize("consumer", CONSUMERS)
@pytest.mark.parametrize("source_id", sorted(SOURCES))
def test_matrix_row(source_id: str, consumer: str, compat_files) -> None:
    source = SOURCES[source_id]
    if consumer == "reference" and source.large:
        pytest.skip("the ONNX reference evaluator runs the small models only (pure numpy: minutes per large model)")
    _requires(source, consumer)
    cells = run_cells(compat_files(source_id), consumer)
    unexpected, stale = [], []
    conv = compat_files(source_id)
    ops = {o: _ops(p) for o, p in conv.paths.items()}
    for (opset, batch), failure in sorted(cells.items()):
        known = limit_for(consumer, source_id, opset, batch, ops.get(opset, set()))
        if failure and not known:
            unexpected.append(f"opset {opset} batch {batch}: {failure}")
        elif known and not failure:
            stale.append(f"opset {opset} batch {batch} passes although listed as a limitation ({known.reason})")
    assert not unexpected and not stale, "\n".join(unexpected + stale)
