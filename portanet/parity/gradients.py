"""Gradient parity: one forward/backward on the same batch in the source framework and in
portanet's torch backend; the loss and every trainable parameter's gradient must agree.

Both sides run in inference mode (BatchNorm on running statistics, Dropout off) so the
comparison is deterministic; the loss is the mean squared difference between the outputs and
a seeded random target, which works for any output (logits, probabilities, maps).

Source parameters are matched to IR initializers through provenance (the parameter's layer
must be the source of a node consuming the initializer) and by value, allowing the axis
permutations/reshapes importers apply (Keras ``(kh, kw, in, out)`` kernels become
``(out, in, kh, kw)``); the gradient is permuted the same way before comparing.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet._deps import require
from portanet.errors import InvalidInputError
from portanet.ir.provenance import source_of
from portanet.parity.compare import TensorStats, compare

log = logging.getLogger(__name__)


@dataclass
class SourceParam:
    """A trainable source parameter: its name, its layer, its value and gradient (source layout)."""

    name: str
    layer: str
    value: np.ndarray
    grad: np.ndarray


@dataclass
class GradientReport:
    loss_source: float
    loss_ir: float
    loss_stats: TensorStats
    #: source parameter name -> (IR initializer name, stats)
    params: dict[str, tuple[str, TensorStats]] = field(default_factory=dict)
    #: source parameters without a matching IR initializer
    unmatched: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.loss_stats.passed and not self.unmatched and all(s.passed for _, s in self.params.values())

    def worst(self, n: int = 5) -> list[tuple[str, str, TensorStats]]:
        """The ``n`` parameters with the largest scale-relative gradient error."""
        rows = [(k, ir_name, s) for k, (ir_name, s) in self.params.items()]
        return sorted(rows, key=lambda r: (r[2].passed, -r[2].max_rel))[:n]

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "loss": {"source": self.loss_source, "portanet": self.loss_ir, **self.loss_stats.as_dict()},
            "parameters": len(self.params),
            "failed": [k for k, (_, s) in self.params.items() if not s.passed],
            "unmatched": self.unmatched,
            "worst": [{"param": k, "initializer": i, **s.as_dict()} for k, i, s in self.worst()],
        }


def target_for(outputs: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 7919)
    return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in outputs.items()}


# ------------------------------------------------------------------------------ source sides
def pytorch_gradients(
    module: Any, feeds: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray] | None, seed: int
) -> tuple[float, list[SourceParam], dict[str, np.ndarray]]:
    """Loss and parameter gradients of an eager PyTorch module (eval mode)."""
    torch = require("torch")
    from portanet.parity.runners.pytorch import _flatten_outputs

    module.eval()
    module.zero_grad(set_to_none=True)
    args = [torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values()]
    outs = _flatten_outputs(module(*args))
    names = list(targets) if targets else [f"output_{i}" for i in range(len(outs))]
    if targets is None:
        targets = target_for({n: o.detach().numpy() for n, o in zip(names, outs)}, seed)
    loss = sum(torch.mean((o - torch.from_numpy(targets[n])) ** 2) for n, o in zip(names, outs))
    loss.backward()
    params = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        grad = p.grad.detach().numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape), np.float32)
        layer = name.rsplit(".", 1)[0] if "." in name else ""
        params.append(SourceParam(name, layer, p.detach().numpy().copy(), grad))
    module.zero_grad(set_to_none=True)
    return float(loss.detach()), params, dict(targets)


def _keras_layers(model: Any) -> list[Any]:
    import keras

    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_keras_layers(layer))
        else:
            out.append(layer)
    return out


def keras_gradients(
    model: Any, feeds: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], nchw: bool
) -> tuple[float, list[SourceParam]]:
    """Loss and trainable-weight gradients of a Keras model (``training=False``).

    ``feeds`` and ``targets`` are in the IR's layout: NCHW when converted with ``nchw``."""
    tf = require("tensorflow")

    def to_keras(a: np.ndarray) -> np.ndarray:
        return np.transpose(a, (0, *range(2, a.ndim), 1)) if nchw and a.ndim >= 3 else a

    xs = [tf.constant(to_keras(a)) for a in feeds.values()]
    ts = [tf.constant(to_keras(t)) for t in targets.values()]
    weights = [(layer.name, w) for layer in _keras_layers(model) for w in layer.trainable_weights]
    with tf.GradientTape() as tape:
        outs = model(xs if len(xs) > 1 else xs[0], training=False)
        outs = list(outs) if isinstance(outs, list | tuple) else [outs]
        loss = tf.add_n([tf.reduce_mean(tf.square(o - t)) for o, t in zip(outs, ts)])
    grads = tape.gradient(loss, [w for _, w in weights])
    params = []
    for (layer, w), g in zip(weights, grads):
        value = np.asarray(w.numpy())
        grad = np.zeros_like(value) if g is None else np.asarray(tf.convert_to_tensor(g).numpy())
        params.append(SourceParam(getattr(w, "path", w.name), layer, value, grad))
    return float(loss.numpy()), params


# -------------------------------------------------------------------------------- IR side
def ir_gradients(
    model: ir.Model, feeds: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], device: str = "cpu"
) -> tuple[float, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Loss, gradients and values of every trainable IR initializer through the torch backend."""
    torch = require("torch")
    from portanet.runtime.torch_backend import lower

    module = lower(model, device)
    module.eval()
    args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device) for n in module.input_names]
    out = module(*args)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum(
        torch.mean((o - torch.from_numpy(targets[n]).to(device)) ** 2) for n, o in zip(module.output_names, outs)
    )
    loss.backward()
    grads, values = {}, {}
    for tname, p in module.named_parameters():
        ir_name = module.param_ir_names.get(tname)
        if ir_name is None:
            continue
        values[ir_name] = p.detach().cpu().numpy()
        grads[ir_name] = (p.grad.detach().cpu().numpy() if p.grad is not None
                          else np.zeros(tuple(p.shape), np.float32))
    return float(loss.detach().cpu()), grads, values


# ------------------------------------------------------------------------------- matching
def _layer_initializers(model: ir.Model) -> dict[str, list[str]]:
    """Source layer -> names of the initializers its nodes consume."""
    inits = model.graph.initializers
    out: dict[str, list[str]] = {}
    for node in model.graph:
        src = source_of(node)
        if src is None:
            continue
        for v in node.inputs:
            if v is not None and v.name in inits and v.name not in out.setdefault(src[0], []):
                out[src[0]].append(v.name)
    return out


def _transform_to(src: np.ndarray, dst: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(permutation, final shape) that turns ``src`` into exactly ``dst``, or None."""
    if src.size != dst.size:
        return None
    perms = itertools.permutations(range(src.ndim)) if src.ndim <= 5 else [tuple(range(src.ndim))]
    for perm in perms:
        t = np.transpose(src, perm)
        if t.shape == dst.shape or t.size == dst.size:
            if np.array_equal(t.reshape(dst.shape), dst):
                return tuple(perm), tuple(dst.shape)
    return None


def match_params(
    params: Sequence[SourceParam], ir_values: Mapping[str, np.ndarray], model: ir.Model
) -> tuple[dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]], list[str]]:
    """Source param -> (IR initializer, permutation, shape); and the unmatched source params."""
    by_layer = _layer_initializers(model)
    taken: set[str] = set()
    matched: dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]] = {}
    unmatched = []
    for p in params:
        found = None
        for pool in (by_layer.get(p.layer, []), list(ir_values)):
            for name in pool:
                if name in taken or name not in ir_values:
                    continue
                tf = _transform_to(p.value, ir_values[name])
                if tf is not None:
                    found = (name, *tf)
                    break
            if found:
                break
        if found is None:
            unmatched.append(p.name)
        else:
            taken.add(found[0])
            matched[p.name] = found
    return matched, unmatched


def compare_gradients(
    model: ir.Model,
    params: Sequence[SourceParam],
    loss_source: float,
    loss_ir: float,
    ir_grads: Mapping[str, np.ndarray],
    ir_values: Mapping[str, np.ndarray],
    *,
    rtol: float,
    atol: float,
) -> GradientReport:
    """Compare the losses (element-wise) and each matched gradient (scale-relative: a
    gradient's tiny entries carry the summation noise of the whole batch)."""
    loss_stats = compare(np.float64(loss_source), np.float64(loss_ir), rtol=rtol, atol=atol)
    report = GradientReport(loss_source, loss_ir, loss_stats)
    matched, report.unmatched = match_params(params, ir_values, model)
    for p in params:
        if p.name not in matched:
            continue
        ir_name, perm, shape = matched[p.name]
        ref = np.transpose(p.grad, perm).reshape(shape)
        report.params[p.name] = (ir_name, compare(ref, ir_grads[ir_name], rtol=rtol, atol=atol, elementwise=False))
    return report


def gradient_parity(
    framework: str,
    sources: Any,
    model: ir.Model,
    feeds: Mapping[str, np.ndarray],
    *,
    rtol: float,
    atol: float,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> GradientReport:
    """Gradient parity of a PyTorch, Keras or Caffe (real Caffe) source against the torch backend."""
    opts = dict(options or {})
    output_names = [v.name or "" for v in model.graph.outputs]
    if framework == "pytorch":
        from portanet.parity.runners.pytorch import load_module

        module = load_module(sources, opts)
        # the source's outputs decide the target shapes; names follow the IR's outputs
        from portanet.parity.runners.pytorch import run_module

        ref = run_module(module, feeds, output_names=output_names)
        targets = target_for({n: ref[n] for n in output_names}, seed)
        loss_src, params, _ = pytorch_gradients(module, feeds, targets, seed)
    elif framework == "keras":
        model_obj = _keras_model(sources)
        from portanet.parity.reference import run_reference

        ref, _ = run_reference("keras", sources, feeds, output_names=output_names, options=opts)
        targets = target_for(ref, seed)
        nchw = bool(_opt(opts, "nchw"))
        loss_src, params = keras_gradients(model_obj, feeds, targets, nchw)
    elif framework == "caffe":
        # real Caffe's backward (TEST phase, force_backward); OpenCV has none
        from portanet.parity.runners.caffe import caffe_gradients, caffe_python, run_caffe

        if caffe_python() is None:
            raise InvalidInputError(
                "--train gradient parity for Caffe sources needs real Caffe (pycaffe): `make caffe-env` builds it "
                "into .venv-caffe, or set PORTANET_CAFFE_PYTHON"
            )
        ref = run_caffe(sources, feeds, options={**opts, "output_names": output_names})
        targets = target_for({n: ref[n] for n in output_names}, seed)
        loss_src, raw = caffe_gradients(sources, feeds, targets, opts)
        params = [SourceParam(f"{layer}/{i}", layer, value, grad) for layer, i, value, grad in raw]
    else:
        raise InvalidInputError(f"--train gradient parity supports PyTorch, Keras and Caffe sources, not {framework}")
    loss_ir, grads, values = ir_gradients(model, feeds, targets, device)
    return compare_gradients(model, params, loss_src, loss_ir, grads, values, rtol=rtol, atol=atol)


def _opt(options: Mapping[str, Any], key: str) -> Any:
    if key in options:
        return options[key]
    co = options.get("convert_options")
    return getattr(co, key, None) if co is not None else None


def _keras_model(sources: Any) -> Any:
    src = sources[0] if isinstance(sources, list | tuple) and len(sources) == 1 else sources
    if isinstance(src, str | os.PathLike):
        from portanet.converters.keras.importer import load_keras_file

        return load_keras_file(src)
    return src
