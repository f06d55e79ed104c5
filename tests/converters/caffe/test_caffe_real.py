"""Real BVLC Caffe 1.0 (built by ``make caffe-env``, run as a subprocess) as the reference:
forward parity of zoo nets, a layer's own output for bisection, and ``verify --train`` (loss and
every learnable parameter's gradient against Caffe's backward)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import portanet
from portanet.converters.registry import convert_paths
from portanet.errors import InvalidInputError
from portanet.parity.runners import caffe as runner
from portanet.runtime.session import Session

pytestmark = pytest.mark.caffe


@pytest.mark.parametrize("name", ["lenet_v1", "misc", "squeezenet"])
def test_zoo_net_matches_real_caffe(real_caffe, zoo, name):
    proto, weights = zoo(name)
    assert runner.describe([proto, weights]).startswith("BVLC Caffe")
    model = convert_paths([proto, weights])
    session = Session(model)
    feeds = session.random_feeds(batch=2, seed=5)
    outputs = [v.name for v in model.graph.outputs]
    ref = runner.run_reference([proto, weights], feeds, options={"output_names": outputs})
    for name_, arr in session.run(feeds).items():
        np.testing.assert_allclose(arr, ref[name_], rtol=1e-4, atol=1e-5, err_msg=name_)


def test_in_place_layers_give_their_own_output(real_caffe, zoo):
    """res2a (Eltwise) and res2a_relu write the same blob in place: each requested layer's
    output is its own, read from an equivalent net where in-place layers write fresh blobs."""
    proto, weights = zoo("resnet")
    feeds = {"data": np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    ref = runner.run_caffe([proto, weights], feeds, layers=["res2a", "res2a_relu"])
    assert (ref["res2a"] < 0).any()
    np.testing.assert_array_equal(ref["res2a_relu"], np.maximum(ref["res2a"], 0))


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_verify_train_matches_real_caffe_gradients(real_caffe, zoo, name):
    proto, weights = zoo(name)
    report = portanet.verify(proto, weights, train=True, backends=["ort"])
    assert report.tools["reference"].startswith("BVLC Caffe")
    g = report.gradients
    assert report.passed, report.summary()
    assert not g.unmatched
    # every learnable blob: LeNet's 4 layers x (weight, bias); the ResNet's convolutions (no bias),
    # Scale (gamma, beta) pairs and the classifier; BatchNorm statistics are not learned
    assert len(g.params) == {"lenet": 8, "resnet": 38}[name]
    assert abs(g.loss_source - g.loss_ir) <= 1e-5 * abs(g.loss_source)


def test_nets_with_layers_caffe_lacks_run_in_opencv(real_caffe, zoo):
    proto, weights = zoo("face_ssd")
    assert runner.describe([proto, weights]).startswith("OpenCV DNN")
    lenet = zoo("lenet")
    assert runner.describe(list(lenet), {"caffe_reference": "opencv"}).startswith("OpenCV DNN")


def test_train_without_real_caffe_says_how_to_get_it(zoo, monkeypatch):
    monkeypatch.setattr(runner, "caffe_python", lambda: None)
    proto, weights = zoo("lenet")
    with pytest.raises(InvalidInputError, match="needs real Caffe"):
        portanet.verify(proto, weights, train=True, backends=["ort"])


# -------------------------------------------------------------- which python runs real Caffe
REPO = Path(__file__).resolve().parents[3]


def _imports_pycaffe(path: list[str]) -> bool:
    """Whether this interpreter with ``path`` as sys.path really imports pycaffe's extension."""
    code = f"import sys; sys.path[:] = {path!r}; import caffe._caffe"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "GLOG_minloglevel": "2"})
    return proc.returncode == 0


def test_a_folder_named_caffe_on_sys_path_is_not_pycaffe(tmp_path, monkeypatch):
    """Regression: pytest puts tests/converters on sys.path (for tests/converters/test_plugins.py),
    where ``import caffe`` finds the test folder tests/converters/caffe as a namespace package. The
    runner took that for pycaffe, ran its probe with the test interpreter, which has no Caffe, and
    every later real-Caffe test of the whole-suite run skipped as "not built". The reference is
    whether the interpreter really imports pycaffe with that path."""
    monkeypatch.delenv("PORTANET_CAFFE_PYTHON", raising=False)
    models = tmp_path / "models" / "caffe"  # a user's folder of Caffe models in the working directory
    models.mkdir(parents=True)
    (models / "deploy.prototxt").write_text('name: "n"\n')
    package = tmp_path / "package" / "caffe"  # a regular package named caffe without the _caffe extension
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for folder in [REPO / "tests" / "converters", models.parent, package.parent]:
        with monkeypatch.context() as m:
            m.syspath_prepend(str(folder))
            m.delitem(sys.modules, "caffe", raising=False)
            here = runner.caffe_python() == Path(sys.executable)
            assert here == _imports_pycaffe(list(sys.path)), folder


def test_an_importable_pycaffe_runs_in_this_interpreter(real_caffe, monkeypatch):
    # the built pycaffe's own folder put on this interpreter's path (found, not imported)
    proc = subprocess.run([str(real_caffe), "-c", "import caffe, os; print(os.path.dirname(caffe.__path__[0]))"],
                          capture_output=True, text=True, env={**os.environ, "GLOG_minloglevel": "2"}, check=True)
    monkeypatch.delenv("PORTANET_CAFFE_PYTHON", raising=False)
    monkeypatch.syspath_prepend(proc.stdout.strip().splitlines()[-1])
    monkeypatch.delitem(sys.modules, "caffe", raising=False)
    assert runner.caffe_python() == Path(sys.executable)


def test_a_caffe_that_does_not_start_fails_the_real_caffe_tests(tmp_path):
    """A real Caffe that is named (or built) but does not start turns the real-Caffe tests into
    failures naming the reason, not into skips."""
    env = {**os.environ, "PORTANET_CAFFE_PYTHON": sys.executable}  # an interpreter without Caffe
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         f"{Path(__file__)}::test_in_place_layers_give_their_own_output"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "does not start" in proc.stdout and "No module named 'caffe'" in proc.stdout, proc.stdout[-2000:]
    assert "skipped" not in proc.stdout.splitlines()[-1]
