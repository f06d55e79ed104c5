"""Caffe -> IR: load the files, reduce to the deploy graph, check support, lower each layer.

Naming: IR values keep Caffe's blob names where unique. In-place layers (top == bottom)
are renamed into SSA form; the LAST writer of a blob gets the blob's name, so graph output
names equal Caffe's output blob names. Earlier writers get their layer's name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from portanet.converters.caffe import net as caffe_net
from portanet.converters.caffe import reader
from portanet.converters.caffe.context import Ctx, Out
from portanet.converters.caffe.net import FRAMEWORK, DeployNet, Layer
from portanet.converters.caffe.ops import HANDLERS
from portanet.converters.caffe.ops.normalization import can_fuse_scale
from portanet.converters.registry import ConvertOptions
from portanet.errors import ConversionError, InvalidInputError, InvalidModelError
from portanet.ir.builder import BATCH, TIME, GraphBuilder
from portanet.ir.shapes import infer_shapes

log = logging.getLogger(__name__)

PROTOTXT_SUFFIXES = (".prototxt", ".pbtxt", ".txt")
#: layer types the converter itself handles (not through the handler table)
_BUILTIN = {"Input"}


def classify_sources(paths: Sequence[Path], options: ConvertOptions) -> tuple[Path | None, Path | None]:
    """(prototxt, caffemodel) from the given paths (either order) and the --prototxt/--weights
    options; content decides where the suffix does not."""
    prototxt, weights = options.prototxt, options.weights
    for p in paths:
        if p in (prototxt, weights):
            continue
        if not p.is_file():
            raise InvalidInputError(f"{p}: no such file")
        with open(p, "rb") as f:
            head = f.read(4096)
        is_text = reader.looks_like_text(head) if head.strip() else p.suffix.lower() in PROTOTXT_SUFFIXES
        if is_text:
            if prototxt is not None:
                raise InvalidInputError(f"two prototxt files given: {prototxt} and {p}")
            prototxt = p
        else:
            if weights is not None:
                raise InvalidInputError(f"two caffemodel files given: {weights} and {p}")
            weights = p
    if prototxt is None and weights is None:
        raise InvalidInputError("no Caffe files given (expected a .prototxt and/or a .caffemodel)")
    return prototxt, weights


def load_deploy(
    prototxt: Path | None, weights: Path | None, options: ConvertOptions
) -> tuple[DeployNet, str, str | None]:
    """Parse the files, reduce to the deploy graph and attach weights.

    Returns the deploy net, the path naming the definition, and the weights path.
    """
    raw = reader.read_caffemodel(weights) if weights is not None else None
    if prototxt is not None:
        definition, where = reader.read_prototxt(prototxt), str(prototxt)
    else:
        assert raw is not None
        _require_topology(raw, str(weights))
        definition, where = reader.strip_blobs(raw), str(weights)
    stages = options.extra.get("caffe_stages")
    deploy = caffe_net.deploy_graph(definition, path=where, stages=set(stages) if stages else None)
    if raw is not None:
        caffe_net.attach_weights(deploy, raw, path=str(weights))
    caffe_net.infer_data_channels(deploy)
    caffe_net.apply_input_shapes(deploy, options.input_shapes, path=where)
    return deploy, where, str(weights) if weights is not None else None


def _require_topology(raw: Any, path: str) -> None:
    """A .caffemodel given alone must hold the layer graph (bottoms/tops), not only weights:
    many published caffemodels are weights-only and need their deploy prototxt."""
    layers = list(raw.layer) + list(raw.layers)
    if any(lp.bottom or lp.top for lp in layers) or raw.input:
        return
    what = (f"holds weights only ({len(layers)} layers without bottom/top blobs)" if layers
            else "holds no layers")
    raise InvalidModelError(
        f"{path}: this .caffemodel {what}, so it has no layer definitions to convert; pass the deploy "
        f"prototxt as well: portanet convert deploy.prototxt {Path(path).name} -o model.onnx"
    )


def check_supported(deploy: DeployNet, where: str) -> None:
    """One UnsupportedOpError listing every unsupported layer type, before converting."""
    HANDLERS.check_supported(
        ((_described(layer), layer.type) for layer in deploy.layers if layer.type not in _BUILTIN), path=where
    )


def _described(layer: Layer) -> str:
    """The layer's name, and for a ``Python`` layer (custom code run by Caffe's Python
    interpreter, not portable) the module and class it names."""
    if layer.type != "Python":
        return layer.name
    p = layer.param.python_param
    return f"{layer.name}: Python module '{p.module or '?'}', class '{p.layer or '?'}'"


class _Converter:
    def __init__(
        self, deploy: DeployNet, where: str, weights: str | None, options: ConvertOptions, sources: list[Path]
    ) -> None:
        self.deploy = deploy
        self.sources = sources
        self.where = where
        self.weights = weights
        self.options = options
        self.b = GraphBuilder(FRAMEWORK, name=deploy.name)
        #: blob name -> (current IR value, static shape)
        self.blobs: dict[str, Out] = {}
        #: values that already carry a final name (graph inputs, last writers)
        self.named: set[int] = set()
        self.fcache: dict[Any, ir.Value] = {}
        #: an input with a symbolic dim past the batch: layers that fold shapes compute them instead
        self.dynamic_spatial = any(
            isinstance(d, str) for spec in deploy.inputs for d in (spec.shape or [])[1:]
        )

    # -- analysis -------------------------------------------------------------------------
    def _last_writers(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, layer in enumerate(self.deploy.layers):
            for t in layer.tops:
                last[t] = i
        return last

    def _readers(self) -> dict[tuple[str, int], list[int]]:
        """Blob versions: (blob, writer layer index; -1 = graph input) -> reader layer indices."""
        version: dict[str, int] = {spec.name: -1 for spec in self.deploy.inputs}
        readers: dict[tuple[str, int], list[int]] = {}
        for i, layer in enumerate(self.deploy.layers):
            for bt in layer.bottoms:
                readers.setdefault((bt, version.get(bt, -1)), []).append(i)
            for t in layer.tops:
                version[t] = i
        return readers

    def _fusions(self, readers: dict[tuple[str, int], list[int]]) -> dict[int, int]:
        """BatchNorm index -> Scale index for pairs that become one BatchNormalization."""
        if self.options.extra.get("caffe_fuse_bn_scale", True) is False:
            return {}
        out: dict[int, int] = {}
        layers = self.deploy.layers
        for i, layer in enumerate(layers):
            if layer.type != "BatchNorm" or len(layer.tops) != 1:
                continue
            users = readers.get((layer.tops[0], i), [])
            if len(users) == 1 and can_fuse_scale(layer, layers[users[0]]):
                out[i] = users[0]
        return out

    # -- conversion -----------------------------------------------------------------------
    def run(self) -> ir.Model:
        b = self.b
        input_names = set()
        for spec in self.deploy.inputs:
            shape = self._input_shape(spec)
            with b.layer(spec.layer, spec.layer_type):
                v = b.add_input(spec.name, shape)
            input_names.add(spec.name)
            self.named.add(id(v))
            # static shapes track the declared batch; symbolic override dims count as 1
            declared = spec.shape if isinstance(shape[0], str) and shape[0] in (BATCH, TIME) else shape
            self.blobs[spec.name] = Out(v, [d if isinstance(d, int) else 1 for d in declared])
        last = self._last_writers()
        # reserve every final blob name so that no intermediate node takes it
        for blob in last:
            if blob not in input_names:
                b.unique_value_name(blob)
        readers = self._readers()
        fusions = self._fusions(readers)
        pending_bn: dict[int, Layer] = {}
        consumed: set[tuple[str, int]] = {k for k in readers}
        for i, layer in enumerate(self.deploy.layers):
            if i in fusions:
                pending_bn[fusions[i]] = layer
                # the Scale reads the BatchNorm's bottom directly
                self.blobs[layer.tops[0]] = self.blobs[layer.bottoms[0]]
                continue
            outs = self._convert_layer(layer, pending_bn.pop(i, None))
            if len(outs) != len(layer.tops):
                raise ConversionError(
                    f"produced {len(outs)} output(s) for {len(layer.tops)} top(s)",
                    framework=FRAMEWORK, layer=layer.name, layer_type=layer.type, path=self.where,
                )
            for top, out in zip(layer.tops, outs):
                if last[top] == i and top not in input_names:
                    self._give_name(out, top, layer)
                self.blobs[top] = out
        # net outputs: final blob versions no layer reads
        outputs = [
            t for t, i in sorted(last.items(), key=lambda kv: kv[1])
            if (t, i) not in consumed
        ]
        if not outputs:
            raise InvalidModelError(f"{self.where}: the deploy net has no outputs")
        for t in outputs:
            self._add_output(t, self.deploy.layers[last[t]], t in input_names)
        model = b.build(source_files=self.sources, options=self.options.as_metadata(), infer=False)
        annotate_shapes(model)
        return model

    def _input_shape(self, spec: caffe_net.InputSpec) -> list[int | str]:
        if spec.shape is None or not spec.shape:
            raise InvalidInputError(
                f"{self.where}: {spec.layer_type} layer '{spec.layer}' declares no shape for input "
                f"'{spec.name}'; pass --input-shape {spec.name}=1x3x224x224 (your net's shape)"
            )
        shape: list[int | str] = list(spec.shape)
        if spec.name not in self.options.input_shapes and "" not in self.options.input_shapes:
            role = self._recurrent_roles().get(spec.name)
            if role == "time":
                shape[0] = TIME  # (T, N, ...) sequences and cont: one conversion, any length
            elif role is None and self.options.dynamic_batch and len(shape) > 1:
                shape[0] = BATCH
            # role "fixed": a recurrent layer's static input (N, ...) or initial state
            # (1, N, H), whose sizes the sequences' N fixes: as declared
        return shape

    def _recurrent_roles(self) -> dict[str, str]:
        """Graph inputs read directly by recurrent layers (LSTM/RNN) -> "time" (bottoms x and
        cont: the leading axis is the time axis) or "fixed" (the other bottoms)."""
        roles: dict[str, str] = {}
        inputs = {spec.name for spec in self.deploy.inputs}
        for layer in self.deploy.layers:
            if layer.type in ("LSTM", "RNN"):
                for i, b in enumerate(layer.bottoms):
                    if b in inputs and roles.get(b) != "time":
                        roles[b] = "time" if i < 2 else "fixed"
        return roles

    def _convert_layer(self, layer: Layer, fused_bn: Layer | None) -> list[Out]:
        ins = [self.blobs[bt] for bt in layer.bottoms]
        ctx = Ctx(
            self.b, layer, [o.value for o in ins], [list(o.shape) for o in ins],
            weights_path=self.weights, fcache=self.fcache,
        )
        if fused_bn is not None:
            ctx.extra["bn"] = fused_bn
        if self.dynamic_spatial:
            ctx.extra["dynamic_spatial"] = True
        with self.b.layer(layer.name, layer.type):
            return HANDLERS.call(layer.type, layer.name, ctx, path=self.where)

    def _give_name(self, out: Out, blob: str, layer: Layer) -> None:
        """Name the value after ``blob`` (its last writer); values that already carry a
        final name (inputs, other blobs) are copied with an Identity."""
        v = out.value
        if id(v) in self.named or v.const_value is not None:
            with self.b.layer(layer.name, layer.type):
                v = self.b.op("Identity", [v], outputs=[f"{blob}_copy"])
            out.value = v
        v.name = blob
        self.named.add(id(v))

    def _add_output(self, blob: str, writer: Layer, is_input: bool) -> None:
        out = self.blobs[blob]
        if is_input:
            # a layer rewrote an input blob in place: the graph input keeps the name
            with self.b.layer(writer.name, writer.type):
                self.b.add_output(self.b.op("Identity", [out.value], outputs=[blob]))
            return
        if out.value.name != blob or out.value in self.b.outputs:
            with self.b.layer(writer.name, writer.type):
                v = self.b.op("Identity", [out.value], outputs=[f"{blob}_out"])
            v.name = blob
            out = Out(v, out.shape)
        self.b.add_output(out.value)


def annotate_shapes(model: ir.Model) -> None:
    """Annotate every value with ONNX shape inference (weights held aside, in place)."""
    infer_shapes(model)


def convert_files(paths: Sequence[Path], options: ConvertOptions) -> ir.Model:
    """Convert Caffe files (prototxt and/or caffemodel, any order) to the IR."""
    prototxt, weights = classify_sources(paths, options)
    deploy, where, weights_path = load_deploy(prototxt, weights, options)
    check_supported(deploy, where)
    if weights is None:
        needing = [layer.name for layer in deploy.layers if layer.type in _WEIGHTED]
        if needing:
            raise InvalidInputError(
                f"{where}: layers {', '.join(needing[:5])}{' ...' if len(needing) > 5 else ''} need weights; "
                "pass the .caffemodel as well"
            )
    sources = [p for p in (prototxt, weights) if p is not None]
    model = _Converter(deploy, where, weights_path, options, sources).run()
    log.info("converted %d Caffe layers into %d IR nodes", len(deploy.layers), sum(1 for _ in model.graph))
    return model


#: layer types that cannot convert without a caffemodel
_WEIGHTED = {"Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "PReLU", "Normalize", "BN"}
