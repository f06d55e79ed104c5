"""CNTK recurrence over the sequence axis: PastValue/FutureValue loops -> ONNX Scan, plain
delays, sequence.first/last, OptimizedRNNStack -> ONNX LSTM/GRU/RNN.

No CNTK runtime exists for current Python, so the references are numpy recurrences written
here from CNTK's documented semantics, independently of the converter:

- ``past_value(x, initial_state, time_step=k)``: y_t = x_{t-k}, ``initial_state`` for t < k;
  ``future_value``: y_t = x_{t+k}, ``initial_state`` for t + k >= T (CNTK API docs).
- ``cntk.layers.LSTM``: proj = b + x W + h_{t-1} H, gate blocks (i, c~, f, o);
  c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(c~), h_t = sigmoid(o) tanh(c_t); zero states.
  With peepholes, Ci/Cf times the (stabilized) c_{t-1} join i/f, Co times the (stabilized)
  c_t joins o; a Stabilizer multiplies by softplus(alpha, steepness 4) =
  log(1 + exp(4 alpha)) / 4 (on h_{t-1}, c_{t-1} and c_t).
- ``cntk.layers.GRU``: z, r = sigmoid(x W_{z,r} + b_{z,r} + h_{t-1} H_{z,r}),
  c~ = tanh(x W_c + b_c + (r h_{t-1}) H1), h_t = (1 - z) c~ + z h_{t-1}.
- ``cntk.layers.RNNStep``: h_t = tanh(x W + h_{t-1} H + b) (``go_backwards``: h_{t+1}).
- ``sequence.broadcast_as(s, x)``: s at every step of x; ``Fold(f)``: the last step of
  ``Recurrence(f)``; ``element_max``, comparisons (1.0 / 0.0).
- ``sequence.slice(x, b, e)``: steps b..e-1 (negative from the end, e = 0 the end), a new
  sequence; ``sequence.last`` / ``sequence.first``: the last / first step (length 1);
  ``sequence.reduce_sum``: the sum over the steps (a sequence of length 1).
- ``conv_rnn``: a per-frame CNN (PyTorch's conv2d/batch_norm/max_pool2d in float64, CNTK's
  auto-padding for a stride-1 3x3 kernel being 1 on each side) feeding ``RNNStep``.
- ``optimized_rnnstack``: NVIDIA cuDNN's RNN equations (cudnnRNNMode_t: LSTM i, f, c~, o;
  GRU r, z, h~ with the reset gate applied to (R h + b_R); tanh/ReLU RNN), the parameter
  vector packed as CNTK's ``cntk.misc.converter`` reads it (per layer and direction W then R,
  then all biases b_W, b_R), outputs of both directions concatenated.

Every model is converted once; each backend runs it at several sequence lengths and batch
sizes. Tolerance: |got - ref| <= 1e-5 + 1e-4 * max|ref|.
"""

from __future__ import annotations

import numpy as np
import pytest

from model_zoo.cntk.nets import RECURRENT_NETS, RecurrentZooModel, build_recurrent
from portanet.converters.registry import convert_paths
from portanet.runtime.session import Session

pytest.importorskip("torch")

LENGTHS = (1, 5, 12)
BATCHES = (1, 3)


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


# ------------------------------------------------------------------ numpy references (float64)
def softplus(v, steepness: float = 4.0):
    return np.log1p(np.exp(steepness * v)) / steepness


def ref_lstm(x: np.ndarray, W, H, b, peep=None, stab=None, full_state=False):
    n, t_len, _ = x.shape
    hid = H.shape[0]
    h = np.zeros((n, hid))
    c = np.zeros((n, hid))
    hs, cs = [], []
    beta = {k: softplus(v) for k, v in (stab or {}).items()} or {"dh": 1.0, "dc": 1.0, "c": 1.0}
    ci, cf, co = (peep["Ci"], peep["Cf"], peep["Co"]) if peep else (0.0, 0.0, 0.0)
    for t in range(t_len):
        p = b + x[:, t] @ W + (beta["dh"] * h) @ H
        i, cc, f, o = (p[:, k * hid:(k + 1) * hid] for k in range(4))
        dcs = beta["dc"] * c
        c = sigmoid(f + cf * dcs) * c + sigmoid(i + ci * dcs) * np.tanh(cc)
        h = sigmoid(o + co * beta["c"] * c) * np.tanh(c)
        hs.append(h)
        cs.append(c)
    return (np.stack(hs, 1), np.stack(cs, 1)) if full_state else np.stack(hs, 1)


def ref_gru(x, W, H, H1, b) -> np.ndarray:
    n, t_len, _ = x.shape
    hid = H1.shape[0]
    h = np.zeros((n, hid))
    hs = []
    for t in range(t_len):
        px = b + x[:, t] @ W
        ph = h @ H
        z = sigmoid(px[:, :hid] + ph[:, :hid])
        r = sigmoid(px[:, hid:2 * hid] + ph[:, hid:])
        cc = np.tanh(px[:, 2 * hid:] + (r * h) @ H1)
        h = (1 - z) * cc + z * h
        hs.append(h)
    return np.stack(hs, 1)


def boundary(init, t: int, t_len: int, offset: int, future: bool) -> np.ndarray:
    """What a delay reads at step t when t -/+ offset leaves the sequence. A sequence initial
    state (N, Tin, ...) continues the sequence (CNTK's DelayedValueNode): PastValue at t
    reads init[Tin - offset + t], FutureValue at t reads init[t + offset - T]; a 1-step
    initial sequence is broadcast. Anything else broadcasts as is."""
    if not isinstance(init, SeqInit):
        return init
    if init.value.shape[1] == 1:
        return init.value[:, 0]
    return init.value[:, t + offset - t_len] if future else init.value[:, init.value.shape[1] - offset + t]


class SeqInit:
    """Marks an initial state that is a sequence (N, Tin, ...)."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = value


def ref_rnn(x, W, H, b, h0, backward=False, offset=1) -> np.ndarray:
    n, t_len, _ = x.shape
    out = np.zeros((n, t_len, H.shape[0]))
    steps = range(t_len - 1, -1, -1) if backward else range(t_len)
    for t in steps:
        src = t + offset if backward else t - offset
        prev = out[:, src] if 0 <= src < t_len else np.broadcast_to(boundary(h0, t, t_len, offset, backward),
                                                                  (n, H.shape[0]))
        out[:, t] = np.tanh(x[:, t] @ W + prev @ H + b)
    return out


def ref_delay(x, init, offset, future) -> np.ndarray:
    y = np.empty_like(x)
    t_len = x.shape[1]
    for t in range(t_len):
        src = t + offset if future else t - offset
        y[:, t] = x[:, src] if 0 <= src < t_len else boundary(init, t, t_len, offset, future)
    return y


_CUDNN_GATES = {"lstm": 4, "gru": 3, "rnnTanh": 1, "rnnReLU": 1}


def ref_optimized_rnn_stack(x, flat, op: str, hidden: int, layers: int, bidirectional: bool) -> np.ndarray:
    g = _CUDNN_GATES[op]
    dirs = 2 if bidirectional else 1
    pos = 0

    def take(n: int) -> np.ndarray:
        nonlocal pos
        pos += n
        return flat[pos - n:pos]

    cells = []
    cin = x.shape[2]
    for _ in range(layers):
        per = []
        for _ in range(dirs):
            w = take(g * hidden * cin).reshape(g, hidden, cin)  # cuDNN: gate blocks of (H, C) rows
            r = take(g * hidden * hidden).reshape(g, hidden, hidden)
            per.append([w, r])
        cells.append(per)
        cin = dirs * hidden
    for per in cells:
        for cell in per:
            cell += [take(g * hidden).reshape(g, hidden), take(g * hidden).reshape(g, hidden)]

    def run(seq, w, r, bw, br, reverse):
        n, t_len, _ = seq.shape
        h = np.zeros((n, hidden))
        c = np.zeros((n, hidden))
        out = np.zeros((n, t_len, hidden))
        for t in (range(t_len - 1, -1, -1) if reverse else range(t_len)):
            xw = [seq[:, t] @ w[k].T + bw[k] for k in range(g)]
            hr = [h @ r[k].T + br[k] for k in range(g)]
            if op == "lstm":  # i, f, c~, o
                i, f, o = sigmoid(xw[0] + hr[0]), sigmoid(xw[1] + hr[1]), sigmoid(xw[3] + hr[3])
                c = f * c + i * np.tanh(xw[2] + hr[2])
                h = o * np.tanh(c)
            elif op == "gru":  # r, z, h~
                rg, z = sigmoid(xw[0] + hr[0]), sigmoid(xw[1] + hr[1])
                hh = np.tanh(xw[2] + rg * hr[2])
                h = (1 - z) * hh + z * h
            else:
                s = xw[0] + hr[0]
                h = np.tanh(s) if op == "rnnTanh" else np.maximum(s, 0)
            out[:, t] = h
        return out

    y = x
    for per in cells:
        y = np.concatenate([run(y, *cell, reverse=d == 1) for d, cell in enumerate(per)], axis=2)
    return y


def reference(m: RecurrentZooModel, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The expected graph outputs of zoo model ``m`` for its inputs (N, T, ...)."""
    w = {k: v.astype(np.float64) for k, v in m.weights.items()}
    if m.name == "seq_initial_state":
        x, y = feeds["source"].astype(np.float64), feeds["target"].astype(np.float64)
        enc = ref_rnn(x, w["We"], w["He"], w["be"], 0.0)
        dec = ref_rnn(y, w["Wd"], w["Hd"], w["bd"], SeqInit(enc))
        back = ref_rnn(y, w["Wb"], w["Hb"], w["bb"], SeqInit(enc), backward=True, offset=2)
        return [enc, dec, back, ref_delay(dec, SeqInit(enc), 3, False)]
    if m.name == "broadcast_fold":
        x, ctx_vec = feeds["features"].astype(np.float64), feeds["context"].astype(np.float64)
        running = np.maximum.accumulate(np.maximum(x, 0.0), axis=1)  # Fold(element_max), initial state 0
        return [x + ctx_vec[:, None], running[:, -1:], (x >= 0).astype(np.float64)]
    if m.name == "conv_rnn":
        import torch
        import torch.nn.functional as F

        (frames,) = feeds.values()
        n, t_len = frames.shape[:2]
        f = torch.from_numpy(frames.reshape(n * t_len, 2, 6, 6)).double()
        wt = {k: torch.from_numpy(v).double() for k, v in w.items()}
        y = F.relu(F.conv2d(f, wt["K"], padding=1) + wt["kb"])
        y = F.batch_norm(y, wt["mean"], wt["var"], wt["scale"], wt["shift"], False, 0.0, 1e-5)
        y = F.max_pool2d(y, 2).reshape(n, t_len, 27).numpy()
        h = ref_rnn(y, w["W"].reshape(27, -1), w["H"], w["b"], 0.0)
        return [h, h[:, -1:]]
    (x,) = (v.astype(np.float64) for v in feeds.values())
    if m.name == "lstm_last":
        h = ref_lstm(x, w["W"], w["H"], w["b"])
        return [h, h[:, -1:] @ w["Wd"] + w["bd"]]
    if m.name == "lstm_peephole_stabilized":
        return list(ref_lstm(x, w["W"], w["H"], w["b"], peep=w, stab={k: w[k] for k in ("dh", "dc", "c")},
                             full_state=True))
    if m.name == "gru_first":
        h = ref_gru(x, w["W"], w["H"], w["H1"], w["b"])
        return [h, h[:, :1]]
    if m.name == "rnn_backward":
        return [ref_rnn(x, w["W"], w["H"], w["b"], w["h0"], backward=True)]
    if m.name == "delays":
        h = ref_rnn(x, w["W"], w["H"], w["b"], 0.25, offset=2)
        z = x - ref_delay(x, 0.5, 1, False) + ref_delay(x, 0.0, 2, True)
        return [h, z]
    if m.name == "slices":
        return [x[:, 1:-1], x[:, -3:], x.sum(1, keepdims=True)]
    if m.name == "bilstm_stack":
        flat = x.reshape(*x.shape[:2], 6)
        fw = ref_lstm(flat, w["Wf"].reshape(6, -1), w["Hf"], w["bf"])
        bw = ref_lstm(flat[:, ::-1], w["Wb"].reshape(6, -1), w["Hb"], w["bb"])[:, ::-1]  # go_backwards
        h1 = np.concatenate([fw, bw], axis=2)
        return [h1, ref_rnn(h1, w["W2"], w["H2"], w["b2"], 0.0)]
    spec = {"ornn_lstm_bi2": ("lstm", 4, 2, True), "ornn_gru": ("gru", 4, 1, False),
            "ornn_gru_bi": ("gru", 3, 1, True), "ornn_rnn_tanh2": ("rnnTanh", 4, 2, False),
            "ornn_rnn_relu_bi": ("rnnReLU", 4, 1, True)}[m.name]
    y = ref_optimized_rnn_stack(x, w["flat"], *spec)
    return [y, y[:, -1:]]


# ----------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module", params=sorted(RECURRENT_NETS))
def converted(request, cntk_zoo_dir):
    m = build_recurrent(request.param, directory=cntk_zoo_dir)
    return m, convert_paths([m.path])


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_recurrent_matches_numpy_reference(converted, backend: str):
    m, model = converted
    # a real symbolic time axis: (N, T, features), not folded into the batch; a sequence on an
    # axis of its own has a time dimension of its own
    assert {v.name: [str(d) for d in v.shape[:2]] for v in model.graph.inputs} == {
        name: ["N", "3" if name in m.static else "T_targetAxis" if name == "target" else "T"] for name in m.inputs}
    s = Session(model, backend=backend)
    worst = 0.0
    for t_len in LENGTHS:
        for n in BATCHES:
            rng = np.random.default_rng(t_len * 10 + n)
            # a second input has a sequence axis of its own: another length
            # a second sequence input has a sequence axis of its own: another length; an input
            # without a sequence axis is (N, ...)
            feeds = {name: rng.standard_normal((n, *(() if name in m.static else (t_len + 3 * i,)), *shape))
                     .astype(np.float32) for i, (name, shape) in enumerate(m.inputs.items())}
            got = list(s.run(feeds).values())
            refs = reference(m, feeds)
            assert len(got) == len(refs)
            for g, r in zip(got, refs):
                assert g.shape == r.shape, (t_len, n, g.shape, r.shape)
                if r.size == 0:  # sequence.slice(x, 1, -1) of a 1-step sequence is empty
                    continue
                err = float(np.max(np.abs(g - r)))
                tol = 1e-5 + 1e-4 * float(np.max(np.abs(r)))
                assert err <= tol, f"{m.name} on {backend}, T={t_len}, N={n}: error {err:.3g} > {tol:.3g}"
                worst = max(worst, err / tol)
    print(f"{m.name} {backend}: worst error / tolerance = {worst:.3f}")


def test_loops_become_scans_and_the_stack_onnx_rnns(cntk_zoo_dir):
    def ops(name: str) -> list[str]:
        model = convert_paths([build_recurrent(name, directory=cntk_zoo_dir).path])
        return [n.op_type for n in model.graph]

    lstm = ops("lstm_last")
    assert lstm.count("Scan") == 1  # the h and c delays are one loop: one Scan, two states
    assert ops("ornn_lstm_bi2").count("LSTM") == 2  # one bidirectional node per layer
    assert ops("ornn_gru").count("GRU") == 1
    assert "Scan" not in ops("ornn_rnn_tanh2")
    assert ops("broadcast_fold").count("Scan") == 2  # broadcast_as's carry loop and the running max
    assert ops("bilstm_stack").count("Scan") == 3


def test_portanet_train_updates_weights_inside_the_loop(cntk_zoo_dir, tmp_path):
    """`portanet train` runs on a converted CNTK recurrent model (the torch backend trains
    through the Scan): the recurrent weight H, read only inside the loop body, changes."""
    import onnx
    from click.testing import CliRunner

    from portanet.cli import cli

    m = build_recurrent("lstm_last", directory=cntk_zoo_dir)
    rng = np.random.default_rng(0)
    data = tmp_path / "seq.npz"
    # sequences (N, T, F); the classifier's output is sequence.last's length-1 sequence (N, 1, 3)
    np.savez(data, x=rng.standard_normal((48, 6, 4)).astype(np.float32),
             y=rng.standard_normal((48, 1, 3)).astype(np.float32))
    onnx_path, trained = tmp_path / "lstm.onnx", tmp_path / "trained.onnx"
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", str(m.path), "-o", str(onnx_path)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["train", str(onnx_path), "--data", str(data), "--train-output", "dense", "--loss", "mse",
                              "--epochs", "1", "--batch-size", "16", "--optimizer", "adam", "--lr", "0.01",
                              "-o", str(trained)])
    assert res.exit_code == 0, res.output

    def weights(p) -> dict[str, np.ndarray]:
        return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}

    before, after = weights(onnx_path), weights(trained)
    h_name = next(k for k, v in before.items() if v.shape == m.weights["H"].shape and np.array_equal(v, m.weights["H"]))
    assert not np.allclose(before[h_name], after[h_name])
    scan = next(n for n in onnx.load(str(trained)).graph.node if n.op_type == "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    assert h_name in {i for n in body.node for i in n.input}  # H is read inside the Scan body


def test_portanet_train_cross_entropy_on_the_last_step(cntk_zoo_dir, tmp_path):
    """sequence.last's classifier output is a length-1 sequence (N, 1, C): integer labels (N,)
    train it with the default loss (cross-entropy over the C scores) and report accuracy."""
    from click.testing import CliRunner

    from portanet.cli import cli

    m = build_recurrent("lstm_last", directory=cntk_zoo_dir)
    rng = np.random.default_rng(0)
    data = tmp_path / "seq.npz"
    np.savez(data, x=rng.standard_normal((48, 6, 4)).astype(np.float32), y=rng.integers(0, 3, 48))
    onnx_path, trained = tmp_path / "lstm.onnx", tmp_path / "trained.onnx"
    runner = CliRunner()
    res = runner.invoke(cli, ["convert", str(m.path), "-o", str(onnx_path)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["train", str(onnx_path), "--data", str(data), "--train-output", "dense",
                              "--epochs", "1", "--batch-size", "16", "-o", str(trained)])
    assert res.exit_code == 0, res.output
    assert " acc " in res.output and "test acc" in res.output  # a classification run
    assert trained.exists()
