"""``quantize``: -O2 clean-up, calibration on the user's data, ONNX Runtime's quantizer, an
evaluation of float against int8 on the test split and, over budget, the sensitivity fallback."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from portanet.errors import InvalidInputError, RuntimeBackendError
from portanet.ir.io import load_onnx, save_onnx
from portanet.ir.metadata import set_json
from portanet.parity.quantized import QUANTIZE_KEY
from portanet.quantize import engine as _engine
from portanet.quantize.calibration import ArrayReader, calibration
from portanet.quantize.data import PreparedData, prepare_data
from portanet.quantize.evaluate import Metrics, accuracy_drop, file_size, has_class_axis, latency_ms, metrics
from portanet.quantize.evaluate import run_outputs as _run
from portanet.quantize.fallback import candidate_layers, fallback
from portanet.quantize.report import PrecisionRow, QuantizeReport

log = logging.getLogger(__name__)

#: ops that mark a model as already quantized
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                           "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulNBits"})


@dataclass
class QuantizeOptions:
    """Settings of ``portanet quantize`` (every field has a usable default)."""

    mode: str = "static"
    calibration: str = "minmax"
    #: calibration samples drawn from the training split
    samples: int = 256
    per_channel: bool = True
    #: accuracy points int8 may lose on the test split; over it, layers fall back to float
    max_accuracy_drop: float | None = None
    #: evaluate on the first N test samples (None: all)
    test_samples: int | None = None
    #: evaluation samples of each per-layer sensitivity trial
    sensitivity_samples: int = 500
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    normalize: bool = True
    seed: int = 0
    #: batch sizes whose ORT latency the table shows (empty: no timing)
    latency_batches: Sequence[int] = (1, 32)
    bench: dict[str, Any] = field(default_factory=lambda: {"warmup": 2, "iters": 10, "min_seconds": 0.2})

    def validate(self) -> None:
        _engine.engine(self.mode)
        calibration(self.calibration)
        if self.samples < 1:
            raise InvalidInputError(f"--samples must be at least 1, received {self.samples}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise InvalidInputError(f"--max-accuracy-drop must be >= 0, received {self.max_accuracy_drop}")


@dataclass
class QuantizeResult:
    model: ir.Model
    float_model: ir.Model
    report: QuantizeReport


def check_quantizable(model: ir.Model, where: str) -> None:
    """Refuse models that are already quantized or hold no float weights."""
    ops = {n.op_type for n in model.graph}
    done = sorted(ops & QUANTIZED_OPS)
    if done:
        raise InvalidInputError(f"{where}: the model is already quantized ({', '.join(done)} nodes)")
    floats = [v for v in model.graph.initializers.values()
              if v.const_value is not None and v.const_value.dtype.is_floating_point() and v.const_value.size > 1]
    if not floats:
        raise InvalidInputError(f"{where}: the model has no float weights to quantize")


def _name_nodes(model: ir.Model) -> None:
    """Unique node names: the engine includes/excludes nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


#: probability ops left in float where they produce a graph output: ONNX Runtime quantizes a Softmax
#: output with the fixed step 1/256, which rounds every probability below 1/512 to zero (all of a
#: 1000-class output's near-uniform probabilities, making the arg-max meaningless)
FLOAT_OUTPUT_OPS = frozenset({"Softmax", "LogSoftmax"})


def always_float(model: ir.Model) -> list[str]:
    """Names of the nodes never quantized: probability ops producing graph outputs."""
    outputs = set(model.graph.outputs)
    return [n.name or "" for n in model.graph if n.op_type in FLOAT_OUTPUT_OPS and set(n.outputs) & outputs]


def prepare_float(model: ir.Model) -> ir.Model:
    """-O2 (BatchNorm and constants folded into the weights the quantizer sees), named nodes, and
    provenance on every node (an ONNX node without one is its own source layer)."""
    from portanet.converters.onnx.importer import add_self_provenance
    from portanet.optimizer import optimize

    model = optimize(model, level=2)
    _name_nodes(model)
    add_self_provenance(model)
    return model


def quantize(
    model: ir.Model,
    data: str | os.PathLike[str] | None,
    options: QuantizeOptions | None = None,
    *,
    where: str = "model",
    progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Quantize ``model`` to int8 with calibration samples from ``data`` (None: the embedded digits).

    The model is not modified; ``result.model`` is the quantized model (QDQ for ``static``),
    ``result.report`` the float-vs-int8 table and, when ``max_accuracy_drop`` was exceeded,
    the layers kept in float and why.
    """
    opts = options or QuantizeOptions()
    opts.validate()
    say = progress or (lambda _msg: None)
    check_quantizable(model, where)
    prepared = prepare_data(model, data, samples=opts.samples, test_samples=opts.test_samples, mean=opts.mean,
                            std=opts.std, normalize=opts.normalize, seed=opts.seed, where=where)
    say("optimizing (-O2)")
    float_model = prepare_float(ir.serde.deserialize_model(ir.serde.serialize_model(model)))
    run_engine = _engine.engine(opts.mode)
    cal = calibration(opts.calibration) if opts.mode == "static" else None
    with tempfile.TemporaryDirectory(prefix="portanet-quantize-") as tmp:
        tmpdir = Path(tmp)
        float_path = save_onnx(float_model, tmpdir / "float.onnx")
        say("running the float model on the test split")
        try:
            ref = _run(float_path, prepared.input_name, prepared.test_x)
        except RuntimeBackendError as exc:
            raise InvalidInputError(f"{prepared.path}: model input '{prepared.input_name}' cannot take the samples "
                                    f"prepared as {list(prepared.layout.model_shape)}: {exc}") from exc
        labels = prepared.test_y
        if labels is not None and (not has_class_axis(ref) or int(labels.max(initial=0)) >= ref.shape[1]):
            log.info("labels do not index the output's classes: comparing with the float outputs only")
            labels = None
        float_m = metrics(ref, ref, labels)
        reader = ArrayReader(prepared.input_name, prepared.calib)
        counter = [0]
        keep = always_float(float_model)

        def build(include: Sequence[str], exclude: Sequence[str]) -> Path:
            counter[0] += 1
            target = tmpdir / f"q{counter[0]}.onnx"
            run_engine(_engine.Job(float_path, target, reader, cal, opts.per_channel, [*keep, *exclude], include,
                                   tmpdir / "calibration.json"))
            return target

        def evaluate(path: Path, n: int | None = None) -> Metrics:
            x = prepared.test_x if n is None else prepared.test_x[:n]
            r = ref if n is None else ref[:n]
            lab = labels if labels is None or n is None else labels[:n]
            return metrics(_run(path, prepared.input_name, x), r, lab)

        say(f"quantizing ({opts.mode}" + (f", {opts.calibration} calibration on {len(prepared.calib)} samples)"
                                           if cal else ")"))
        q_path = build((), ())
        q_m = evaluate(q_path)
        naive = drop = accuracy_drop(float_m, q_m)
        fb = None
        if opts.max_accuracy_drop is not None:
            if drop is None:
                raise InvalidInputError(f"{where}: --max-accuracy-drop needs a classifier output (N, classes, ...); "
                                        f"the first output has shape {list(ref.shape)}")
            if drop > opts.max_accuracy_drop + 1e-9:
                say(f"drop {drop:.2f} > budget {opts.max_accuracy_drop:g}: measuring per-layer sensitivity")
                layers = candidate_layers(float_model)
                n_sens = min(len(prepared.test_x), opts.sensitivity_samples)
                fb, excluded = fallback(
                    layers, lambda inc, exc: evaluate(build(inc, exc)), float_m, opts.max_accuracy_drop,
                    sensitivity_trial=lambda inc, exc: evaluate(build(inc, exc), n_sens))
                q_path = build((), excluded)
                q_m = evaluate(q_path)
                drop = accuracy_drop(float_m, q_m)
        quant_model = load_onnx(q_path, upgrade=False)
        rows = []
        for name, path, m, mdl in (("float32", float_path, float_m, float_model), ("int8", q_path, q_m, quant_model)):
            lat = latency_ms(mdl, opts.latency_batches, **opts.bench) if opts.latency_batches else {}
            rows.append(PrecisionRow(name, m.accuracy, m.agreement, m.cosine, m.max_rel, file_size(path), lat))
    kind = "accuracy" if float_m.accuracy is not None else "agreement" if float_m.agreement is not None else None
    report = QuantizeReport(opts.mode, opts.calibration if cal else None, opts.per_channel, prepared.describe(),
                            rows, kind, drop, naive, opts.max_accuracy_drop, fb)
    _record(quant_model, report, prepared)
    return QuantizeResult(quant_model, float_model, report)


def _record(model: ir.Model, report: QuantizeReport, prepared: PreparedData) -> None:
    """What ``verify`` needs to judge the quantized model against its float source."""
    f, q = report.rows
    set_json(model, QUANTIZE_KEY, {
        "mode": report.mode, "calibration": report.calibration, "per_channel": report.per_channel,
        "max_accuracy_drop": report.budget, "drop_kind": report.drop_kind, "drop": report.drop,
        "float_accuracy": f.accuracy, "int8_accuracy": q.accuracy, "cosine": q.cosine,
        "kept_float": report.fallback.kept if report.fallback else [],
        "input": {"name": prepared.input_name, "layout": prepared.layout.rule,
                  "normalization": prepared.normalizer.to_dict()},
        "data": prepared.path,
    })


def quantize_file(
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    data: str | os.PathLike[str] | None,
    options: QuantizeOptions | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """``portanet quantize``: read ``model_path``, quantize, write ``output`` (only on success)."""
    p = Path(model_path)
    if not p.is_file():
        raise InvalidInputError(f"{p}: no such model file")
    out = Path(output)
    if not out.resolve().parent.is_dir():
        raise InvalidInputError(f"{out}: folder {out.resolve().parent} does not exist")
    result = quantize(load_onnx(p), data, options, where=str(p), progress=progress)
    save_onnx(result.model, out)
    result.report.rows[-1].size_bytes = file_size(out)
    return result


__all__ = ["QUANTIZED_OPS", "QuantizeOptions", "QuantizeResult", "check_quantizable", "prepare_float", "quantize",
           "quantize_file"]


