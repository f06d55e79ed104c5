"""``nn.RNN`` (tanh / relu, layers, bidirectional, batch_first, with and without an initial
state) converts to ONNX ``RNN`` nodes with a symbolic time axis: one conversion, then several
sequence lengths and batch sizes on ONNX Runtime and on the torch backend, against the eager
PyTorch module (the reference)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

import portanet  # noqa: E402
from portanet.runtime.session import Session  # noqa: E402
from tests.tolerance import parity_bound  # noqa: E402

FEATURES, HIDDEN = 4, 5

#: name -> nn.RNN keyword arguments and whether the model takes the initial state as an input
CASES = {
    "tanh_2layer_bidir_batch_first": (dict(num_layers=2, bidirectional=True, batch_first=True), False),
    "relu_time_major_h0": (dict(nonlinearity="relu"), True),
    "tanh_no_bias_bidir_h0": (dict(bidirectional=True, bias=False, num_layers=2), True),
    "relu_3layer_bidir_batch_first_h0": (dict(nonlinearity="relu", num_layers=3, bidirectional=True,
                                              batch_first=True), True),
}


class Net(torch.nn.Module):
    def __init__(self, kwargs: dict, with_h0: bool) -> None:
        super().__init__()
        self.rnn = torch.nn.RNN(FEATURES, HIDDEN, **kwargs)
        self.with_h0 = with_h0

    def forward(self, x, h0=None):
        y, h = self.rnn(x, h0) if self.with_h0 else self.rnn(x)
        return y, h


def _inputs(net: Net, batch: int, steps: int, rng: np.random.Generator) -> list[np.ndarray]:
    rnn = net.rnn
    shape = (batch, steps, FEATURES) if rnn.batch_first else (steps, batch, FEATURES)
    arrays = [rng.standard_normal(shape).astype(np.float32)]
    if net.with_h0:
        dirs = 2 if rnn.bidirectional else 1
        arrays.append(rng.standard_normal((rnn.num_layers * dirs, batch, HIDDEN)).astype(np.float32))
    return arrays


@pytest.fixture(scope="module")
def converted():
    """name -> (eager module, converted IR), each converted once (traced at T=5, batch 2)."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            torch.manual_seed(0)
            kwargs, with_h0 = CASES[name]
            net = Net(kwargs, with_h0).eval()
            example = tuple(torch.from_numpy(a) for a in _inputs(net, 2, 5, np.random.default_rng(0)))
            cache[name] = (net, portanet.convert(net, example_inputs=example))
        return cache[name]

    return get



@pytest.mark.parametrize("name", sorted(CASES))
def test_rnn_nodes_with_a_symbolic_time_axis(converted, name: str) -> None:
    net, model = converted(name)
    ops = [n.op_type for n in model.graph]
    assert ops.count("RNN") == net.rnn.num_layers, ops  # one node per layer, not one cell per step
    x = model.graph.inputs[0]
    dims = [d if isinstance(d, int) else str(d) for d in x.shape]
    assert dims == (["N", "T", FEATURES] if net.rnn.batch_first else ["T", "N", FEATURES])
    # the RNN nodes name the module they came from; the module is left as it was
    assert all(n.metadata_props.get("portanet.source") == "rnn" for n in model.graph if n.op_type == "RNN")
    assert "forward" not in net.rnn.__dict__


@pytest.mark.parametrize("backend", ["ort", "torch"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_parity_lengths_and_batches(converted, name: str, backend: str) -> None:
    net, model = converted(name)
    sess = Session(model, backend=backend)
    names = [v.name for v in model.graph.inputs if not v.is_initializer()]
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        for steps in (2, 7, 13):
            arrays = _inputs(net, batch, steps, rng)
            with torch.no_grad():
                refs = [r.numpy() for r in net(*[torch.from_numpy(a) for a in arrays])]
            got = list(sess.run(dict(zip(names, arrays))).values())
            assert len(got) == 2
            for what, g, r in zip(("output", "h_n"), got, refs):
                assert g.shape == r.shape, (what, batch, steps, g.shape, r.shape)
                err = float(np.abs(g - r).max())
                assert err <= parity_bound(r), f"{name} {backend} {what} batch {batch} T {steps}: {err:.3g}"



def test_verify_and_bisect_through_rnn(converted) -> None:
    """verify compares the converted nn.RNN with the eager module at lengths other than the
    traced one; a damaged RNN node (tanh turned into relu) is located at the ``rnn`` module."""
    net, model = converted("tanh_2layer_bidir_batch_first")
    report = portanet.verify(net, onnx=model, shapes=[{"x": [1, 3, FEATURES]}, {"x": [3, 11, FEATURES]}],
                             backends=["ort", "torch"])
    assert report.passed, report
    bad = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    node = next(n for n in bad.graph if n.op_type == "RNN")
    node.attributes["activations"] = ir.AttrStrings("activations", ["Relu", "Relu"])
    report = portanet.verify(net, onnx=bad, shapes=[{"x": [2, 6, FEATURES]}], backends=["torch"], bisect=True)
    assert not report.passed
    assert report.bisect is not None and report.bisect.layer == "rnn", report.bisect


def test_every_conversion_in_a_process_keeps_the_time_axis() -> None:
    """Converting the same recurrent model again, after eager runs in between, keeps the
    symbolic time axis (torch's exporter left a cached per-step decomposition of aten::lstm /
    aten::gru behind, which pinned T on every conversion after the first)."""

    class Mixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)
            self.gru = torch.nn.GRU(HIDDEN, HIDDEN, batch_first=True)
            self.rnn = torch.nn.RNN(HIDDEN, HIDDEN, batch_first=True)

        def forward(self, x):
            return self.rnn(self.gru(self.lstm(x)[0])[0])[0]

    net = Mixed().eval()
    x = torch.randn(2, 5, FEATURES)
    for _ in range(2):
        with torch.no_grad():
            net(x)
        model = portanet.convert(net, example_inputs=(x,))
        dims = [d if isinstance(d, int) else str(d) for d in model.graph.inputs[0].shape]
        assert dims == ["N", "T", FEATURES]
        assert {"LSTM", "GRU", "RNN"} <= {n.op_type for n in model.graph}
