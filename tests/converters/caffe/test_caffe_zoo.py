"""Whole-net parity: every zoo net converted by portanet and run by ONNX Runtime against
OpenCV's DNN module (through portanet's Caffe reference runner) on the same files."""

from __future__ import annotations

import gzip

import numpy as np
import onnx_ir as ir
import pytest

from portanet.converters.registry import ConvertOptions, convert_paths
from portanet.ir.metadata import FRAMEWORK_KEY, read_metadata
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY
from portanet.parity.runners.caffe import opencv_net
from portanet.parity.runners.caffe import run_opencv as run_reference  # these tests are about OpenCV
from portanet.runtime.session import Session

NETS = ["lenet", "lenet_v1", "caffenet", "resnet", "squeezenet", "misc"]
RTOL, ATOL = 1e-4, 1e-5


def _close(got: dict, ref: dict) -> dict[str, float]:
    errors = {}
    for name, arr in got.items():
        np.testing.assert_allclose(arr, ref[name], rtol=RTOL, atol=ATOL, err_msg=name)
        errors[name] = float(np.abs(arr - ref[name]).max())
    return errors


@pytest.fixture(scope="module")
def converted(zoo):
    """name -> (prototxt, caffemodel, IR model from prototxt + caffemodel)."""
    cache = {}

    def get(name):
        if name not in cache:
            proto, model = zoo(name)
            cache[name] = (proto, model, convert_paths([proto, model]))
        return cache[name]

    return get


#: the blob before each net's final softmax (softmax outputs are small: check the logits too)
PRE_SOFTMAX = {"lenet": "ip2", "lenet_v1": "ip2", "caffenet": "fc8", "resnet": "fc10", "squeezenet": "pool10",
               "misc": "flat"}


def with_outputs(model: ir.Model, names: list[str]) -> ir.Model:
    """A copy of ``model`` that also outputs the IR values ``names`` (Caffe blob names)."""
    import onnx

    proto = ir.serde.serialize_model(model)
    for name in names:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("name", NETS)
def test_zoo_net_matches_opencv(converted, name):
    proto, model, ir_model = converted(name)
    logits = PRE_SOFTMAX[name]
    session = Session(with_outputs(ir_model, [logits]))
    feeds = session.random_feeds(batch=2, seed=7)
    got = session.run(feeds)
    ref = run_reference([proto, model], feeds, layers=[logits])
    assert set(got) <= set(ref)
    _close(got, ref)
    assert np.abs(ref[logits]).max() > 0.1  # the logits are not vanishingly small


@pytest.mark.parametrize("name", NETS)
def test_caffemodel_alone_converts_to_the_same_graph(converted, name):
    """A .caffemodel carries its layer definitions: converting it alone gives the same
    outputs as with the prototxt (and the reference agrees)."""
    proto, model, with_proto = converted(name)
    alone = convert_paths([model])
    session = Session(alone)
    feeds = session.random_feeds(batch=1, seed=3)
    got = session.run(feeds)
    assert list(got) == [v.name for v in with_proto.graph.outputs]
    _close(got, Session(with_proto).run(feeds))
    _close(got, run_reference([model], feeds))


def test_either_order_and_flags(zoo):
    proto, model = zoo("lenet")
    a = convert_paths([model, proto])
    b = convert_paths([proto, model], ConvertOptions(prototxt=proto, weights=model))
    c = convert_paths([model], ConvertOptions(prototxt=proto))
    feeds = Session(a).random_feeds(seed=1)
    ref = Session(a).run(feeds)
    _close(Session(b).run(feeds), ref)
    _close(Session(c).run(feeds), ref)


def test_lenet_on_real_digits(converted, repo_root):
    """Real MNIST digits (the committed 10k copy) through LeNet, batch 16."""
    proto, model, ir_model = converted("lenet")
    with gzip.open(repo_root / "portanet/data/mnist-10k/t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    images = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:16].astype(np.float32) / 255.0
    got = Session(ir_model).run({"data": images})
    ref = run_reference([proto, model], {"data": images})
    _close(got, ref)
    assert got["prob"].shape == (16, 10)


def test_intermediate_layer_outputs(converted):
    """The runner's per-layer outputs match the IR values named after the Caffe blobs."""
    proto, model, ir_model = converted("resnet")
    feeds = Session(ir_model).random_feeds(seed=2)
    ref = run_reference([proto, model], feeds, layers=["res2a", "res2a_relu", "pool1"])
    # expose the IR values: res2a (last writer: res2a_relu), the Eltwise before it, pool1
    proto_model = ir.serde.serialize_model(ir_model)
    import onnx

    extra = {"res2a": "res2a", "pool1": "pool1"}
    for value in extra.values():
        proto_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(value))
    out = Session(ir.serde.deserialize_model(proto_model)).run(feeds)
    np.testing.assert_allclose(out["res2a"], ref["res2a_relu"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["pool1"], ref["pool1"], rtol=RTOL, atol=ATOL)
    # the Eltwise sum (before its in-place ReLU) has negative values; the blob does not
    assert ref["res2a"].min() < 0 <= out["res2a"].min()


def test_graph_naming_provenance_and_metadata(converted):
    proto, model, ir_model = converted("resnet")
    g = ir_model.graph
    assert [v.name for v in g.outputs] == ["prob"]
    assert g.inputs[0].name == "data" and str(g.inputs[0].shape[0]) == "N"
    names = {v.name for n in g for v in n.outputs}
    # in-place chains end in the blob's name (conv1 <- conv1_relu), Caffe names kept
    assert {"conv1", "pool1", "res2a", "res2b", "fc10", "prob"} <= names
    for node in g:
        assert node.metadata_props.get(SOURCE_KEY), node
        assert node.metadata_props.get(SOURCE_TYPE_KEY), node
    ops = [n.op_type for n in g]
    # every BatchNorm+Scale pair is one BatchNormalization (the optimizer may fold it later)
    assert ops.count("BatchNormalization") == sum(1 for line in proto.read_text().splitlines() if '"BatchNorm"' in line)
    assert "Mul" not in ops
    meta = read_metadata(ir_model)
    assert meta[FRAMEWORK_KEY] == "caffe"
    assert {f["file"] for f in meta["portanet.source_files"]} == {proto.name, model.name}


def test_dynamic_batch(converted):
    proto, model, ir_model = converted("squeezenet")
    session = Session(ir_model)
    for batch in (1, 3):
        feeds = session.random_feeds(batch=batch, seed=batch)
        _close(session.run(feeds), run_reference([proto, model], feeds))


def test_input_shape_override(zoo):
    proto, model = zoo("misc")
    ir_model = convert_paths([proto, model], ConvertOptions(input_shapes={"data": [1, 4, 16, 20]}))
    assert [d for d in ir_model.graph.inputs[0].shape] == [1, 4, 16, 20]
    session = Session(ir_model)
    feeds = session.random_feeds(seed=4)
    got = session.run(feeds)
    assert got["prob2"].shape == (1, 3, 16 * 20)
    _close(got, run_reference([proto, model], feeds))


def test_train_test_net_reduces_to_test_phase(zoo):
    """Data layers become inputs (shape from --input-shape), loss/accuracy go, TRAIN-only and
    stage-gated layers are dropped; the reference runs the same deploy graph."""
    proto, model = zoo("lenet_train_test")
    opts = ConvertOptions(input_shapes={"data": [2, 1, 28, 28]})
    for paths in ([proto, model], [model]):
        ir_model = convert_paths(paths, opts)
        assert [v.name for v in ir_model.graph.inputs] == ["data"]
        assert [v.name for v in ir_model.graph.outputs] == ["ip1"]
        assert [n.op_type for n in ir_model.graph] == ["Conv", "MaxPool", "Flatten", "Gemm"]
        feeds = Session(ir_model).random_feeds(seed=5)
        prepared = opencv_net(paths, feeds)
        assert any("TEST-phase" in note for note in prepared.notes)
        _close(Session(ir_model).run(feeds), run_reference(paths, feeds))
    staged = convert_paths([proto, model], ConvertOptions(input_shapes={"data": [2, 1, 28, 28]},
                                                          extra={"caffe_stages": ["debug"]}))
    assert "Mul" in [n.op_type for n in staged.graph]  # the stage-gated Power(scale 100) layer


def test_runner_rewrites_deviations_itself(caffe):
    """The runner gives OpenCV equivalent nets on its own (FLOOR pooling, transposed
    InnerProduct, LRN k != 1) and the outputs match the converted model."""
    text = caffe.net_text(
        'layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 3 alpha: 0.3 k: 2 } }\n'
        'layer { name: "pool" type: "Pooling" bottom: "lrn" top: "pool" '
        "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR } }\n"
        'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" '
        "inner_product_param { num_output: 5 transpose: true } }\n",
        (2, 3, 8, 8),
    )
    proto, model = caffe.write(text)
    ir_model = convert_paths([proto, model])
    feeds = Session(ir_model).random_feeds(batch=2, seed=9)
    prepared = opencv_net([proto, model], feeds)
    assert len(prepared.notes) == 3, prepared.notes
    _close(Session(ir_model).run(feeds), run_reference([proto, model], feeds))


def test_runner_accepts_verify_options_and_skips_unknown_layers(zoo):
    """The runner reads ConvertOptions from a verify-style options mapping, and leaves out
    requested layers OpenCV does not have (the runner contract allows missing layers)."""
    proto, model = zoo("lenet")
    ir_model = convert_paths([proto, model])
    feeds = Session(ir_model).random_feeds(seed=6)
    ref = run_reference([model], feeds, layers=["conv1", "not-a-layer"],
                        options={"convert_options": ConvertOptions(prototxt=proto)})
    assert set(ref) == {"prob", "conv1"}
    _close(Session(ir_model).run(feeds), ref)


def test_runner_swaps_axpy_bottoms(caffe):
    inputs = {"a": (1, 2, 1, 1), "x": (1, 2, 3, 3), "b": (1, 2, 3, 3)}
    proto, model = caffe.write(caffe.net_text(
        'layer { name: "y" type: "Axpy" bottom: "a" bottom: "x" bottom: "b" top: "y" }\n', inputs=inputs))
    ir_model = convert_paths([proto, model])
    rng = np.random.default_rng(12)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in inputs.items()}
    _close(Session(ir_model).run(feeds), run_reference([proto, model], feeds))


def test_resnet50_matches_opencv(zoo):
    """The benchmark's ResNet-50 (25.6 M parameters, 53 BatchNorm+Scale pairs) end to end;
    the pre-softmax fc1000 blob is compared too, since 1000-way softmax outputs are tiny."""
    proto, model = zoo("resnet50")
    ir_model = convert_paths([proto, model])
    assert sum(1 for n in ir_model.graph if n.op_type == "BatchNormalization") == 53
    import onnx

    proto_model = ir.serde.serialize_model(ir_model)
    proto_model.graph.output.append(onnx.helper.make_empty_tensor_value_info("fc1000"))
    session = Session(ir.serde.deserialize_model(proto_model))
    feeds = session.random_feeds(batch=1, seed=13)
    got = session.run(feeds)
    ref = run_reference([proto, model], feeds, layers=["fc1000"])
    np.testing.assert_allclose(got["prob"], ref["prob"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["fc1000"], ref["fc1000"], rtol=RTOL, atol=ATOL)
