"""Keras recurrent layers (LSTM, GRU, SimpleRNN, RNN over cells, Bidirectional) and masks,
against Keras itself: both layouts, ONNX Runtime and the torch backend, batch 1 and > 1,
several sequence lengths from one conversion."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest

from tests.converters.keras.sequence_parity import check_model, floats, token_ids, zero_steps

keras = pytest.importorskip("keras")
L = keras.layers
F, H = 5, 4


def on_seq(*layers: Callable[[], object], dtype: str = "float32", features: int | None = F):
    """A functional model applying layers in order to one (None, features) input."""

    def build():
        keras.utils.set_random_seed(1)
        x = inp = keras.Input((None, features) if features else (None,), dtype=dtype, name="x")
        for layer in layers:
            x = layer()(x)
        return keras.Model(inp, x)

    return build


def embedded(layer: Callable[[], object]):
    """Embedding(mask_zero=True) -> layer: the layer receives the ids != 0 mask."""
    return on_seq(lambda: L.Embedding(9, F, mask_zero=True), layer, dtype="int32", features=None)


def with_states(layer: Callable[[], object], n_states: int):
    """The layer called with initial states that are model inputs."""

    def build():
        keras.utils.set_random_seed(1)
        x = keras.Input((None, F), name="x")
        states = [keras.Input((H,), name=f"s{i}") for i in range(n_states)]
        return keras.Model([x, *states], layer()(x, initial_state=states))

    return build


def masked_with_merge(merge: Callable[[], object]):
    """Two masked branches merged before an LSTM (the merged mask reaches the LSTM)."""

    def build():
        keras.utils.set_random_seed(1)
        ids = keras.Input((None,), dtype="int32", name="ids")
        e = L.Embedding(9, F, mask_zero=True)(ids)
        a = L.LSTM(F, return_sequences=True)(e)
        return keras.Model(ids, L.LSTM(H)(merge()([a, e])))

    return build


def masking_model():
    keras.utils.set_random_seed(1)
    x = keras.Input((None, F), name="x")
    m = L.Masking(0.0)(x)
    # the Masking output itself (zeros on masked steps) and a masked GRU after a Dense
    return keras.Model(x, [m, L.GRU(H, return_sequences=True)(L.Dense(6)(m))])


CASES: dict[str, tuple[Callable[[], object], Callable]] = {
    # -- single layers, every output option
    "lstm_last": (on_seq(lambda: L.LSTM(H)), floats(F)),
    "lstm_seq_state": (on_seq(lambda: L.LSTM(H, return_sequences=True, return_state=True)), floats(F)),
    "lstm_backwards": (on_seq(lambda: L.LSTM(H, go_backwards=True, return_sequences=True)), floats(F)),
    "lstm_nobias_relu": (on_seq(lambda: L.LSTM(H, use_bias=False, activation="relu", return_state=True)),
                         floats(F)),
    "gru_reset_after": (on_seq(lambda: L.GRU(H, return_sequences=True, return_state=True)), floats(F)),
    "gru_reset_before": (on_seq(lambda: L.GRU(H, reset_after=False, return_sequences=True)), floats(F)),
    "gru_backwards_last": (on_seq(lambda: L.GRU(H, go_backwards=True, return_state=True)), floats(F)),
    "gru_nobias": (on_seq(lambda: L.GRU(H, use_bias=False, reset_after=False)), floats(F)),
    # activations with alpha/beta (hard_sigmoid is Keras 2's default recurrent activation)
    "lstm_hard_sigmoid": (on_seq(lambda: L.LSTM(H, recurrent_activation="hard_sigmoid", return_sequences=True)),
                          floats(F)),
    "bi_gru_hard_sigmoid_elu": (on_seq(lambda: L.Bidirectional(L.GRU(H, recurrent_activation="hard_sigmoid",
                                                                     activation="elu", return_sequences=True))),
                                floats(F)),
    "simple_rnn_linear": (on_seq(lambda: L.SimpleRNN(H, activation="linear", return_sequences=True)), floats(F)),
    "simple_rnn_seq": (on_seq(lambda: L.SimpleRNN(H, return_sequences=True, activation="relu")), floats(F)),
    "simple_rnn_state": (on_seq(lambda: L.SimpleRNN(H, return_state=True, go_backwards=True)), floats(F)),
    "rnn_lstm_cell": (on_seq(lambda: L.RNN(L.LSTMCell(H), return_sequences=True)), floats(F)),
    "stacked": (on_seq(lambda: L.LSTM(6, return_sequences=True), lambda: L.Dropout(0.5),
                       lambda: L.GRU(H, return_sequences=True), lambda: L.SimpleRNN(3)), floats(F)),
    # -- Bidirectional, every merge mode
    "bi_concat_seq": (on_seq(lambda: L.Bidirectional(L.LSTM(H, return_sequences=True))), floats(F)),
    "bi_sum_last": (on_seq(lambda: L.Bidirectional(L.GRU(H), merge_mode="sum")), floats(F)),
    "bi_mul_seq": (on_seq(lambda: L.Bidirectional(L.SimpleRNN(H, return_sequences=True), merge_mode="mul")),
                   floats(F)),
    "bi_ave_state": (on_seq(lambda: L.Bidirectional(L.LSTM(H, return_state=True), merge_mode="ave")), floats(F)),
    "bi_none_seq_state": (on_seq(lambda: L.Bidirectional(L.GRU(H, return_sequences=True, return_state=True),
                                                         merge_mode=None)), floats(F)),
    "bi_mixed_layers": (on_seq(lambda: L.Bidirectional(
        L.LSTM(H, return_sequences=True),
        backward_layer=L.GRU(H, return_sequences=True, go_backwards=True))), floats(F)),
    # -- initial states as model inputs
    "lstm_initial": (with_states(lambda: L.LSTM(H, return_sequences=True, return_state=True), 2),
                     floats(F, (H,), (H,))),
    "gru_initial": (with_states(lambda: L.GRU(H, return_state=True), 1), floats(F, (H,))),
    "bi_initial": (with_states(lambda: L.Bidirectional(L.LSTM(H, return_sequences=True)), 4),
                   floats(F, (H,), (H,), (H,), (H,))),
    # -- masks: Embedding(mask_zero=True), Masking, merged masks
    "mask_lstm_seq": (embedded(lambda: L.LSTM(H, return_sequences=True, return_state=True)), token_ids()),
    "mask_lstm_zero_output": (embedded(lambda: L.LSTM(H, return_sequences=True, zero_output_for_mask=True)),
                              token_ids()),
    "mask_lstm_last_zero_output": (embedded(lambda: L.LSTM(H, zero_output_for_mask=True)), token_ids()),
    "mask_gru_backwards": (embedded(lambda: L.GRU(H, go_backwards=True, return_sequences=True,
                                                  return_state=True)), token_ids()),
    "mask_simple_rnn_last": (embedded(lambda: L.SimpleRNN(H)), token_ids()),
    "mask_bi_concat": (embedded(lambda: L.Bidirectional(L.LSTM(H, return_sequences=True, return_state=True))),
                       token_ids()),
    "mask_bi_last": (embedded(lambda: L.Bidirectional(L.GRU(H, reset_after=False), merge_mode="sum")),
                     token_ids()),
    "mask_bi_mixed": (embedded(lambda: L.Bidirectional(
        L.GRU(H, return_sequences=True),
        backward_layer=L.SimpleRNN(H, return_sequences=True, go_backwards=True))), token_ids()),
    "mask_masking": (masking_model, zero_steps(F)),
    "mask_concat": (masked_with_merge(L.Concatenate), token_ids()),
    "mask_add": (masked_with_merge(L.Add), token_ids()),
}


def fixed_steps(*shapes: tuple):
    """Float inputs (N, *shape) per shape: a fixed time axis (ConvLSTM is unrolled)."""

    def make(n: int, t: int, rng: np.random.Generator) -> list[np.ndarray]:
        return [rng.standard_normal((n, *s)).astype(np.float32) for s in shapes]

    return make


def conv_lstm(layer: Callable[[], object], shape: tuple, state: tuple | None = None):
    def build():
        keras.utils.set_random_seed(1)
        x = keras.Input(shape, name="frames")
        if state is None:
            return keras.Model(x, layer()(x))
        h, c = keras.Input(state, name="h"), keras.Input(state, name="c")
        return keras.Model([x, h, c], layer()(x, initial_state=[h, c]))

    return build


CASES.update({
    "convlstm2d_same": (conv_lstm(lambda: L.ConvLSTM2D(3, 3, padding="same"), (4, 6, 6, 2)),
                        fixed_steps((4, 6, 6, 2))),
    "convlstm2d_valid_s2_seq_state": (conv_lstm(lambda: L.ConvLSTM2D(3, (3, 2), strides=2, return_sequences=True,
                                                                     return_state=True), (4, 7, 6, 2)),
                                      fixed_steps((4, 7, 6, 2))),
    "convlstm2d_backwards": (conv_lstm(lambda: L.ConvLSTM2D(3, 3, padding="same", go_backwards=True,
                                                            return_sequences=True,
                                                            recurrent_activation="hard_sigmoid"), (3, 5, 5, 2)),
                             fixed_steps((3, 5, 5, 2))),
    "convlstm1d_dilated": (conv_lstm(lambda: L.ConvLSTM1D(4, 3, padding="same", dilation_rate=2), (5, 9, 3)),
                           fixed_steps((5, 9, 3))),
    "convlstm3d": (conv_lstm(lambda: L.ConvLSTM3D(2, 2), (3, 4, 4, 4, 1)), fixed_steps((3, 4, 4, 4, 1))),
    "convlstm2d_initial": (conv_lstm(lambda: L.ConvLSTM2D(3, 3, padding="same", return_sequences=True),
                                     (4, 5, 5, 2), state=(5, 5, 3)),
                           fixed_steps((4, 5, 5, 2), (5, 5, 3), (5, 5, 3))),
})


@cache
def _model(case: str):
    return CASES[case][0]()


@cache
def _converted(case: str, nchw: bool):
    import portanet

    return portanet.convert(_model(case), nchw=nchw)


@pytest.mark.parametrize("backend", ["ort", "torch"])
@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_recurrent_parity(case: str, nchw: bool, backend: str) -> None:
    make = CASES[case][1]
    check_model(_converted(case, nchw), _model(case), make, nchw, backend, seed=zlib.crc32(case.encode()) % 1000)


def test_time_axis_stays_symbolic() -> None:
    ir_model = _converted("lstm_seq_state", True)
    dims = list(ir_model.graph.inputs[0].shape)  # (N, F, T) under nchw
    assert dims[1] == F
    assert not isinstance(dims[0], int) and not isinstance(dims[2], int)
    assert [n.op_type for n in ir_model.graph if n.op_type == "LSTM"] == ["LSTM"]


def test_bidirectional_is_one_node() -> None:
    ops = [n.op_type for n in _converted("bi_concat_seq", False).graph]
    assert ops.count("LSTM") == 1
    node = next(n for n in _converted("bi_concat_seq", False).graph if n.op_type == "LSTM")
    assert node.attributes["direction"].value == "bidirectional"


def test_lstm_gate_order_against_numpy() -> None:
    """The ONNX LSTM's weights against an independent numpy LSTM written from Keras'
    documented cell (gates i, f, c, o; sigmoid recurrent activation)."""
    from tests.converters.keras.conftest import run_converted

    model = _model("lstm_last")
    cell = model.layers[-1].cell
    k, rk, b = (np.asarray(v, np.float64) for v in (cell.kernel, cell.recurrent_kernel, cell.bias))
    x = np.random.default_rng(5).standard_normal((2, 6, F)).astype(np.float32)
    h = np.zeros((2, H))
    c = np.zeros((2, H))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for t in range(6):
        z = x[:, t] @ k + h @ rk + b
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
    got = run_converted(_converted("lstm_last", False), [x], nchw=False)[0]
    np.testing.assert_allclose(got, h, rtol=1e-4, atol=1e-5)


def _refused(model) -> str:
    import portanet
    from portanet.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError) as info:
        portanet.convert(model)
    return str(info.value)


def test_stateful_and_unsupported_variants_listed_together() -> None:
    keras.utils.set_random_seed(1)
    x = keras.Input(batch_shape=(2, 6, F))
    a = L.LSTM(H, stateful=True, return_sequences=True, name="stateful_lstm")(x)
    b = L.Bidirectional(L.GRU(H, stateful=True), name="stateful_bi")(a)
    msg = _refused(keras.Model(x, b))
    assert "LSTM (stateful=True) x1 (stateful_lstm)" in msg
    assert "Bidirectional (stateful=True) x1 (stateful_bi)" in msg


def test_masked_input_to_a_layer_without_mask_support_is_refused() -> None:
    keras.utils.set_random_seed(1)
    ids = keras.Input((None,), dtype="int32")
    y = L.Softmax(name="masked_softmax")(L.Embedding(9, F, mask_zero=True)(ids))
    msg = _refused(keras.Model(ids, y))
    assert "Softmax (with a mask from Embedding(mask_zero=True)/Masking) x1 (masked_softmax)" in msg


def test_unsupported_recurrent_activation_names_it() -> None:
    import portanet
    from portanet.errors import ConversionError

    model = on_seq(lambda: L.LSTM(H, recurrent_activation="gelu", name="gelu_lstm"))()
    with pytest.raises(ConversionError, match="gelu_lstm.*recurrent_activation 'gelu' is not supported"):
        portanet.convert(model)


def _bisect_model():
    keras.utils.set_random_seed(2)
    x = keras.Input((7, F), name="x")
    y = L.Bidirectional(L.LSTM(H, return_sequences=True), name="bi")(L.Masking(0.0, name="mask")(x))
    y = L.GRU(H, return_sequences=True, name="gru")(y)
    return keras.Model(x, L.SimpleRNN(3, name="rnn")(y))


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_bisect_names_a_broken_recurrent_layer(nchw: bool) -> None:
    """verify --bisect compares the time-major intermediate outputs against Keras' and names
    the first layer whose weights were tampered with."""
    import onnx_ir as ir

    import portanet

    model = _bisect_model()
    report = portanet.verify(model, bisect=True, nchw=nchw, backends=["ort"])
    assert report.passed and report.bisect.layer is None and report.bisect.compared >= 3
    broken = portanet.convert(model, nchw=nchw)
    r = next(v for v in broken.graph.initializers.values() if v.name == "gru/R")
    r.const_value = ir.tensor(r.const_value.numpy() * 1.5)
    report = portanet.verify(model, onnx=broken, bisect=True, nchw=nchw, backends=["ort"])
    assert not report.passed
    assert report.bisect.layer == "gru"


def test_cli_refuses_every_unsupported_recurrent_variant_in_one_line(tmp_path) -> None:
    """A .keras file with a stateful LSTM, a ConvLSTM2D over a symbolic time axis and a
    masked Softmax: exit 2, one line listing all three, no output file."""
    from click.testing import CliRunner

    from portanet.cli import cli

    keras.utils.set_random_seed(1)
    ids = keras.Input(batch_shape=(2, 6), dtype="int32", name="ids")
    e = L.Embedding(9, F, mask_zero=True)(ids)
    a = L.LSTM(H, stateful=True, return_sequences=True, name="stateful_lstm")(e)
    b = L.Softmax(name="masked_softmax")(a)
    frames = keras.Input(batch_shape=(2, None, 4, 4, 2), name="frames")
    c = L.ConvLSTM2D(2, 3, name="conv_lstm")(frames)
    src = tmp_path / "variants.keras"
    keras.Model([ids, frames], [b, c]).save(src)
    out = tmp_path / "out.onnx"
    res = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    for part in ("LSTM (stateful=True) x1 (stateful_lstm)", "ConvLSTM2D (symbolic time axis: unrolled over a fixed number of steps) x1 (conv_lstm)",
                 "Softmax (with a mask from Embedding(mask_zero=True)/Masking) x1 (masked_softmax)"):
        assert part in lines[0]
    assert not out.exists()


def _composite():
    """Masks through Bidirectional, Concatenate, MultiHeadAttention, GRU and Attention."""
    keras.utils.set_random_seed(3)
    ids = keras.Input((None,), dtype="int32", name="ids")
    e = L.Embedding(9, 6, mask_zero=True)(ids)
    a = L.Bidirectional(L.LSTM(5, return_sequences=True))(e)
    a = L.Concatenate()([L.LayerNormalization(rms_scaling=True)(a), e])
    a = L.MultiHeadAttention(2, 3)(a, a, use_causal_mask=True)
    a = L.GRU(4, return_sequences=True, reset_after=False)(a)
    return keras.Model(ids, L.GlobalAveragePooling1D()(L.Attention()([a, a])))


def test_saved_file_converts_on_the_command_line(tmp_path) -> None:
    """A saved model holds its mask computations as graph nodes; ``portanet convert`` reads it
    in a fresh process (Keras on its light backend there) and matches TensorFlow Keras."""
    import subprocess
    import sys

    import portanet
    from portanet.runtime.session import Session
    from tests.converters.keras.sequence_parity import check_model

    src, out = tmp_path / "composite.keras", tmp_path / "composite.onnx"
    model = _composite()
    model.save(src)
    done = subprocess.run([sys.executable, "-m", "portanet.cli", "convert", str(src), "-o", str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Session(str(out)).inputs[0].name == "ids"
    check_model(portanet.load(str(out)), keras.saving.load_model(src), token_ids(), False, "ort")


def test_cli_verify_bisect_on_token_ids_stays_in_the_vocabulary(tmp_path) -> None:
    """Generated inputs for token ids stay below the Embedding's vocabulary (recorded on the
    input by the converter), so verify --bisect runs a masked model with a vocabulary of 6."""
    from click.testing import CliRunner

    from portanet.cli import cli

    keras.utils.set_random_seed(4)
    ids = keras.Input((None,), dtype="int32", name="ids")
    y = L.GRU(H)(L.Bidirectional(L.LSTM(H, return_sequences=True))(L.Embedding(6, F, mask_zero=True)(ids)))
    src = tmp_path / "tokens.keras"
    keras.Model(ids, y).save(src)
    res = CliRunner().invoke(cli, ["verify", str(src), "--shapes", "1x5,3x9", "--bisect"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "parity OK" in res.output and "no divergent layer" in res.output
