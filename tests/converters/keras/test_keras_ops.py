"""Raw ``keras.ops`` nodes in functional graphs: every handled operation against Keras itself,
through the default interface and ``nchw``, on ONNX Runtime and on the torch backend.

Every case starts from a Conv2D output, so the op sees an image held channels-first in the
IR (layout tracking) while Keras sees it channels-last. Reference: Keras' own inference.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import pytest

from tests.converters.keras.conftest import ATOL, RTOL, keras_outputs, random_inputs, to_nchw

keras = pytest.importorskip("keras")
K = keras.ops
L = keras.layers

Case = Callable[[object], object]


def pos(x):
    """A positive tensor (for log/sqrt/...): |x| + 0.5."""
    return K.abs(x) + 0.5


def unit(x):
    """A tensor in (-1, 1) (for arcsin/arctanh/...)."""
    return K.tanh(x) * 0.9


#: operation class name -> graph built on the (N, 5, 6, 4) conv output; one entry may exercise
#: several operations, the table below must cover every handled one
CASES: dict[str, Case] = {
    "Absolute": lambda x: K.abs(x),
    "Fabs": lambda x: K.fabs(x),
    "Negative": lambda x: K.negative(x),
    "Exp": lambda x: K.exp(x),
    "Log": lambda x: K.log(pos(x)),
    "Sqrt": lambda x: K.sqrt(pos(x)),
    "Sin": lambda x: K.sin(x),
    "Cos": lambda x: K.cos(x),
    "Tan": lambda x: K.tan(unit(x)),
    "Tanh": lambda x: K.tanh(x),
    "Sinh": lambda x: K.sinh(x),
    "Cosh": lambda x: K.cosh(x),
    "Arcsin": lambda x: K.arcsin(unit(x)),
    "Arccos": lambda x: K.arccos(unit(x)),
    "Arctan": lambda x: K.arctan(x),
    "Arcsinh": lambda x: K.arcsinh(x),
    "Arccosh": lambda x: K.arccosh(pos(x) + 1.0),
    "Arctanh": lambda x: K.arctanh(unit(x)),
    "Floor": lambda x: K.floor(x * 3.0),
    "Ceil": lambda x: K.ceil(x * 3.0),
    "Round": lambda x: K.round(x * 3.0),
    "Sign": lambda x: K.sign(x),
    "Reciprocal": lambda x: K.reciprocal(pos(x)),
    "Erf": lambda x: K.erf(x),
    "Sigmoid": lambda x: K.sigmoid(x),
    "Relu": lambda x: K.relu(x),
    "Softplus": lambda x: K.softplus(x),
    "Softsign": lambda x: K.softsign(x),
    "Selu": lambda x: K.selu(x),
    "LogicalNot": lambda x: K.where(K.logical_not(x > 0.1), x, 0.0),
    "Isnan": lambda x: K.where(K.isnan(x), 1.0, x),
    "Isinf": lambda x: K.where(K.isinf(x), 1.0, x),
    "Copy": lambda x: K.copy(x) * 2.0,
    "StopGradient": lambda x: K.stop_gradient(x) + 1.0,
    "Square": lambda x: K.square(x),
    "Rsqrt": lambda x: K.rsqrt(pos(x)),
    "Log1p": lambda x: K.log1p(pos(x)),
    "Expm1": lambda x: K.expm1(x),
    "Log2": lambda x: K.log2(pos(x)),
    "Log10": lambda x: K.log10(pos(x)),
    "Relu6": lambda x: K.relu6(x * 4.0),
    "HardSigmoid": lambda x: K.hard_sigmoid(x * 4.0),
    "HardSilu": lambda x: K.hard_silu(x * 4.0),
    "Silu": lambda x: K.silu(x),
    "LogSigmoid": lambda x: K.log_sigmoid(x),
    "Gelu": lambda x: [K.gelu(x), K.gelu(x, approximate=False)],
    "Elu": lambda x: K.elu(x, alpha=0.7),
    "Celu": lambda x: K.celu(x, alpha=0.8),
    "LeakyRelu": lambda x: K.leaky_relu(x, negative_slope=0.1),
    "HardTanh": lambda x: K.hard_tanh(x * 2.0),
    # binary, with scalars, same-layout tensors, lower-rank constants and tensors
    "Add": lambda x: [x + 1.0, K.add(x, K.mean(x, axis=[1, 2])[:, None, None, :])],
    "Subtract": lambda x: [2.0 - x, K.subtract(x, np.arange(4, dtype="float32"))],
    "Multiply": lambda x: x * K.sigmoid(x),
    "Divide": lambda x: K.divide(x, pos(x)),
    "TrueDivide": lambda x: K.true_divide(x, 3.0),
    "Power": lambda x: K.power(pos(x), 1.5),
    "Maximum": lambda x: [K.maximum(x, 0.2), K.maximum(x, K.flip(x, axis=1))],
    "Minimum": lambda x: K.minimum(x, np.linspace(-1, 1, 4).astype("float32")),
    "Equal": lambda x: K.where(K.equal(K.round(x), 0.0), x, -x),
    "NotEqual": lambda x: K.where(K.not_equal(K.round(x), 0.0), x, -x),
    "Greater": lambda x: K.where(K.greater(x, 0.2), x, 0.0),
    "GreaterEqual": lambda x: K.where(K.greater_equal(x, 0.2), x, 1.0),
    "Less": lambda x: K.where(K.less(x, 0.2), x, 0.0),
    "LessEqual": lambda x: K.where(K.less_equal(x, 0.2), 1.0, x),
    "LogicalAnd": lambda x: K.where(K.logical_and(x > 0.0, x < 1.0), x, 0.0),
    "LogicalOr": lambda x: K.where(K.logical_or(x < -0.5, x > 0.5), x, 0.0),
    "LogicalXor": lambda x: K.where(K.logical_xor(x > 0.0, x > 0.5), x, 0.0),
    "FloorDivide": lambda x: K.floor_divide(x * 5.0, 1.5),
    "Mod": lambda x: K.mod(x * 5.0, 1.5),
    "Where": lambda x: K.where(x > 0, x, K.exp(x) - 1.0),
    "Clip": lambda x: K.clip(x, -0.3, 0.4),
    "Cast": lambda x: K.cast(K.cast(x * 4.0, "int32"), "float32"),
    "Softmax": lambda x: [K.softmax(x), K.softmax(x, axis=1)],
    "LogSoftmax": lambda x: K.log_softmax(x, axis=2),
    "Mean": lambda x: [K.mean(x, axis=[1, 2]), K.mean(x, axis=-1, keepdims=True), K.mean(x)],
    "Sum": lambda x: K.sum(x, axis=2),
    "Max": lambda x: K.max(x, axis=(1, 3), keepdims=True),
    "Min": lambda x: K.min(x, axis=1),
    "Amax": lambda x: K.amax(x, axis=-1),
    "Amin": lambda x: K.amin(x, axis=[1, 2]),
    "Prod": lambda x: K.prod(x * 0.5 + 1.0, axis=3),
    "Logsumexp": lambda x: K.logsumexp(x, axis=1),
    "Var": lambda x: K.var(x, axis=[1, 2]),
    "Std": lambda x: K.std(x, axis=-1, keepdims=True),
    "All": lambda x: K.where(K.all(x > -1.0, axis=3), 1.0, 0.0),
    "Any": lambda x: K.where(K.any(x > 1.0, axis=1, keepdims=True), 1.0, 0.0),
    "Argmax": lambda x: K.cast(K.argmax(x, axis=-1), "float32"),
    "Argmin": lambda x: K.cast(K.argmin(x, axis=1, keepdims=True), "float32"),
    "Reshape": lambda x: K.reshape(x, (-1, 30, 4)),
    "Ravel": lambda x: K.ravel(x),
    "Transpose": lambda x: K.transpose(x, (0, 3, 1, 2)),
    "Swapaxes": lambda x: K.swapaxes(x, 1, 2),
    "Moveaxis": lambda x: K.moveaxis(x, 3, 1),
    "ExpandDims": lambda x: K.expand_dims(x, 2),
    "Squeeze": lambda x: K.squeeze(K.mean(x, axis=2, keepdims=True), axis=2),
    "Concatenate": lambda x: [K.concatenate([x, K.exp(x)], axis=-1), K.concatenate([x, x], axis=1)],
    "Stack": lambda x: K.stack([x, -x], axis=1),
    "Split": lambda x: [*K.split(x, 2, axis=-1), *K.split(x, [1, 4], axis=2)],
    "Tile": lambda x: K.tile(x, (1, 2, 1, 1)),
    "BroadcastTo": lambda x: K.broadcast_to(K.mean(x, axis=[0, 1, 2], keepdims=True), (3, 5, 6, 4)),
    "Flip": lambda x: K.flip(x, axis=2),
    "Cumsum": lambda x: K.cumsum(x, axis=1),
    "GetItem": lambda x: [x[:, 1:4, ::2, 0], x[..., 1:3], x[:, -1], x[:, None, 2, 1:], x[:, ::-1, :, 2:]],
    "Pad": lambda x: [K.pad(x, ((0, 0), (1, 2), (0, 1), (0, 0))),
                      K.pad(x, ((0, 0), (1, 1), (2, 2), (0, 0)), mode="reflect")],
    "Matmul": lambda x: K.matmul(K.reshape(x, (-1, 30, 4)), K.transpose(K.reshape(x, (-1, 30, 4)), (0, 2, 1))),
    "Einsum": lambda x: K.einsum("nhwc,nhwc->nc", x, x),
    "Resize": lambda x: [keras.ops.image.resize(x, (9, 7)),
                         keras.ops.image.resize(x, (10, 12), interpolation="nearest")],
}


def build(name: str):
    keras.utils.set_random_seed(1)
    inp = keras.Input((5, 6, 3), name="x")
    x = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    out = CASES[name](x)
    return keras.Model(inp, out if isinstance(out, list) else [out])


def test_table_enumerates_every_handled_operation() -> None:
    from portanet.converters.keras.ops.keras_ops import HANDLED

    assert sorted(HANDLED) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_keras_op_parity(name: str) -> None:
    """Both layouts x both backends, against Keras' own outputs."""
    import portanet
    from portanet.runtime.session import Session

    model = build(name)
    if name == "BroadcastTo":  # a fixed batch of 3
        xs = random_inputs(model, batch=3, seed=zlib.crc32(name.encode()) % 1000)
    else:
        xs = random_inputs(model, seed=zlib.crc32(name.encode()) % 1000)
    ref = keras_outputs(model, xs)
    for nchw in (False, True):
        ir_model = portanet.convert(model, nchw=nchw)
        for backend in ("ort", "torch"):
            s = Session(ir_model, backend=backend)
            feeds = {s.inputs[0].name: to_nchw(xs[0]) if nchw else xs[0]}
            out = s.run(feeds)
            got = [out[o.name] for o in s.outputs]
            assert len(got) == len(ref)
            for g, r in zip(got, ref):
                r = to_nchw(r) if nchw else r
                assert g.shape == r.shape, (backend, nchw, g.shape, r.shape)
                np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL, err_msg=f"{name} {backend} nchw={nchw}")


def test_mobilenet_v3_hard_swish_keeps_images_channels_first() -> None:
    """x * hard_sigmoid(x) on a conv output: no Transpose between the conv and the multiply."""
    import portanet

    model = build("HardSilu")
    ir_model = portanet.convert(model)
    ops = [n.op_type for n in ir_model.graph]
    # one Transpose in (NHWC interface), one out; none around the elementwise chain
    assert ops.count("Transpose") == 2, ops


# keras.applications' MobileNetV3 (hard-swish as raw ops.Add/ops.Multiply nodes) is checked in all
# four cells by test_keras_applications.py


def test_raw_ops_model_from_keras_file(tmp_path) -> None:
    """A .keras file whose functional graph holds raw ops converts from the file (and the CLI)."""
    import portanet
    from tests.converters.keras.conftest import assert_parity

    model = build("GetItem")
    path = tmp_path / "ops.keras"
    model.save(path)
    xs = random_inputs(model)
    assert_parity(portanet.convert(str(path)), model, xs, nchw=False)


def test_unsupported_raw_op_cli_one_line(tmp_path) -> None:
    """A raw op without an ONNX handler: exit 2, one line naming the op and the node, no output."""
    from click.testing import CliRunner

    from portanet.cli import cli

    keras.utils.set_random_seed(0)
    i = keras.Input((5,), name="x")
    model = keras.Model(i, K.sort(L.Dense(3, name="fc")(i)))
    path = tmp_path / "sorted.keras"
    model.save(path)
    out = tmp_path / "sorted.onnx"
    res = CliRunner().invoke(cli, ["convert", str(path), "-o", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "ops.Sort x1 (sort" in lines[0] and str(path) in lines[0], lines  # sort, sort_1 ...: Keras numbers op names per process
    assert not out.exists()
