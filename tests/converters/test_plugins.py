"""Users' layer handlers (``@portanet.register_layer``) in every importer: a plugin handles a
type portanet does not know, a plugin overrides a built-in handler, and a failing plugin ends
the CLI with one line naming the plugin, the layer and the problem (exit 2, no output file).

References are independent of the converter: OpenCV's DNN module for Caffe, Keras itself,
NumPy for the MXNet / CNTK / ONNX graphs (a few elementwise ops)."""

from __future__ import annotations

import json
import struct
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import portanet
from portanet.cli import cli
from portanet.converters.plugins import unregister_layer

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture()
def plugins():
    """Registered (framework, type) pairs are removed after the test: the tables are process-wide."""
    registered: list[tuple[str, str]] = []

    def register(framework: str, *types: str):
        registered.extend((framework, t) for t in types)
        return portanet.register_layer(framework, *types)

    yield register
    for framework, t in registered:
        unregister_layer(framework, t)


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def _plugin_file(tmp_path: Path, framework: str, layer_type: str, body: str, name: str = "my_layers.py") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(f'''
        import portanet

        @portanet.register_layer("{framework}", "{layer_type}")
        def handler(*args):
        ''') + textwrap.indent(textwrap.dedent(body), "    "))
    return p


def _assert_plugin_failure(res, out: Path, *expected: str) -> None:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    for e in expected:
        assert e in lines[0], lines[0]
    assert not out.exists()


# -- Caffe ------------------------------------------------------------------------------------
@pytest.fixture()
def lenet_custom(tmp_path):
    """LeNet whose Softmax is replaced by a custom layer type ``AddOne``; the OpenCV reference
    runs the unmodified LeNet up to ip2."""
    from model_zoo.caffe.writer import build

    proto, weights = build("lenet")
    text = proto.read_text().replace('layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }',
                                     'layer { name: "shift" type: "AddOne" bottom: "ip2" top: "shift" }')
    custom = tmp_path / "lenet_custom.prototxt"
    custom.write_text(text)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    return proto, custom, weights, x


def _opencv(proto, weights, x, layer):
    import cv2

    net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableFusion(False)
    net.setInput(x)
    return np.asarray(net.forward(layer))


def test_caffe_plugin_for_a_new_layer_type(plugins, lenet_custom) -> None:
    pytest.importorskip("cv2")
    from portanet.converters.caffe.context import Out

    proto, custom, weights, x = lenet_custom

    @plugins("caffe", "AddOne")
    def add_one(ctx):
        return [Out(ctx.b.op("Add", [ctx.x, ctx.b.const(np.float32(1.0))]), list(ctx.shape))]

    model = portanet.convert(str(custom), str(weights))
    (got,) = portanet.Session(model).run({"data": x}).values()
    np.testing.assert_allclose(got, _opencv(proto, weights, x, "ip2") + 1.0, rtol=RTOL, atol=ATOL)
    assert {n.metadata_props["portanet.source"] for n in model.graph if n.op_type == "Add"} >= {"shift"}


def test_caffe_plugin_overrides_a_builtin(plugins, lenet_custom, tmp_path) -> None:
    pytest.importorskip("cv2")
    from portanet.converters.caffe.context import Out

    proto, _custom, weights, x = lenet_custom

    @plugins("caffe", "ReLU")
    def no_relu(ctx):  # the identity instead of the built-in ReLU
        return [Out(ctx.b.op("Identity", [ctx.x]), list(ctx.shape))]

    model = portanet.convert(str(proto), str(weights))
    (got,) = portanet.Session(model).run({"data": x}).values()
    no_relu_proto = tmp_path / "norelu.prototxt"
    no_relu_proto.write_text(proto.read_text().replace('layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }',
                                                       ""))
    np.testing.assert_allclose(got, _opencv(no_relu_proto, weights, x, "prob"), rtol=RTOL, atol=ATOL)
    assert "Relu" not in {n.op_type for n in model.graph}


def test_caffe_failing_plugin_cli(lenet_custom, tmp_path) -> None:
    _proto, custom, weights, _x = lenet_custom
    plugin = _plugin_file(tmp_path, "caffe", "AddOne", 'raise ValueError("scale blob missing")')
    out = tmp_path / "m.onnx"
    try:
        res = _cli("convert", str(custom), str(weights), "-o", str(out), "--plugin", str(plugin))
    finally:
        unregister_layer("caffe", "AddOne")
    _assert_plugin_failure(res, out, "plugin my_layers.py", "layer 'shift' (AddOne)", "scale blob missing")


def test_caffe_cli_plugin_converts(lenet_custom, tmp_path) -> None:
    pytest.importorskip("cv2")
    proto, custom, weights, x = lenet_custom
    plugin = _plugin_file(tmp_path, "caffe", "AddOne", '''
        import numpy as np
        from portanet.converters.caffe.context import Out
        (ctx,) = args
        return [Out(ctx.b.op("Add", [ctx.x, ctx.b.const(np.float32(1.0))]), list(ctx.shape))]
    ''')
    out = tmp_path / "m.onnx"
    try:
        res = _cli("convert", str(custom), str(weights), "-o", str(out), "--plugin", str(plugin))
    finally:
        unregister_layer("caffe", "AddOne")
    assert res.exit_code == 0, res.output
    (got,) = portanet.Session(portanet.load(out)).run({"data": x}).values()
    np.testing.assert_allclose(got, _opencv(proto, weights, x, "ip2") + 1.0, rtol=RTOL, atol=ATOL)


# -- MXNet ------------------------------------------------------------------------------------
def _write_params(path: Path, named: dict[str, np.ndarray]) -> None:
    """An nd.save container (V2 records) following MXNet's documented layout."""
    from portanet.converters.mxnet.params import DTYPES, V2_MAGIC

    flags = {v: k for k, v in DTYPES.items()}
    out = struct.pack("<QQQ", 0x112, 0, len(named))
    for a in named.values():
        out += struct.pack("<Iii", V2_MAGIC, 0, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
        out += struct.pack("<iii", 1, 0, flags[a.dtype]) + a.tobytes()
    out += struct.pack("<Q", len(named))
    for n in named:
        out += struct.pack("<Q", len(n.encode())) + n.encode()
    path.write_bytes(out)


@pytest.fixture()
def mxnet_custom(tmp_path):
    """data -> FullyConnected(3) -> relu -> Custom(op_type=addone)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [
        {"op": "null", "name": "data", "inputs": []},
        {"op": "null", "name": "fc_weight", "inputs": []},
        {"op": "null", "name": "fc_bias", "inputs": []},
        {"op": "FullyConnected", "name": "fc", "attrs": {"num_hidden": "3"}, "inputs": [[0, 0, 0], [1, 0, 0], [2, 0, 0]]},
        {"op": "Activation", "name": "relu", "attrs": {"act_type": "relu"}, "inputs": [[3, 0, 0]]},
        {"op": "Custom", "name": "shift", "attrs": {"op_type": "addone"}, "inputs": [[4, 0, 0]]},
    ]
    sym = tmp_path / "net-symbol.json"
    sym.write_text(json.dumps({"nodes": nodes, "arg_nodes": [0, 1, 2], "heads": [[5, 0, 0]],
                               "node_row_ptr": list(range(len(nodes) + 1)), "attrs": {"mxnet_version": ["int", 10901]}}))
    params = tmp_path / "net-0000.params"
    _write_params(params, {"arg:fc_weight": w, "arg:fc_bias": b})
    x = rng.standard_normal((2, 4)).astype(np.float32)
    return sym, params, x, x @ w.T + b  # the FullyConnected output, in NumPy


def test_mxnet_plugin_new_type_and_override(plugins, mxnet_custom) -> None:
    sym, params, x, fc = mxnet_custom

    @plugins("mxnet", "Custom")
    def custom(ctx):
        assert ctx.attrs.str("op_type") == "addone"
        return ctx.b.op("Add", [ctx.input(0), ctx.b.const(np.float32(1.0))])

    model = portanet.convert(str(sym), str(params), input_shapes={"data": [2, 4]})
    (got,) = portanet.Session(model).run({"data": x}).values()
    np.testing.assert_allclose(got, np.maximum(fc, 0) + 1.0, rtol=RTOL, atol=ATOL)

    @plugins("mxnet", "Activation")
    def tanh_instead(ctx):
        return ctx.b.op("Tanh", [ctx.input(0)])

    model = portanet.convert(str(sym), str(params), input_shapes={"data": [2, 4]})
    (got,) = portanet.Session(model).run({"data": x}).values()
    np.testing.assert_allclose(got, np.tanh(fc) + 1.0, rtol=RTOL, atol=ATOL)


def test_mxnet_failing_plugin_cli(mxnet_custom, tmp_path) -> None:
    sym, params, _x, _fc = mxnet_custom
    plugin = _plugin_file(tmp_path, "mxnet", "Custom", 'raise KeyError("op_type")')
    out = tmp_path / "m.onnx"
    try:
        res = _cli("convert", str(sym), str(params), "-o", str(out), "--input-shape", "data=2x4", "--plugin", str(plugin))
    finally:
        unregister_layer("mxnet", "Custom")
    _assert_plugin_failure(res, out, "plugin my_layers.py", "layer 'shift' (Custom)", "KeyError")


# -- Keras ------------------------------------------------------------------------------------
def _keras_model():
    keras = pytest.importorskip("keras")

    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    keras.utils.set_random_seed(0)
    i = keras.Input((5,), name="x")
    y = keras.layers.ReLU(name="relu")(keras.layers.Dense(3, name="fc")(i))
    return keras.Model(i, Doubler(name="double")(y))


def test_keras_plugin_new_type_and_override(plugins) -> None:
    model = _keras_model()
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    fc = np.asarray(model.get_layer("fc")(x))  # Keras' own Dense output

    @plugins("keras", "Doubler")
    def triple(ctx, layer, inputs, outputs):  # deliberately not what the layer does: proves it ran
        ctx.set(outputs[0], ctx.op("Mul", [ctx.get(inputs[0]), ctx.const(3.0)]))

    ir_model = portanet.convert(model)
    (got,) = portanet.Session(ir_model).run({"x": x}).values()
    np.testing.assert_allclose(got, np.maximum(fc, 0) * 3.0, rtol=RTOL, atol=ATOL)

    @plugins("keras", "ReLU")
    def abs_relu(ctx, layer, inputs, outputs):
        x_, perm = ctx.get_any(inputs[0])
        ctx.set(outputs[0], ctx.op("Abs", [x_]), perm)

    (got,) = portanet.Session(portanet.convert(model)).run({"x": x}).values()
    np.testing.assert_allclose(got, np.abs(fc) * 3.0, rtol=RTOL, atol=ATOL)


def test_keras_failing_plugin_names_it(plugins) -> None:
    from portanet.errors import ConversionError

    @plugins("keras", "Doubler")
    def broken(ctx, layer, inputs, outputs):
        raise RuntimeError("no idea how to double")

    with pytest.raises(ConversionError) as info:
        portanet.convert(_keras_model())
    msg = str(info.value)
    assert "\n" not in msg and "plugin test_plugins.py failed" in msg
    assert "layer 'double' (Doubler)" in msg and "no idea how to double" in msg


def test_trust_code_lasts_one_command(tmp_path) -> None:
    """Regression: ``--trust-code`` of one in-process CLI command (the README test runs the CLI
    in-process) stayed on for the rest of the process, so a later command loaded a file's
    Lambda code without being asked to (seen as an order-dependent failure under pytest-xdist)."""
    import keras

    from portanet.converters.plugins import code_trusted

    inp = keras.Input((4,), name="x")
    path = tmp_path / "lambdas.keras"
    keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)).save(path)
    trusted = _cli("convert", str(path), "-o", str(tmp_path / "trusted.onnx"), "--trust-code")
    assert trusted.exit_code == 0, trusted.output
    assert not code_trusted()
    refused = _cli("convert", str(path), "-o", str(tmp_path / "refused.onnx"))
    assert refused.exit_code == 2 and "--trust-code" in refused.output, refused.output
    assert not (tmp_path / "refused.onnx").exists()


# -- CNTK -------------------------------------------------------------------------------------
@pytest.fixture()
def cntk_relu(tmp_path):
    from model_zoo.cntk.writer import CntkWriter

    w = CntkWriter()
    x = w.input((4,))
    return w.save(tmp_path / "relu.model", w.op("ReLU", [x], name="act"))


def test_cntk_plugin_overrides_a_builtin(plugins, cntk_relu) -> None:
    from portanet.converters.cntk.context import T

    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    (got,) = portanet.Session(portanet.convert(str(cntk_relu))).run(
        {portanet.convert(str(cntk_relu)).graph.inputs[0].name: x}).values()
    np.testing.assert_allclose(got, np.maximum(x, 0), rtol=RTOL, atol=ATOL)  # the built-in

    @plugins("cntk", "ReLU")
    def relu6(ctx, f, ins):
        t = ins[0]
        return T(ctx.b.op("Clip", [t.value, ctx.b.const(np.float32(0.0)), ctx.b.const(np.float32(0.5))]),
                 t.shape, t.batched)

    model = portanet.convert(str(cntk_relu))
    (got,) = portanet.Session(model).run({model.graph.inputs[0].name: x}).values()
    np.testing.assert_allclose(got, np.clip(x, 0, 0.5), rtol=RTOL, atol=ATOL)


def test_cntk_failing_plugin_cli(cntk_relu, tmp_path) -> None:
    plugin = _plugin_file(tmp_path, "cntk", "ReLU", 'raise ValueError("unexpected rank")', name="cntk_layers.py")
    out = tmp_path / "m.onnx"
    try:
        res = _cli("convert", str(cntk_relu), "-o", str(out), "--plugin", str(plugin))
    finally:
        unregister_layer("cntk", "ReLU")
    _assert_plugin_failure(res, out, "plugin cntk_layers.py", "(ReLU)", "unexpected rank")


# -- ONNX custom domains ------------------------------------------------------------------------
@pytest.fixture()
def onnx_custom(tmp_path):
    """x -> Relu -> com.example::ScaleShift(scale=2, shift=1) -> y."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("ScaleShift", ["r"], ["y"], name="ss", domain="com.example", scale=2.0, shift=1.0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    return path


def _scale_shift(ctx):
    y = ctx.op("Mul", [ctx.inputs[0], ctx.const(ctx.attrs["scale"])])
    return [ctx.op("Add", [y, ctx.const(ctx.attrs["shift"])])]


def test_onnx_custom_domain_expanded(plugins, onnx_custom, tmp_path) -> None:
    plugins("onnx", "com.example::ScaleShift")(_scale_shift)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    model = portanet.convert(str(onnx_custom))
    assert {n.domain for n in model.graph} == {""}
    assert "com.example" not in model.opset_imports
    (got,) = portanet.Session(model).run({"x": x}).values()
    np.testing.assert_allclose(got, np.maximum(x, 0) * 2.0 + 1.0, rtol=RTOL, atol=ATOL)
    # the torch backend runs it too, and the saved file passes the ONNX checker
    (got,) = portanet.Session(model, backend="torch").run({"x": x}).values()
    np.testing.assert_allclose(got, np.maximum(x, 0) * 2.0 + 1.0, rtol=RTOL, atol=ATOL)
    portanet.save(model, tmp_path / "expanded.onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "expanded.onnx"), full_check=True)

    @plugins("onnx", "Relu")
    def relu_as_abs(ctx):  # overrides the standard op (a built-in pass-through)
        return [ctx.op("Abs", [ctx.inputs[0]])]

    (got,) = portanet.Session(portanet.convert(str(onnx_custom))).run({"x": x}).values()
    np.testing.assert_allclose(got, np.abs(x) * 2.0 + 1.0, rtol=RTOL, atol=ATOL)


def test_onnx_failing_plugin_cli(onnx_custom, tmp_path) -> None:
    plugin = _plugin_file(tmp_path, "onnx", "com.example::ScaleShift", 'raise ValueError("shift must be int")')
    out = tmp_path / "m.onnx"
    try:
        res = _cli("convert", str(onnx_custom), "-o", str(out), "--plugin", str(plugin))
    finally:
        unregister_layer("onnx", "com.example::ScaleShift")
    _assert_plugin_failure(res, out, "plugin my_layers.py", "layer 'ss' (com.example::ScaleShift)", "shift must be int")


def test_plugin_file_that_does_not_load(tmp_path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("import does_not_exist_anywhere\n")
    out = tmp_path / "m.onnx"
    res = _cli("convert", str(bad), "-o", str(out), "--plugin", str(bad))
    _assert_plugin_failure(res, out, "--plugin", "broken.py", "does_not_exist_anywhere")


def test_unknown_framework() -> None:
    from portanet.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="unknown framework 'tensorflow'"):
        portanet.register_layer("tensorflow", "X")
