"""Build MXNet reference models and outputs. Run BY the mxnet side environment:

    MXNET_MKLDNN_ENABLED=0 .venv-mxnet/bin/python model_zoo/mxnet/build.py OUT_DIR [ops zoo params case_study]

Writes, per model ``<name>``: ``<name>-symbol.json``, ``<name>-0000.params``,
``<name>-input.npz`` (inputs by variable name) and ``<name>-ref.npz`` (MXNet's outputs by
``sym.list_outputs()`` name), and ``manifest.json`` listing everything built. Zoo models are
Gluon model-zoo architectures with random weights and random BatchNorm statistics, exported
with ``HybridBlock.export``. Reference outputs use the reference (non-oneDNN) kernels.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MXNET_MKLDNN_ENABLED", "0")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

#: Gluon model-zoo name -> input size (smallest input the architecture accepts where its
#: head has a fixed pooling window; global-pool nets run smaller to save test time)
ZOO = {
    "resnet18_v1": 64,
    "resnet50_v2": 64,
    "mobilenet1.0": 64,
    "mobilenetv2_1.0": 64,
    "squeezenet1.1": 224,
    "densenet121": 224,
    "inceptionv3": 299,
}


def _save_io(out: Path, name: str, inputs: dict, outputs: dict) -> None:
    np.savez(out / f"{name}-input.npz", **inputs)
    np.savez(out / f"{name}-ref.npz", **outputs)


def _bn_blocks(net):
    from mxnet.gluon import nn

    out = []

    def visit(block):
        if isinstance(block, nn.BatchNorm):
            out.append(block)
        for child in block._children.values():
            visit(child)

    visit(net)
    return out


def _randomise_bn(net, x: np.ndarray, rng) -> None:
    """Random gamma/beta and random moving statistics in every BatchNorm, so a converter
    that ignores fix_gamma, eps or the moving statistics cannot match by accident.

    The moving statistics are each layer's actual input statistics on a calibration
    batch, perturbed at random (mean + U(-0.2, 0.2) std, var * U(0.5, 1.5)): random, but
    keeping activations near unit scale through deep nets, so outputs stay O(1) and the
    comparison measures conversion error rather than float32 round-off of exploding
    activations. One imperative pass sets them layer by layer: a pre-forward hook of each
    BatchNorm sees its real input (already normalised by the layers before it)."""
    for pname, p in net.collect_params().items():
        if pname.endswith("_gamma"):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif pname.endswith("_beta"):
            p.set_data(mx.nd.array(rng.uniform(-0.2, 0.2, p.shape)))

    def calibrate(block, inputs):
        data = inputs[0].asnumpy()
        axes = tuple(i for i in range(data.ndim) if i != 1)
        mean, var = data.mean(axis=axes), data.var(axis=axes) + 1e-3
        block.running_mean.set_data(mx.nd.array(mean + rng.uniform(-0.2, 0.2, mean.shape) * np.sqrt(var)))
        block.running_var.set_data(mx.nd.array(var * rng.uniform(0.5, 1.5, var.shape)))

    handles = [blk.register_forward_pre_hook(calibrate) for blk in _bn_blocks(net)]
    net(mx.nd.array(x))
    for h in handles:
        h.detach()


def _export_gluon(net, name: str, x: np.ndarray, out: Path, rng) -> dict:
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    calib = rng.standard_normal((4, *x.shape[1:])).astype(np.float32)
    net(mx.nd.array(x[:1]))  # finishes deferred initialisation
    _randomise_bn(net, calib, rng)
    net.hybridize()
    y = net(mx.nd.array(x))
    prefix = str(out / name)
    net.export(prefix, epoch=0)
    sym = mx.sym.load(prefix + "-symbol.json")
    outputs = {sym.list_outputs()[0]: y.asnumpy()}
    _save_io(out, name, {"data": x}, outputs)
    return {"name": name, "inputs": {"data": list(x.shape)}, "outputs": list(outputs)}


def build_zoo(out: Path) -> list[dict]:
    from mxnet.gluon.model_zoo import vision

    built = []
    for i, (name, size) in enumerate(ZOO.items()):
        rng = np.random.default_rng(100 + i)
        mx.random.seed(100 + i)
        net = vision.get_model(name, pretrained=False, classes=1000)
        x = rng.standard_normal((1, 3, size, size)).astype(np.float32)
        built.append(_export_gluon(net, name, x, out, rng))
    return built


def build_case_study(out: Path) -> list[dict]:
    """The MNIST CNN of the case study, fed real MNIST digits."""
    from mxnet.gluon import nn

    rng = np.random.default_rng(7)
    mx.random.seed(7)
    net = nn.HybridSequential(prefix="mnistcnn_")
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(2),
                nn.Conv2D(32, 3, padding=1), nn.BatchNorm(), nn.Activation("relu"), nn.MaxPool2D(2),
                nn.Flatten(), nn.Dense(64, activation="relu"), nn.Dropout(0.5), nn.Dense(10))
    images = REPO / "portanet" / "data" / "mnist-10k" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(images, "rb") as f:
        raw = f.read()
    digits = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:8]
    x = (digits.astype(np.float32) / 255.0).copy()
    return [_export_gluon(net, "mnist_cnn", x, out, rng)]


def _make_input(rng, shape, kind: str) -> np.ndarray:
    if kind == "positive":
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    if kind.startswith("indices:"):
        n = int(kind.split(":")[1])
        # integers, fractions and out-of-range values: MXNet truncates and clips
        vals = np.concatenate([np.arange(-2, n + 3), [1.7, 2.5, -0.5]])
        return rng.choice(vals, size=shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def build_ops(out: Path) -> list[dict]:
    from op_cases import CASES

    built = []
    for i, case in enumerate(CASES):
        rng = np.random.default_rng(1000 + i)
        sym = case.build(mx.sym)
        feeds = {k: _make_input(rng, v, case.kinds.get(k, "normal")) for k, v in case.inputs.items()}
        arg_shapes, _, aux_shapes = sym.infer_shape(**{k: v.shape for k, v in feeds.items()})
        args, aux = {}, {}
        for name, shape in zip(sym.list_arguments(), arg_shapes):
            if name in feeds or name.endswith("label"):
                continue
            args[name] = mx.nd.array(rng.standard_normal(shape) * 0.5)
        for name, shape in zip(sym.list_auxiliary_states(), aux_shapes):
            if name.endswith("var"):
                aux[name] = mx.nd.array(rng.uniform(0.5, 1.5, shape))
            else:
                aux[name] = mx.nd.array(rng.uniform(-0.3, 0.3, shape))
        prefix = str(out / case.name)
        mx.model.save_checkpoint(prefix, 0, sym, args, aux)
        sym_path = Path(prefix + "-symbol.json")
        if case.edit is not None:
            sym_path.write_text(case.edit(sym_path.read_text()))
        # the reference comes from MXNet reading the file as written
        sym = mx.sym.load(str(sym_path))
        shapes = {k: v.shape for k, v in feeds.items()}
        arg_shapes, _, _ = sym.infer_shape(**shapes)
        bind_args = {}
        for name, shape in zip(sym.list_arguments(), arg_shapes):
            if name in feeds:
                bind_args[name] = mx.nd.array(feeds[name])
            elif name in args:
                bind_args[name] = args[name]
            else:  # labels of training heads
                bind_args[name] = mx.nd.zeros(shape)
        exe = sym.bind(mx.cpu(), bind_args, aux_states={k: aux[k] for k in sym.list_auxiliary_states()},
                       grad_req="null")
        outs = exe.forward(is_train=False)
        outputs = {name: o.asnumpy() for name, o in zip(sym.list_outputs(), outs)}
        _save_io(out, case.name, feeds, outputs)
        built.append({"name": case.name, "inputs": {k: list(v.shape) for k, v in feeds.items()},
                      "outputs": list(outputs)})
    return built


def build_params(out: Path) -> list[dict]:
    """nd.save files in every dtype MXNet writes, in V2 and V3 (np_shape) records, plus
    sparse arrays; expected values saved beside them with numpy."""
    rng = np.random.default_rng(5)
    dtypes = ["float32", "float64", "float16", "uint8", "int8", "int32", "int64", "bool"]
    expected = {}
    arrays = {}
    for dt in dtypes:
        if dt == "bool":
            a = rng.integers(0, 2, (3, 4)).astype(bool)
        elif dt.startswith("float"):
            a = rng.standard_normal((2, 3, 4)).astype(dt)
        else:
            info = np.iinfo(dt)
            a = rng.integers(max(info.min, -1000), min(info.max, 1000), (5,), endpoint=True).astype(dt)
        arrays[f"arg:w_{dt}"] = a
        expected[f"arg:w_{dt}"] = a
    arrays["aux:bn_moving_var"] = rng.uniform(0.5, 1.5, (7,)).astype(np.float32)
    expected["aux:bn_moving_var"] = arrays["aux:bn_moving_var"]
    arrays["plain_name"] = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected["plain_name"] = arrays["plain_name"]
    mx.nd.save(str(out / "dtypes_v2.params"), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    # an unnamed list
    mx.nd.save(str(out / "list_v2.params"), [mx.nd.array(arrays["plain_name"]), mx.nd.array(arrays["arg:w_int32"],
                                                                                             dtype="int32")])
    # V3 records (numpy-shape semantics): a 0-d scalar and a zero-size array
    with mx.util.np_shape(True):
        v3 = {"scalar": mx.nd.array(np.float32(3.5)).reshape(()), "empty": mx.nd.zeros((2, 0, 3)),
              "w": mx.nd.array(arrays["arg:w_float32"])}
        mx.nd.save(str(out / "np_shape_v3.params"), v3)
    expected_v3 = {"scalar": np.asarray(3.5, np.float32), "empty": np.zeros((2, 0, 3), np.float32),
                   "w": arrays["arg:w_float32"]}
    # sparse arrays: a reader must refuse them clearly
    dense = np.zeros((4, 3), np.float32)
    dense[1] = [1, 2, 3]
    mx.nd.save(str(out / "row_sparse.params"), {"arg:rs": mx.nd.array(dense).tostype("row_sparse")})
    mx.nd.save(str(out / "csr.params"), {"arg:csr": mx.nd.array(dense).tostype("csr")})
    # round trip through mxnet itself
    loaded = mx.nd.load(str(out / "dtypes_v2.params"))
    for k, v in expected.items():
        assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k].asnumpy(), v), k
    np.savez(out / "dtypes_v2-expected.npz", **{k.replace(":", "__"): v for k, v in expected.items()})
    np.savez(out / "np_shape_v3-expected.npz", **expected_v3)
    return [{"name": "params", "files": ["dtypes_v2.params", "list_v2.params", "np_shape_v3.params",
                                        "row_sparse.params", "csr.params"]}]


BUILDERS = {"params": build_params, "ops": build_ops, "case_study": build_case_study, "zoo": build_zoo}


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    what = argv[1:] or list(BUILDERS)
    manifest = {}
    for key in what:
        manifest[key] = BUILDERS[key](out)
    (out / "manifest.json").write_text(json.dumps({"mxnet": mx.__version__, "built": manifest}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
