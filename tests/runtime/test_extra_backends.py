"""The openvino, opencv and tract backends: the real runtimes against ONNX Runtime (the
reference, a different runtime) on a converted Caffe LeNet and a two-input, two-output
graph, at several batch sizes through one session; install hints; CLI side-by-side runs."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from portanet.cli import cli
from portanet.errors import MissingDependencyError, RuntimeBackendError
from portanet.runtime import Session

#: backend -> module it needs
EXTRA = {"openvino": "openvino", "opencv": "cv2", "tract": "tract"}


def _needs(backend: str) -> None:
    pytest.importorskip(EXTRA[backend], reason=f"{EXTRA[backend]} (portanet[{backend}]) not installed")


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert float(np.max(np.abs(got - ref))) <= 1e-5 + 1e-4 * float(np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def lenet():
    from model_zoo.caffe.writer import build
    from portanet.converters.registry import ConvertOptions, convert_paths

    return convert_paths(list(build("lenet")), ConvertOptions())


def _two_io():
    """(a, b) -> (relu(a @ W) + b, sum over axis 1 of a): two inputs, two outputs."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["a", "w"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Add", ["r", "b"], ["y"]),
        helper.make_node("ReduceSum", ["a", "ax"], ["s"], keepdims=0),
    ]
    g = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 6]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N"])],
        initializer=[w, numpy_helper.from_array(np.array([1], np.int64), "ax")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("backend", sorted(EXTRA))
def test_backend_matches_ort_at_every_batch(lenet, backend):
    _needs(backend)
    ref, sess = Session(lenet), Session(lenet, backend=backend)
    for batch in (1, 3, 1):  # a new batch re-plans; going back reuses the first plan
        feeds = ref.random_feeds(batch=batch, seed=batch)
        want = ref.run(feeds)
        got = sess.run(feeds)
        assert set(got) == set(want)
        for k in want:
            _close(got[k], want[k])


@pytest.mark.parametrize("backend", sorted(EXTRA))
def test_backend_two_inputs_two_outputs(backend):
    _needs(backend)
    model = _two_io()
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((3, 6)).astype(np.float32), "b": rng.standard_normal((3, 4)).astype(np.float32)}
    want = Session(model).run(feeds)
    sess = Session(model, backend=backend)
    got = sess.run(feeds)
    for k in ("y", "s"):
        _close(got[k], want[k])
    only = sess.run(feeds, output_names=["s"])
    assert list(only) == ["s"]


def test_openvino_runs_at_f32(lenet):
    """OpenVINO's CPU default may be bf16 (errors ~1e-2); the backend pins f32."""
    _needs("openvino")
    sess = Session(lenet, backend="openvino")
    compiled = sess._backend._compiled_for(Session(lenet).random_feeds(batch=2))
    assert "float32" in str(compiled.get_property("INFERENCE_PRECISION_HINT"))


@pytest.mark.parametrize("backend", sorted(EXTRA))
def test_missing_runtime_names_the_extra(lenet, backend, monkeypatch):
    monkeypatch.setitem(sys.modules, EXTRA[backend], None)  # import of it now fails
    extra = "caffe-ref" if backend == "opencv" else backend
    with pytest.raises(MissingDependencyError, match=rf"pip install 'portanet\[{extra}\]'"):
        Session(lenet, backend=backend)


@pytest.mark.parametrize("backend", sorted(EXTRA))
def test_cuda_is_refused(lenet, backend):
    _needs(backend)
    with pytest.raises(RuntimeBackendError, match="cpu only"):
        Session(lenet, backend=backend, device="cuda")


def test_cli_run_side_by_side(lenet, tmp_path):
    for b in EXTRA:
        _needs(b)
    from portanet.ir.io import save_onnx

    path = save_onnx(lenet, tmp_path / "lenet.onnx")
    r = CliRunner().invoke(cli, ["run", str(path), "--backends", "ort,openvino,opencv,tract", "--batch", "3"])
    assert r.exit_code == 0, r.output
    for b in ("ort", "openvino", "opencv", "tract"):
        assert f"on {b}/cpu" in r.output
    assert r.output.count("vs ort") == 3
    bad = CliRunner().invoke(cli, ["run", str(path), "--backends", "ort,nope"])
    assert bad.exit_code == 2 and "unknown backend 'nope'" in bad.output


def test_verify_compares_every_backend_with_the_source():
    """portanet.verify on a Caffe LeNet (reference: real Caffe or OpenCV's Caffe importer)
    with the three runtimes as backends: each passes."""
    for b in EXTRA:
        _needs(b)
    import portanet
    from model_zoo.caffe.writer import build

    report = portanet.verify(*build("lenet"), backends=["ort", "openvino", "opencv", "tract"])
    assert report.passed
    assert {r.backend for r in report.results} == {"ort", "openvino", "opencv", "tract"}
