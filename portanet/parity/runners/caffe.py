"""Caffe reference runner: OpenCV's DNN module (4.x), an independent Caffe implementation.

``run_reference(sources, feeds, layers=..., options=...)`` follows the contract in
``portanet.parity.runners``. OpenCV gets the original files whenever it can run them as
Caffe would. Where OpenCV is known to deviate from Caffe, or cannot read a construct, it is
given an equivalent rewritten net instead (listed by :func:`opencv_net` in its ``notes``):

* train/test nets (data layers, losses, phase rules): the TEST-phase deploy graph with
  ``Input`` layers of the feeds' shapes;
* Pooling ``round_mode: FLOOR`` (unknown to OpenCV): written as ``ceil_mode: false``;
* InnerProduct ``transpose: true`` (ignored by OpenCV): pre-transposed weights;
* LRN across channels with ``k != 1`` (OpenCV ignores k): alpha/k with k = 1, then a Power
  layer scaling by k^-beta;
* 0-d blobs (shared PReLU slope, scalar Scale): stored with shape (1,);
* Axpy (OpenCV computes ``a * bottom[2] + bottom[1]``): bottoms 1 and 2 swapped.

Constructs OpenCV cannot reproduce at all (``Bias`` layers, ``Log`` with base/scale/shift)
raise ``RuntimeBackendError``. Fusion and Winograd are disabled so intermediate layer
outputs are the layers' own and 3x3 convolutions are computed exactly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from portanet._deps import require
from portanet.errors import InvalidInputError, RuntimeBackendError

#: layer types OpenCV's Caffe importer gets wrong with no equivalent rewrite
_IRREPRODUCIBLE = {"Bias": "OpenCV has no Bias layer"}


@dataclass
class OpenCVNet:
    """The files handed to OpenCV and how Caffe blobs/layers map onto its layers."""

    prototxt: Path
    caffemodel: Path | None
    #: Caffe blob name -> OpenCV layer whose first output is that blob's final value
    blob_layer: dict[str, str]
    #: Caffe layer name -> OpenCV layer giving that layer's output
    layer_alias: dict[str, str]
    #: what was rewritten for OpenCV (empty when the original files are used)
    notes: list[str] = field(default_factory=list)
    tmpdir: Any = None


def _options(options: Any) -> Any:
    """ConvertOptions from ``options`` (itself, or a runner-options mapping holding one)."""
    from portanet.converters.registry import ConvertOptions

    if isinstance(options, ConvertOptions):
        return options
    if isinstance(options, Mapping) and isinstance(options.get("convert_options"), ConvertOptions):
        return options["convert_options"]
    return ConvertOptions()


def opencv_net(sources: Sequence[Any], feeds: Mapping[str, np.ndarray], options: Any = None) -> OpenCVNet:
    """Prepare the files OpenCV reads for the Caffe ``sources`` (see the module docstring)."""
    from google.protobuf import text_format

    from portanet.converters.caffe import net as caffe_net
    from portanet.converters.caffe import reader, schema
    from portanet.converters.caffe.converter import classify_sources

    opts = _options(options)
    prototxt, weights = classify_sources([Path(s) for s in sources], opts)
    raw = reader.read_caffemodel(weights) if weights is not None else None
    definition = reader.read_prototxt(prototxt) if prototxt is not None else reader.strip_blobs(raw)
    caffe_net.upgrade_v1(definition)
    caffe_net.upgrade_inputs(definition)

    notes: list[str] = []
    train_test = any(
        lp.type in caffe_net.DATA_LAYERS or lp.include or lp.exclude or lp.type.endswith("Loss")
        or lp.type in caffe_net.DROPPED_LAYERS
        for lp in definition.layer
    )
    layers = list(definition.layer)
    if train_test:
        deploy = caffe_net.deploy_graph(definition, path=str(prototxt or weights))
        layers = []
        for spec in deploy.inputs:
            if spec.name not in feeds:
                raise InvalidInputError(f"no feed for input '{spec.name}'")
            lp = schema.messages()["LayerParameter"](name=spec.name, type="Input")
            lp.top.append(spec.name)
            lp.input_param.shape.add().dim.extend(feeds[spec.name].shape)
            layers.append(lp)
        layers += [layer.param for layer in deploy.layers]
        notes.append("train/test net reduced to its TEST-phase deploy graph with Input layers")

    blobs: dict[str, list[np.ndarray]] = {}
    if raw is not None:
        for lp in [*raw.layer, *raw.layers]:
            if lp.name not in blobs and lp.blobs:
                blobs[lp.name] = [reader.blob_array(b) for b in lp.blobs]

    rewritten_weights = False
    floor_pooling = False
    out_layers: list[Any] = []
    alias: dict[str, str] = {}
    for lp in layers:
        if lp.type in _IRREPRODUCIBLE:
            raise RuntimeBackendError(f"layer '{lp.name}' ({lp.type}): {_IRREPRODUCIBLE[lp.type]}")
        if lp.type == "Log":
            p = lp.log_param
            if p.base != -1.0 or p.scale != 1.0 or p.shift != 0.0:
                raise RuntimeBackendError(
                    f"layer '{lp.name}' (Log): OpenCV ignores base/scale/shift and computes ln(x)"
                )
        out_layers.append(lp)
        if lp.type == "Pooling" and lp.pooling_param.round_mode == 1:
            floor_pooling = True
        if any(b.ndim == 0 for b in blobs.get(lp.name, [])):
            blobs[lp.name] = [b.reshape(1) if b.ndim == 0 else b for b in blobs[lp.name]]
            rewritten_weights = True
            notes.append(f"{lp.name}: 0-d blob stored with shape (1,)")
        if lp.type == "InnerProduct" and lp.inner_product_param.transpose and lp.name in blobs:
            w = blobs[lp.name][0]
            n = lp.inner_product_param.num_output
            blobs[lp.name][0] = w.reshape(-1, n).T.copy()
            lp.inner_product_param.transpose = False
            rewritten_weights = True
            notes.append(f"{lp.name}: InnerProduct transpose -> pre-transposed weights")
        if lp.type == "Axpy" and len(lp.bottom) == 3:
            # OpenCV computes a * bottom[2] + bottom[1]
            lp.bottom[1], lp.bottom[2] = lp.bottom[2], lp.bottom[1]
            notes.append(f"{lp.name}: Axpy bottoms 1 and 2 swapped")
        if lp.type == "LRN" and lp.lrn_param.norm_region == 0 and lp.lrn_param.k != 1.0:
            p = lp.lrn_param
            k, beta = p.k, p.beta
            top = lp.top[0]
            inner = f"{top}__lrn_k1"
            p.alpha, p.k = p.alpha / k, 1.0
            del lp.top[:]
            lp.top.append(inner)
            power = schema.messages()["LayerParameter"](name=f"{lp.name}__kscale", type="Power")
            power.bottom.append(inner)
            power.top.append(top)
            power.power_param.scale = float(k ** (-beta))
            out_layers.append(power)
            alias[lp.name] = power.name
            notes.append(f"{lp.name}: LRN k={k} -> LRN k=1 (alpha/k) then Power(scale k^-beta)")
    if floor_pooling:
        notes.append("Pooling round_mode FLOOR written as ceil_mode: false")

    blob_layer: dict[str, str] = {}
    for lp in out_layers:
        for t in lp.top:
            blob_layer[t] = lp.name
    for caffe_name, cv_name in alias.items():
        for t, ln in list(blob_layer.items()):
            if ln == caffe_name:
                blob_layer[t] = cv_name

    if not notes and prototxt is not None:
        return OpenCVNet(prototxt, weights, blob_layer, alias)

    tmp = tempfile.TemporaryDirectory(prefix="portanet-caffe-ref-")
    folder = Path(tmp.name)
    net = schema.messages()["NetParameter"](name=definition.name)
    net.layer.extend(out_layers)
    text = text_format.MessageToString(net)
    # OpenCV's proto spells PoolingParameter field 13 `bool ceil_mode`
    text = text.replace("round_mode: FLOOR", "ceil_mode: false").replace("round_mode: CEIL", "ceil_mode: true")
    proto_path = folder / "deploy.prototxt"
    proto_path.write_text(text)
    model_path = None
    if raw is not None:
        model_path = folder / "weights.caffemodel"
        if rewritten_weights or train_test or prototxt is None:
            wnet = schema.raw_messages()["NetParameter"](name=definition.name)
            for lp in out_layers:
                if lp.name not in blobs:
                    continue
                layer = wnet.layer.add(name=lp.name, type=lp.type)
                for arr in blobs[lp.name]:
                    b = layer.blobs.add()
                    b.shape.dim.extend(arr.shape)
                    b.data = np.asarray(arr, dtype="<f4").tobytes()
            model_path.write_bytes(wnet.SerializeToString())
        else:
            model_path = weights
    return OpenCVNet(proto_path, model_path, blob_layer, alias, notes, tmp)


def run_reference(
    sources: Sequence[Any],
    feeds: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    options: Any = None,
) -> dict[str, np.ndarray]:
    """Run the Caffe net in OpenCV: outputs by Caffe blob name (= the IR's output names),
    plus each requested Caffe layer's first output under the layer's name."""
    cv2 = require("cv2")
    prepared = opencv_net(sources, feeds, options)
    try:
        net = cv2.dnn.readNetFromCaffe(str(prepared.prototxt), str(prepared.caffemodel or ""))
    except cv2.error as exc:
        raise RuntimeBackendError(f"OpenCV cannot load the Caffe net: {str(exc).strip().splitlines()[-1]}") from exc
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)
    net.enableWinograd(False)
    for name, arr in feeds.items():
        net.setInput(np.ascontiguousarray(arr, dtype=np.float32), name)
    known = set(net.getLayerNames())
    unconnected = list(net.getUnconnectedOutLayersNames())
    # net outputs: blobs whose last writer's output nobody reads
    wanted: dict[str, str] = {}
    for name in unconnected:
        blobs = [b for b, ln in prepared.blob_layer.items() if ln == name]
        wanted[blobs[0] if blobs else name] = name
    for layer in layers or ():
        cv_name = prepared.layer_alias.get(layer, layer)
        if cv_name in known:  # layers OpenCV does not have are left out (the contract allows it)
            wanted[layer] = cv_name
    names = list(dict.fromkeys(wanted.values()))
    try:
        results = net.forward(names)
    except cv2.error as exc:
        raise RuntimeBackendError(f"OpenCV failed to run the Caffe net: {str(exc).strip().splitlines()[-1]}") from exc
    by_layer = dict(zip(names, results))
    return {key: np.asarray(by_layer[cv]) for key, cv in wanted.items()}
