"""Caffe reference runner: real BVLC Caffe where it is built, OpenCV's DNN module (4.x), an
independent Caffe implementation, otherwise.

``run_reference(sources, feeds, layers=..., options=...)`` follows the contract in
``portanet.parity.runners``; :func:`describe` says which reference it uses for given sources.

**Real Caffe** runs in a subprocess (it is never imported into portanet): the python is
``$PORTANET_CAFFE_PYTHON``, else the current interpreter when it can ``import caffe`` (the
user's own pycaffe), else ``<repo>/.venv-caffe/venv/bin/python`` (``make caffe-env``). It is used
when every layer of the net is one Caffe registers (SSD and fork layers are not: OpenCV runs
those nets). ``$PORTANET_CAFFE_REFERENCE`` (or the option ``caffe_reference``) = ``caffe`` /
``opencv`` forces one. Real Caffe also gives the loss and parameter gradients for
``verify --train`` (:func:`caffe_gradients`). Requested layers are read from an equivalent net
whose in-place layers write fresh blobs, so every layer's own output is observable.

**OpenCV** gets the original files whenever it can run them as
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

import importlib.machinery
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from portanet._deps import require
from portanet.errors import InvalidInputError, MissingDependencyError, RuntimeBackendError

log = logging.getLogger(__name__)

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


def _is_train_test(definition: Any) -> bool:
    """Whether a (V2-upgraded) net has data/loss layers or phase rules: not a deploy net."""
    from portanet.converters.caffe import net as caffe_net

    return any(
        lp.type in caffe_net.DATA_LAYERS or lp.include or lp.exclude or lp.type.endswith("Loss")
        or lp.type in caffe_net.DROPPED_LAYERS
        for lp in definition.layer
    )


def _deploy_layers(definition: Any, where: str, feeds: Mapping[str, np.ndarray]) -> list[Any]:
    """A train/test net's TEST-phase deploy graph as LayerParameters, its inputs turned into
    ``Input`` layers of the feeds' shapes (what OpenCV and real Caffe are given)."""
    from portanet.converters.caffe import net as caffe_net
    from portanet.converters.caffe import schema

    deploy = caffe_net.deploy_graph(definition, path=where)
    layers = []
    for spec in deploy.inputs:
        if spec.name not in feeds:
            raise InvalidInputError(f"no feed for input '{spec.name}'")
        lp = schema.messages()["LayerParameter"](name=spec.name, type="Input")
        lp.top.append(spec.name)
        lp.input_param.shape.add().dim.extend(feeds[spec.name].shape)
        layers.append(lp)
    return layers + [layer.param for layer in deploy.layers]


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
    train_test = _is_train_test(definition)
    layers = list(definition.layer)
    if train_test:
        layers = _deploy_layers(definition, str(prototxt or weights), feeds)
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


def run_opencv(
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



# ------------------------------------------------------------------------------ real Caffe
#: runs inside Caffe's python: argv = [request.json]; writes out.npz (or the layer types as JSON)
_SCRIPT = r"""
import json, os, sys
os.environ.setdefault("GLOG_minloglevel", "2")
import numpy as np
import caffe

caffe.set_mode_cpu()
req = json.load(open(sys.argv[1]))
if req.get("types"):
    json.dump(sorted(caffe.layer_type_list()), open(req["out"], "w"))
    sys.exit(0)
if req["weights"]:
    net = caffe.Net(req["prototxt"], caffe.TEST, weights=req["weights"])
else:
    net = caffe.Net(req["prototxt"], caffe.TEST)
feeds = dict(np.load(req["feeds"]))
for k, v in feeds.items():
    net.blobs[k].reshape(*v.shape)
net.reshape()
for k, v in feeds.items():
    net.blobs[k].data[...] = v
net.forward()
out = {}
for name in req["outputs"]:
    out["out:" + name] = net.blobs[name].data.copy()
for layer, blob in req["layers"]:
    out["layer:" + layer] = net.blobs[blob].data.copy()
if req.get("targets"):
    targets = dict(np.load(req["targets"]))
    loss = 0.0
    diffs = {}
    for name, t in targets.items():
        o = net.blobs[name].data.astype(np.float64)
        loss += float(np.mean((o - t) ** 2))
        diffs[name] = (2.0 * (o - t) / o.size).astype(np.float32)
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = 0
    net.backward(**diffs)
    out["loss"] = np.asarray(loss)
    for layer, blobs in net.params.items():
        for i, b in enumerate(blobs):
            out["value:%s:%d" % (layer, i)] = b.data.copy()
            out["grad:%s:%d" % (layer, i)] = b.diff.copy()
np.savez(req["out"], **out)
"""

REPO = Path(__file__).resolve().parents[3]
#: the python of the real Caffe ``make caffe-env`` builds
BUILT_CAFFE_PYTHON = REPO / ".venv-caffe" / "venv" / "bin" / "python"


def _imports_pycaffe() -> bool:
    """Whether this interpreter's ``import caffe`` is pycaffe: a regular package holding the
    compiled ``_caffe`` extension. A plain folder named ``caffe`` on ``sys.path`` (a folder of
    Caffe models in the working directory, a test folder) is found as a namespace package, which
    imports fine but is no Caffe."""
    try:
        spec = importlib.util.find_spec("caffe")
    except (ImportError, ValueError):  # a broken or half-imported 'caffe' module
        return False
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        return False
    return any(Path(folder, "_caffe" + suffix).is_file()
               for folder in spec.submodule_search_locations
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def caffe_python() -> Path | None:
    """The python that runs real Caffe, or None when there is none (see the module docstring)."""
    env = os.environ.get("PORTANET_CAFFE_PYTHON")
    if env:
        return Path(env) if Path(env).is_file() else None
    if _imports_pycaffe():
        return Path(sys.executable)
    built = BUILT_CAFFE_PYTHON
    return built if built.is_file() and os.access(built, os.X_OK) else None


def _subprocess(py: Path, request: dict[str, Any], folder: Path) -> subprocess.CompletedProcess:
    (folder / "run.py").write_text(_SCRIPT)
    (folder / "request.json").write_text(json.dumps(request))
    env = dict(os.environ, GLOG_minloglevel="2", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.run([str(py), str(folder / "run.py"), str(folder / "request.json")], env=env,
                          capture_output=True, text=True)


_LAYER_TYPES: dict[Path, frozenset[str]] = {}
#: python -> why its real Caffe did not start the last time it was asked
_START_ERRORS: dict[Path, str] = {}


def caffe_layer_types(py: Path | None = None) -> frozenset[str]:
    """The layer types the real Caffe registers (empty when there is no real Caffe). Only an
    answer is remembered: a Caffe that failed to start is asked again next time."""
    py = py or caffe_python()
    if py is None:
        return frozenset()
    if py in _LAYER_TYPES:
        return _LAYER_TYPES[py]
    with tempfile.TemporaryDirectory(prefix="portanet-caffe-") as tmp:
        out = Path(tmp) / "types.json"
        proc = _subprocess(py, {"types": True, "out": str(out)}, Path(tmp))
        if proc.returncode != 0:
            last = (proc.stderr or "").strip().splitlines()[-1:]
            _START_ERRORS[py] = f"{py} exits with {proc.returncode}: {last[0] if last else 'no message'}"
            log.warning("real Caffe at %s does not start: %s", py, _START_ERRORS[py])
            return frozenset()
        _START_ERRORS.pop(py, None)
        _LAYER_TYPES[py] = frozenset(json.loads(out.read_text()))
        return _LAYER_TYPES[py]


def caffe_start_error(py: Path | None = None) -> str | None:
    """Why the real Caffe run by ``py`` (default :func:`caffe_python`) does not start, or None
    when it answers or there is none."""
    py = py or caffe_python()
    if py is None or caffe_layer_types(py):
        return None
    return _START_ERRORS.get(py, f"{py} lists no layer types")


def _definition(sources: Sequence[Any], options: Any) -> tuple[Any, Path | None, Path | None]:
    from portanet.converters.caffe import net as caffe_net
    from portanet.converters.caffe import reader
    from portanet.converters.caffe.converter import classify_sources

    prototxt, weights = classify_sources([Path(s) for s in sources], _options(options))
    raw = reader.read_caffemodel(weights) if weights is not None else None
    definition = reader.read_prototxt(prototxt) if prototxt is not None else reader.strip_blobs(raw)
    caffe_net.upgrade_v1(definition)
    caffe_net.upgrade_inputs(definition)
    return definition, prototxt, weights


def _choice(options: Any) -> str:
    if isinstance(options, Mapping) and options.get("caffe_reference"):
        return str(options["caffe_reference"])
    return os.environ.get("PORTANET_CAFFE_REFERENCE", "auto")


def uses_real_caffe(sources: Sequence[Any], options: Any = None) -> bool:
    """Whether :func:`run_reference` runs real Caffe for these sources."""
    choice = _choice(options)
    if choice == "opencv":
        return False
    py = caffe_python()
    if py is None or not caffe_layer_types(py):
        if choice == "caffe":
            raise MissingDependencyError("real Caffe (pycaffe; `make caffe-env` builds it into .venv-caffe)", "caffe-ref")
        return False
    definition, _, _ = _definition(sources, options)
    unknown = {lp.type for lp in definition.layer} - caffe_layer_types(py)
    if unknown and choice == "caffe":
        raise RuntimeBackendError(f"real Caffe has no layer type(s) {', '.join(sorted(unknown))}")
    return not unknown


def describe(sources: Sequence[Any], options: Any = None) -> str:
    """Which implementation serves as the Caffe reference for ``sources``."""
    if uses_real_caffe(sources, options):
        return "BVLC Caffe 1.0 (pycaffe)"
    cv2 = require("cv2")
    return f"OpenCV DNN {cv2.__version__}"


#: layer types whose blob sizes real Caffe fixes when it sets the net up (``RecurrentLayer``:
#: the number of time steps; reshaping the input later fails "input number of timesteps changed")
_SETUP_SHAPED = frozenset({"LSTM", "RNN"})


def _input_shapes_from_feeds(layers: Sequence[Any], feeds: Mapping[str, np.ndarray]) -> None:
    """Declare the feeds' shapes in the ``Input`` layers (in place), so that layers shaped at
    setup (recurrent layers: the number of steps) are built for them."""
    for lp in layers:
        if lp.type == "Input" and lp.top and all(t in feeds for t in lp.top):
            lp.input_param.ClearField("shape")
            for t in lp.top:
                lp.input_param.shape.add().dim.extend(feeds[t].shape)


def _caffe_files(sources: Sequence[Any], feeds: Mapping[str, np.ndarray], options: Any, layers: Sequence[str],
                 folder: Path, force_backward: bool = False) -> tuple[Path, Path | None, dict[str, str]]:
    """(prototxt, caffemodel, requested layer -> blob holding its output) for real Caffe.

    Train/test nets become their TEST-phase deploy graph with ``Input`` layers of the feeds'
    shapes, and so do the ``Input`` layers of nets with recurrent layers (real Caffe fixes their
    number of steps at setup); with requested layers, every layer writes fresh blobs (in-place
    layers included)."""
    from google.protobuf import text_format

    from portanet.converters.caffe import schema

    definition, prototxt, weights = _definition(sources, options)
    train_test = _is_train_test(definition)
    setup_shaped = any(lp.type in _SETUP_SHAPED for lp in definition.layer)
    if prototxt is not None and not train_test and not layers and not force_backward and not setup_shaped:
        return prototxt, weights, {}
    if train_test:
        out_layers = _deploy_layers(definition, str(prototxt or weights), feeds)
    else:
        out_layers = list(definition.layer)
        if setup_shaped:
            _input_shapes_from_feeds(out_layers, feeds)
    blob_of: dict[str, str] = {}
    if layers:
        last = {t: i for i, lp in enumerate(out_layers) for t in lp.top}
        current: dict[str, str] = {}
        for i, lp in enumerate(out_layers):
            bottoms = [current.get(b, b) for b in lp.bottom]
            del lp.bottom[:]
            lp.bottom.extend(bottoms)
            tops = [t if last[t] == i else f"{t}@{lp.name}" for t in lp.top]
            current.update(zip(lp.top, tops))
            del lp.top[:]
            lp.top.extend(tops)
            if tops:
                blob_of[lp.name] = tops[0]
    net = schema.messages()["NetParameter"](name=definition.name)
    net.layer.extend(out_layers)
    if force_backward:  # without a loss layer Caffe computes no gradient otherwise
        net.force_backward = True
    path = folder / "deploy.prototxt"
    path.write_text(text_format.MessageToString(net))
    return path, weights, {k: v for k, v in blob_of.items() if k in set(layers)}


def run_caffe(
    sources: Sequence[Any],
    feeds: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    options: Any = None,
    targets: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run the net in real Caffe (TEST phase). Outputs by blob name, requested layers' outputs
    by layer name; with ``targets`` also ``loss`` and ``params`` [(layer, index, value, grad)]
    of one backward pass of the mean squared error to them."""
    py = caffe_python()
    if py is None:
        raise MissingDependencyError("real Caffe (pycaffe; `make caffe-env` builds it into .venv-caffe)", "caffe-ref")
    opts = options if isinstance(options, Mapping) else {}
    output_names = list(opts.get("output_names") or [])
    if targets:
        output_names = list(dict.fromkeys([*output_names, *targets]))
    with tempfile.TemporaryDirectory(prefix="portanet-caffe-") as tmp:
        folder = Path(tmp)
        proto, weights, blob_of = _caffe_files(sources, feeds, options, list(layers or []), folder,
                                               force_backward=bool(targets))
        buf = io.BytesIO()
        np.savez(buf, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()})
        (folder / "feeds.npz").write_bytes(buf.getvalue())
        request: dict[str, Any] = {
            "prototxt": str(proto), "weights": str(weights) if weights else "", "feeds": str(folder / "feeds.npz"),
            "outputs": output_names, "layers": list(blob_of.items()), "out": str(folder / "out.npz"),
        }
        if targets:
            tbuf = io.BytesIO()
            np.savez(tbuf, **{k: np.asarray(v, dtype=np.float64) for k, v in targets.items()})
            (folder / "targets.npz").write_bytes(tbuf.getvalue())
            request["targets"] = str(folder / "targets.npz")
        proc = _subprocess(py, request, folder)
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or proc.stdout or "").strip().splitlines() if ln.strip()]
            raise RuntimeBackendError(f"real Caffe failed to run the net: {lines[-1] if lines else proc.returncode}")
        with np.load(folder / "out.npz") as z:
            raw = {k: z[k] for k in z.files}
    result: dict[str, Any] = {k[4:]: v for k, v in raw.items() if k.startswith("out:")}
    result.update({k[6:]: v for k, v in raw.items() if k.startswith("layer:")})
    if targets:
        result["loss"] = float(raw["loss"])
        params = []
        for key in raw:
            if key.startswith("value:"):
                layer, idx = key[6:].rsplit(":", 1)
                params.append((layer, int(idx), raw[key], raw[f"grad:{layer}:{idx}"]))
        result["params"] = params
    return result


def run_reference(
    sources: Sequence[Any],
    feeds: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    options: Any = None,
) -> dict[str, np.ndarray]:
    """Run the Caffe net in real Caffe where it can, otherwise in OpenCV (module docstring)."""
    if uses_real_caffe(sources, options):
        log.info("Caffe reference: real Caffe (%s)", caffe_python())
        return run_caffe(sources, feeds, layers=layers, options=options)
    log.info("Caffe reference: OpenCV DNN")
    return run_opencv(sources, feeds, layers=layers, options=options)


def caffe_gradients(
    sources: Sequence[Any], feeds: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], options: Any = None,
) -> tuple[float, list[tuple[str, int, np.ndarray, np.ndarray]]]:
    """Loss and learnable-parameter gradients of one backward pass in real Caffe (TEST phase,
    ``force_backward``): BatchNorm statistics and parameters with ``lr_mult: 0`` are left out,
    as Caffe does not learn them."""
    if not uses_real_caffe(sources, {**(options if isinstance(options, Mapping) else {}), "caffe_reference": "caffe"}):
        raise RuntimeBackendError("real Caffe cannot run this net")
    definition, _, _ = _definition(sources, options)
    frozen = set()
    for lp in definition.layer:
        if lp.type == "BatchNorm":
            frozen.update((lp.name, i) for i in range(3))
        for i, spec in enumerate(lp.param):
            if spec.HasField("lr_mult") and spec.lr_mult == 0:
                frozen.add((lp.name, i))
    res = run_caffe(sources, feeds, options=options, targets=targets)
    params = [p for p in res["params"] if (p[0], p[1]) not in frozen]
    return res["loss"], params
