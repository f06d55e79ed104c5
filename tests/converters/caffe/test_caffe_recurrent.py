"""Caffe LSTM and RNN layers (``cont`` sequence continuation, ``expose_hidden``, static input).

References: real BVLC Caffe where it is built (``test_matches_real_caffe``) and a numpy
recurrence written here from Caffe's documented semantics (the comments
of ``LSTMLayer::FillUnrolledNet`` / ``RNNLayer::FillUnrolledNet`` and ``LSTMUnitLayer``):
``h_conted = cont_t * h_{t-1}``, gates ``i f o g`` from ``W_hc h_conted + W_xc x_t + b_c``,
``c_t = cont_t * f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``; RNN
``h_t = tanh(W_hh h_conted + W_xh x_t + b_h)``, top ``o_t = tanh(W_ho h_t + b_o)``.
The converted models run on ONNX Runtime and on the torch backend, at several sequence lengths
from one conversion and at batch 1 and 3.
"""

from __future__ import annotations

import numpy as np
import pytest

from portanet.converters.registry import ConvertOptions, convert_paths
from portanet.runtime.session import Session

T, N, F, H, S = 6, 3, 4, 5, 2  # steps, batch, features, hidden units, static features
#: sequence lengths run through one conversion (declared T = 6 in its prototxt) and batch sizes
#: (Caffe's Input shape fixes the batch: one conversion per batch size)
STEPS, BATCHES = (1, 4, 9), (1, 3)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_lstm(x, cont, w_x, b, w_h, x_static=None, w_s=None, h0=None, c0=None):
    steps, batch = x.shape[:2]
    x = x.reshape(steps, batch, -1).astype(np.float64)
    h = np.zeros((batch, H)) if h0 is None else h0[0].astype(np.float64)
    c = np.zeros((batch, H)) if c0 is None else c0[0].astype(np.float64)
    out = []
    for t in range(steps):
        ct = cont[t][:, None]
        g = x[t] @ w_x.T + b + (ct * h) @ w_h.T
        if x_static is not None:
            g = g + x_static.reshape(batch, -1) @ w_s.T
        i, f, o, gg = np.split(g, 4, axis=1)
        c = ct * (_sig(f) * c) + _sig(i) * np.tanh(gg)
        h = _sig(o) * np.tanh(c)
        out.append(h)
    return np.stack(out), h[None], c[None]


def ref_rnn(x, cont, w_x, b, w_h, w_o, b_o, x_static=None, w_s=None, h0=None):
    steps, batch = x.shape[:2]
    x = x.reshape(steps, batch, -1).astype(np.float64)
    h = np.zeros((batch, H)) if h0 is None else h0[0].astype(np.float64)
    out = []
    for t in range(steps):
        pre = x[t] @ w_x.T + b + (cont[t][:, None] * h) @ w_h.T
        if x_static is not None:
            pre = pre + x_static.reshape(batch, -1) @ w_s.T
        h = np.tanh(pre)
        out.append(np.tanh(h @ w_o.T + b_o))
    return np.stack(out), h[None]


def _cont(steps: int, batch: int) -> np.ndarray:
    cont = np.ones((steps, batch), np.float32)
    cont[0] = 0  # every sequence starts at t = 0 ...
    if steps > 3 and batch > 1:
        cont[3, 1] = 0  # ... and sample 1 starts a new sequence at t = 3
    if steps > 2:
        cont[2, -1] = 0.5  # a non-binary value: Caffe scales the state by it
    return cont


# (id, layer type, static input, expose_hidden)
CASES = [("lstm", "LSTM", False, False), ("lstm_static_exposed", "LSTM", True, True),
         ("rnn", "RNN", False, False), ("rnn_static_exposed", "RNN", True, True)]


class Case:
    """One recurrent layer: its blobs, prototxt text and numpy reference at any (T, N)."""

    def __init__(self, case) -> None:
        _, self.kind, self.static, self.expose = case
        self.lstm = self.kind == "LSTM"
        self.states = ["h0", "c0"] if self.lstm else ["h0"]
        rng = np.random.default_rng(3)
        g = 4 * H if self.lstm else H
        blobs = [rng.uniform(-0.5, 0.5, (g, F)), rng.uniform(-0.5, 0.5, (g,))]
        if self.static:
            blobs.append(rng.uniform(-0.5, 0.5, (g, S)))
        blobs.append(rng.uniform(-0.5, 0.5, (g, H)))
        if not self.lstm:
            blobs += [rng.uniform(-0.5, 0.5, (H, H)), rng.uniform(-0.5, 0.5, (H,))]
        self.blobs = [np.asarray(b, np.float32) for b in blobs]

    def inputs(self, steps: int, batch: int, suffix: str = "") -> dict[str, tuple]:
        shapes = {f"x{suffix}": (steps, batch, 2, 2), f"cont{suffix}": (steps, batch)}
        if self.static:
            shapes[f"xs{suffix}"] = (batch, S)
        if self.expose:
            shapes.update({f"{s}{suffix}": (1, batch, H) for s in self.states})
        return shapes

    def layer(self, name: str, suffix: str = "") -> str:
        bottoms = " ".join(f'bottom: "{b}{suffix}"' for b in self.inputs(1, 1))
        tops = [f"y{suffix}"] + ([f"{s}_T{suffix}" for s in ("h", "c")[: len(self.states)]] if self.expose else [])
        return (f'layer {{ name: "{name}" type: "{self.kind}" {bottoms} {" ".join(f"top: {t!r}" for t in tops)} '
                f'recurrent_param {{ num_output: {H} {"expose_hidden: true" if self.expose else ""} }} }}\n'
                ).replace("'", '"')

    def feeds(self, steps: int, batch: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(steps * 10 + batch)
        out = {"x": rng.standard_normal((steps, batch, 2, 2)).astype(np.float32), "cont": _cont(steps, batch)}
        if self.static:
            out["xs"] = rng.standard_normal((batch, S)).astype(np.float32)
        if self.expose:
            out.update({s: rng.standard_normal((1, batch, H)).astype(np.float32) for s in self.states})
        return out

    def reference(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        kw = {"x_static": feeds.get("xs"), "h0": feeds.get("h0")}
        w_x, b, *rest = self.blobs
        w_s = rest[0] if self.static else None
        if self.lstm:
            refs = ref_lstm(feeds["x"], feeds["cont"], w_x, b, rest[-1], w_s=w_s, c0=feeds.get("c0"), **kw)
        else:
            refs = ref_rnn(feeds["x"], feeds["cont"], w_x, b, *rest[-3:], w_s=w_s, **kw)
        return list(refs if self.expose else refs[:1])


def _close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    err = float(np.abs(got - ref).max())
    assert err <= 1e-5 + 1e-4 * float(np.abs(ref).max()), (what, err)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(case id, batch) -> converted model, from a prototxt declaring T = 6 (converted once)."""
    folder = tmp_path_factory.mktemp("rec")
    cache: dict[tuple[str, int], object] = {}

    def get(case, batch: int):
        key = (case[0], batch)
        if key not in cache:
            from tests.converters.caffe.conftest import net_text, write_weights

            c = Case(case)
            proto = folder / f"{case[0]}_{batch}.prototxt"
            proto.write_text(net_text(c.layer("rec"), inputs=c.inputs(T, batch)))
            weights = write_weights(folder / f"{case[0]}.caffemodel", {"rec": c.blobs})
            cache[key] = convert_paths([proto, weights], ConvertOptions())
        return cache[key]

    return get


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_caffe_semantics(converted, case) -> None:
    """One conversion per batch size runs every sequence length: the time axis (Caffe's
    leading axis) is symbolic in the converted model although the prototxt declares T = 6."""
    c = Case(case)
    for batch in BATCHES:
        model = converted(case, batch)
        assert str(model.graph.inputs[0].shape[0]) == "T"  # the time axis is free
        sessions = {b: Session(model, backend=b) for b in ("ort", "torch")}
        for steps in STEPS:
            feeds = c.feeds(steps, batch)
            refs = c.reference(feeds)
            for backend, sess in sessions.items():
                got = list(sess.run(feeds).values())
                assert len(got) == len(refs)
                for out, ref in zip(got, refs):
                    _close(out, ref, (backend, batch, steps))


@pytest.mark.caffe
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_real_caffe(real_caffe, converted, tmp_path, case) -> None:
    """Real BVLC Caffe as the reference. Caffe fixes the number of steps when it sets the layer
    up (``RecurrentLayer::Reshape`` refuses another T), so the reference is one net holding one
    copy of the layer (same weights) per (T, batch) cell; the converted models are the same
    ones as above (one per batch size, every T)."""
    from portanet.parity.runners import caffe as runner
    from tests.converters.caffe.conftest import net_text, write_weights

    c = Case(case)
    cells = [(steps, batch) for batch in BATCHES for steps in STEPS]
    inputs: dict[str, tuple] = {}
    layers, feeds, outputs = "", {}, []
    for steps, batch in cells:
        suffix = f"_{steps}_{batch}"
        inputs.update(c.inputs(steps, batch, suffix))
        layers += c.layer(f"rec{suffix}", suffix)
        feeds.update({f"{k}{suffix}": v for k, v in c.feeds(steps, batch).items()})
        outputs += [f"y{suffix}"] + ([f"{s}_T{suffix}" for s in ("h", "c")[: len(c.states)]] if c.expose else [])
    proto = tmp_path / "ref.prototxt"
    proto.write_text(net_text(layers, inputs=inputs))
    weights = write_weights(tmp_path / "ref.caffemodel", {f"rec_{s}_{b}": c.blobs for s, b in cells})
    assert runner.describe([proto, weights]).startswith("BVLC Caffe")
    ref = runner.run_caffe([proto, weights], feeds, options={"output_names": outputs})
    for steps, batch in cells:
        suffix = f"_{steps}_{batch}"
        cell_feeds = c.feeds(steps, batch)
        caffe_out = [ref[f"y{suffix}"]] + ([ref[f"{s}_T{suffix}"] for s in ("h", "c")[: len(c.states)]]
                                           if c.expose else [])
        # the numpy recurrence agrees with Caffe ...
        for mine, theirs in zip(c.reference(cell_feeds), caffe_out):
            _close(mine, theirs, ("numpy vs caffe", batch, steps))
        # ... and so does the converted model on both backends
        for backend in ("ort", "torch"):
            got = list(Session(converted(case, batch), backend=backend).run(cell_feeds).values())
            assert len(got) == len(caffe_out)
            for out, theirs in zip(got, caffe_out):
                _close(out, theirs, (backend, batch, steps))


def test_lstm_weights_are_trainable_and_named_by_layer(caffe) -> None:
    layer = f'layer {{ name: "lstm1" type: "LSTM" bottom: "x" bottom: "cont" top: "y" recurrent_param {{ num_output: {H} }} }}\n'
    proto = caffe.folder / "l.prototxt"
    proto.write_text(caffe.net_text(layer, inputs={"x": (T, N, F), "cont": (T, N)}))
    rng = np.random.default_rng(0)
    weights = caffe.write_weights("l.caffemodel", {"lstm1": [rng.standard_normal((4 * H, F)), np.zeros(4 * H),
                                                             rng.standard_normal((4 * H, H))]})
    model = convert_paths([proto, weights], ConvertOptions())
    assert {"lstm1_W_x", "lstm1_b", "lstm1_W_h"} <= set(model.graph.initializers)
    from portanet.runtime.torch_backend import lower

    module = lower(model)
    assert {module.param_ir_names[n] for n, _ in module.named_parameters()} >= {"lstm1_W_x", "lstm1_b", "lstm1_W_h"}


def test_wrong_blob_count_is_one_error(caffe) -> None:
    from portanet.errors import ConversionError

    layer = 'layer { name: "r" type: "RNN" bottom: "x" bottom: "cont" top: "y" recurrent_param { num_output: 5 } }\n'
    proto = caffe.folder / "r.prototxt"
    proto.write_text(caffe.net_text(layer, inputs={"x": (T, N, F), "cont": (T, N)}))
    weights = caffe.write_weights("r.caffemodel", {"r": [np.zeros((5, F)), np.zeros(5), np.zeros((5, 5))]})
    with pytest.raises(ConversionError, match="expected 5 blob"):
        convert_paths([proto, weights], ConvertOptions())


@pytest.mark.caffe
def test_verify_runs_real_caffe_at_the_fed_lengths(real_caffe, converted, tmp_path) -> None:
    """verify feeds sequence lengths other than the prototxt's T = 6 (its default batch sizes
    land on the leading, time axis; an explicit T = 9): the runner declares the fed shapes in
    the reference net's Input layer, since real Caffe builds a recurrent layer for one T."""
    import portanet
    from tests.converters.caffe.conftest import net_text, write_weights

    c = Case(CASES[1])  # LSTM with a static input and exposed states
    proto = tmp_path / "rec.prototxt"
    proto.write_text(net_text(c.layer("rec"), inputs=c.inputs(T, N)))
    weights = write_weights(tmp_path / "rec.caffemodel", {"rec": c.blobs})
    nine = {"x": [9, N, 2, 2], "cont": [9, N], "xs": [N, S], "h0": [1, N, H], "c0": [1, N, H]}
    for shapes in (None, [nine]):
        report = portanet.verify(str(proto), str(weights), shapes=shapes, backends=["ort", "torch"], bisect=True)
        assert report.tools["reference"].startswith("BVLC Caffe")
        assert report.passed, report.summary()
        assert report.bisect is not None and report.bisect.compared >= 1
