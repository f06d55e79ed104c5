"""Caffe LSTM and RNN layers (``cont`` sequence continuation, ``expose_hidden``, static input).

Reference: a numpy recurrence written here from Caffe's documented semantics (the comments
of ``LSTMLayer::FillUnrolledNet`` / ``RNNLayer::FillUnrolledNet`` and ``LSTMUnitLayer``):
``h_conted = cont_t * h_{t-1}``, gates ``i f o g`` from ``W_hc h_conted + W_xc x_t + b_c``,
``c_t = cont_t * f * c_{t-1} + i * g``, ``h_t = o * tanh(c_t)``; RNN
``h_t = tanh(W_hh h_conted + W_xh x_t + b_h)``, top ``o_t = tanh(W_ho h_t + b_o)``.
The converted models run on ONNX Runtime and on the torch backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from portanet.converters.registry import ConvertOptions, convert_paths
from portanet.runtime.session import Session

T, N, F, H, S = 6, 3, 4, 5, 2  # steps, batch, features, hidden units, static features


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def ref_lstm(x, cont, w_x, b, w_h, x_static=None, w_s=None, h0=None, c0=None):
    x = x.reshape(T, N, -1).astype(np.float64)
    h = np.zeros((N, H)) if h0 is None else h0[0].astype(np.float64)
    c = np.zeros((N, H)) if c0 is None else c0[0].astype(np.float64)
    out = []
    for t in range(T):
        ct = cont[t][:, None]
        g = x[t] @ w_x.T + b + (ct * h) @ w_h.T
        if x_static is not None:
            g = g + x_static.reshape(N, -1) @ w_s.T
        i, f, o, gg = np.split(g, 4, axis=1)
        c = ct * (_sig(f) * c) + _sig(i) * np.tanh(gg)
        h = _sig(o) * np.tanh(c)
        out.append(h)
    return np.stack(out), h[None], c[None]


def ref_rnn(x, cont, w_x, b, w_h, w_o, b_o, x_static=None, w_s=None, h0=None):
    x = x.reshape(T, N, -1).astype(np.float64)
    h = np.zeros((N, H)) if h0 is None else h0[0].astype(np.float64)
    out = []
    for t in range(T):
        pre = x[t] @ w_x.T + b + (cont[t][:, None] * h) @ w_h.T
        if x_static is not None:
            pre = pre + x_static.reshape(N, -1) @ w_s.T
        h = np.tanh(pre)
        out.append(np.tanh(h @ w_o.T + b_o))
    return np.stack(out), h[None]


def _cont() -> np.ndarray:
    cont = np.ones((T, N), np.float32)
    cont[0] = 0  # every sequence starts at t = 0 ...
    cont[3, 1] = 0  # ... and sample 1 starts a new sequence at t = 3
    cont[2, 2] = 0.5  # a non-binary value: Caffe scales the state by it
    return cont


# (id, layer type, static input, expose_hidden)
CASES = [("lstm", "LSTM", False, False), ("lstm_static_exposed", "LSTM", True, True),
         ("rnn", "RNN", False, False), ("rnn_static_exposed", "RNN", True, True)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_caffe_semantics(caffe, case) -> None:
    _, kind, static, expose = case
    rng = np.random.default_rng(3)
    lstm = kind == "LSTM"
    g = 4 * H if lstm else H
    inputs = {"x": (T, N, 2, 2), "cont": (T, N)}
    bottoms = ['bottom: "x"', 'bottom: "cont"']
    if static:
        inputs["xs"] = (N, S)
        bottoms.append('bottom: "xs"')
    states = ["h0", "c0"] if lstm else ["h0"]
    if expose:
        for s in states:
            inputs[s] = (1, N, H)
            bottoms.append(f'bottom: "{s}"')
    tops = ['top: "y"'] + ([f'top: "{s}_T"' for s in ("h", "c")][: len(states)] if expose else [])
    layer = (f'layer {{ name: "rec" type: "{kind}" {" ".join(bottoms)} {" ".join(tops)} '
             f'recurrent_param {{ num_output: {H} {"expose_hidden: true" if expose else ""} }} }}\n')
    proto = caffe.folder / "rec.prototxt"
    proto.write_text(caffe.net_text(layer, inputs=inputs))
    blobs = [rng.uniform(-0.5, 0.5, (g, F)), rng.uniform(-0.5, 0.5, (g,))]
    if static:
        blobs.append(rng.uniform(-0.5, 0.5, (g, S)))
    blobs.append(rng.uniform(-0.5, 0.5, (g, H)))
    if not lstm:
        blobs += [rng.uniform(-0.5, 0.5, (H, H)), rng.uniform(-0.5, 0.5, (H,))]
    blobs = [np.asarray(b, np.float32) for b in blobs]
    weights = caffe.write_weights("rec.caffemodel", {"rec": blobs})
    feeds = {"x": rng.standard_normal(inputs["x"]).astype(np.float32), "cont": _cont()}
    if static:
        feeds["xs"] = rng.standard_normal((N, S)).astype(np.float32)
    if expose:
        for s in states:
            feeds[s] = rng.standard_normal((1, N, H)).astype(np.float32)
    kw = {"x_static": feeds.get("xs"), "h0": feeds.get("h0")}
    if lstm:
        w_x, b, *rest = blobs
        w_s = rest[0] if static else None
        refs = ref_lstm(feeds["x"], feeds["cont"], w_x, b, rest[-1], w_s=w_s, c0=feeds.get("c0"), **kw)
    else:
        w_x, b, *rest = blobs
        w_s = rest[0] if static else None
        w_h, w_o, b_o = rest[-3:]
        refs = ref_rnn(feeds["x"], feeds["cont"], w_x, b, w_h, w_o, b_o, w_s=w_s, **kw)
    refs = refs if expose else refs[:1]
    model = convert_paths([proto, weights], ConvertOptions())
    for backend in ("ort", "torch"):
        got = list(Session(model, backend=backend).run(feeds).values())
        assert len(got) == len(refs)
        for out, ref in zip(got, refs):
            assert out.shape == ref.shape
            err = float(np.abs(out - ref).max())
            assert err <= 1e-5 + 1e-4 * float(np.abs(ref).max()), (backend, err)


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
