"""PyTorch recurrent layers and TorchScript control flow, against eager PyTorch.

One conversion per model; each converted model then runs on ONNX Runtime and on the torch
backend at batch 1 and 3 and at sequence lengths other than the traced one (the time axis
is symbolic). The reference is the eager PyTorch module (the scripted module for
TorchScript).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import portanet  # noqa: E402
from portanet.errors import UnsupportedOpError  # noqa: E402
from portanet.runtime.session import Session  # noqa: E402
from tests.tolerance import parity_bound  # noqa: E402

FEATURES = 6


class Lstm2Bi(torch.nn.Module):
    """2-layer bidirectional batch-first LSTM (dropout between layers, inactive in eval) + head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(FEATURES, 8, num_layers=2, bidirectional=True, batch_first=True, dropout=0.3)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.head(y[:, -1]), h, c


class GruTimeMajor(torch.nn.Module):
    """2-layer time-major GRU without biases, taking its initial state as an input."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(FEATURES, 5, num_layers=2, bias=False)

    def forward(self, x, h0):
        y, h = self.rnn(x, h0)
        return y, h


class LstmProj(torch.nn.Module):
    """A batch-first LSTM with a projection of the hidden state (proj_size): torch's exporter
    writes an ONNX LSTM without the projection (ONNX Runtime rejects it), so it is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.LSTM(FEATURES, 7, batch_first=True, proj_size=3)

    def forward(self, x):
        return self.rnn(x)[0]


class Scripted(torch.nn.Module):
    """Data-dependent control flow torch.export cannot trace: an ``if`` on the input's values
    and a loop over the time axis, around an LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(FEATURES, FEATURES)
        self.lstm = torch.nn.LSTM(FEATURES, 4, batch_first=True)

    def forward(self, x):
        if bool(x.mean() > 0):
            y = self.inp(x)
        else:
            y = torch.tanh(x) * 2.0
        acc = torch.zeros_like(y[:, 0])
        for t in range(y.shape[1]):
            acc = acc * 0.5 + y[:, t]
        out, _ = self.lstm(y + acc.unsqueeze(1))
        return out


def _inputs(name: str, batch: int, steps: int, rng: np.random.Generator, sign: float = 1.0) -> list[np.ndarray]:
    if name == "gru_time_major":
        return [rng.standard_normal((steps, batch, FEATURES)).astype(np.float32),
                rng.standard_normal((2, batch, 5)).astype(np.float32)]
    x = rng.standard_normal((batch, steps, FEATURES)).astype(np.float32)
    if name == "scripted":
        x = np.abs(x) * sign  # the sign picks the branch of the scripted if
    return [x]


MODELS = {"lstm_2bi": Lstm2Bi, "gru_time_major": GruTimeMajor, "scripted": Scripted}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (reference module, converted IR); each converted once. The scripted model goes
    through a TorchScript archive with a ``.jit`` suffix (detected by content)."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name in cache:
            return cache[name]
        torch.manual_seed(0)
        module = MODELS[name]().eval()
        rng = np.random.default_rng(0)
        example = tuple(torch.from_numpy(a) for a in _inputs(name, 2, 5, rng))
        if name == "scripted":
            path = tmp_path_factory.mktemp("ts") / "model.jit"
            torch.jit.script(module).save(str(path))
            module = torch.jit.load(str(path)).eval()
            model = portanet.convert(str(path), input_shapes={"x": ["N", "T", FEATURES]})
        else:
            model = portanet.convert(module, example_inputs=example)
        cache[name] = (module, model)
        return cache[name]

    return get



CELLS = [(b, t) for b in (1, 3) for t in (2, 9)]


@pytest.mark.parametrize("backend", ["ort", "torch"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_parity_batches_and_lengths(converted, name: str, backend: str) -> None:
    module, model = converted(name)
    sess = Session(model, backend=backend)
    names = [v.name for v in model.graph.inputs if not v.is_initializer()]
    rng = np.random.default_rng(1)
    for batch, steps in CELLS:
        for sign in ((1.0, -1.0) if name == "scripted" else (1.0,)):
            arrays = _inputs(name, batch, steps, rng, sign)
            with torch.no_grad():
                ref = module(*[torch.from_numpy(a) for a in arrays])
            refs = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
            got = list(sess.run(dict(zip(names, arrays))).values())
            assert len(got) == len(refs)
            for g, r in zip(got, refs):
                assert g.shape == r.shape, (batch, steps, g.shape, r.shape)
                err = float(np.abs(g - r).max())
                assert err <= parity_bound(r), f"{name} {backend} batch {batch} T {steps}: {err:.3g}"


def test_time_axis_is_symbolic(converted) -> None:
    for name in ("lstm_2bi", "gru_time_major", "scripted"):
        _, model = converted(name)
        x = model.graph.inputs[0]
        dims = [d if isinstance(d, int) else str(d) for d in x.shape]
        assert dims == (["T", "N", FEATURES] if name == "gru_time_major" else ["N", "T", FEATURES]), (name, dims)


def test_scripted_control_flow_is_kept_as_if_and_loop(converted) -> None:
    _, model = converted("scripted")
    ops = {n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph)}
    assert {"If", "Loop", "LSTM"} <= ops
    # the converted file is valid ONNX that ORT loads
    ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"])


def test_lstm_projection_refused_in_one_error() -> None:
    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = LstmProj(), LstmProj()

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(UnsupportedOpError) as info:
        portanet.convert(Two().eval(), example_inputs=(torch.randn(2, 4, FEATURES),))
    msg = str(info.value)
    assert "LSTM(proj_size>0)" in msg and "a.rnn" in msg and "b.rnn" in msg


def test_torchscript_detected_by_content(tmp_path) -> None:
    from portanet.converters.registry import detect

    path = tmp_path / "vad.jit"
    torch.jit.script(Scripted().eval()).save(str(path))
    assert detect([path]).name == "pytorch"
