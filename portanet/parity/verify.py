"""``verify``: convert (or take a converted model), run the source framework and every
backend on the same inputs, compare, bisect the first divergent layer, check gradients."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.errors import InvalidInputError, PortanetError
from portanet.ir.metadata import describe_sources
from portanet.parity.arbitration import FailedCase, maybe_arbitrate
from portanet.parity.bisect import DEFAULT_CHUNK, BisectResult, write_repro
from portanet.parity.bisect import bisect as _bisect
from portanet.parity.compare import DEFAULT_ATOL, DEFAULT_RTOL, compare
from portanet.parity.degenerate import degenerate_notes
from portanet.parity.inputs import FeedSet, data_feed_sets, given_feed_set, parse_shape_sets, random_feed_sets
from portanet.parity.quantized import data_feed_set as quantized_data_feed_set
from portanet.parity.quantized import judge as judge_quantized
from portanet.parity.quantized import quantization_info
from portanet.parity.reference import run_reference, runner_for
from portanet.parity.report import OutputResult, VerifyReport, tool_versions

log = logging.getLogger(__name__)

DEFAULT_BACKENDS = ("ort", "torch")


def _is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def _flatten_sources(sources: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for s in sources:
        out.extend(s if isinstance(s, list | tuple) else [s])
    return out


def _convert_options(kwargs: Mapping[str, Any]) -> Any:
    from portanet.converters.registry import ConvertOptions

    known = set(ConvertOptions.__dataclass_fields__)
    opts = ConvertOptions(**{k: v for k, v in kwargs.items() if k in known})
    opts.extra.update({k: v for k, v in kwargs.items() if k not in known})
    return opts


def detect_framework(sources: Sequence[Any], framework: str | None) -> str:
    """The importer name for ``sources`` (paths or one in-memory model)."""
    from portanet.converters.registry import detect, get_importer, importers

    if framework:
        return get_importer(framework).name
    if len(sources) == 1 and not _is_path(sources[0]):
        for imp in importers().values():
            if imp.accepts_object(sources[0]):
                return imp.name
        raise InvalidInputError(f"cannot verify an object of type {type(sources[0]).__name__}")
    return detect([Path(p) for p in sources]).name


def _open_backends(requested: Sequence[str] | None, model: ir.Model, device: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Sessions of the backends to compare. Defaults that cannot run this model here are
    skipped with a reason; explicitly requested ones must work (their error ends the run)."""
    from portanet.runtime.session import Session, available_backends

    if requested:
        unknown = [b for b in requested if b not in available_backends()]
        if unknown:
            raise InvalidInputError(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(available_backends())}")
        return {b: Session(model, backend=b, device=device) for b in requested}, {}
    sessions, skipped = {}, {}
    for b in DEFAULT_BACKENDS:
        try:
            sessions[b] = Session(model, backend=b, device=device)
        except PortanetError as exc:
            skipped[b] = str(exc)
            log.warning("backend %s skipped: %s", b, exc)
    return sessions, skipped


def _feed_sets(model: ir.Model, inputs: Mapping[str, Any] | None, data: Any, shapes: Any, seed: int) -> list[FeedSet]:
    given = [x for x in (inputs, data, shapes) if x]
    if len(given) > 1:
        raise InvalidInputError("give one of --input, --data or --shapes, not several")
    if inputs:
        return [given_feed_set(model, inputs)]
    if data:
        return data_feed_sets(model, data)
    if shapes and isinstance(shapes[0], str):
        shapes = parse_shape_sets(shapes)
    elif shapes:
        shapes = [s if isinstance(s, Mapping) else {"": list(s)} for s in shapes]
    return random_feed_sets(model, shapes, seed=seed)


def options_from_metadata(model: ir.Model) -> Any:
    """The conversion options recorded in the model (``portanet.options``): what the reference
    runner needs to load the source the same way (``model_class``, ``nchw``, ...)."""
    from portanet.converters.registry import ConvertOptions
    from portanet.ir.metadata import OPTIONS_KEY, get_json

    stored = get_json(model, OPTIONS_KEY)
    if not isinstance(stored, dict):
        return ConvertOptions()
    fields = ConvertOptions.__dataclass_fields__
    kw = {k: v for k, v in stored.items() if k in fields and k not in ("example_inputs", "extra")}
    for k in ("prototxt", "weights", "params"):
        if isinstance(kw.get(k), str):
            kw[k] = Path(kw[k])
    try:
        return ConvertOptions(**kw)
    except TypeError:
        return ConvertOptions()


def verify(
    *sources: Any,
    onnx: str | os.PathLike[str] | ir.Model | None = None,
    framework: str | None = None,
    **kwargs: Any,
) -> VerifyReport:
    """Convert ``sources`` (or use ``onnx=``, a converted model or its file) and check parity
    with the source framework. Keyword arguments are those of ``verify_model`` plus the
    conversion options of ``portanet.convert``."""
    srcs = _flatten_sources(sources)
    if not srcs:
        raise InvalidInputError("no source model given")
    verify_keys = {"backends", "inputs", "data", "shapes", "rtol", "atol", "seed", "bisect", "repro_dir",
                   "train", "chunk", "device"}
    vkw = {k: v for k, v in kwargs.items() if k in verify_keys}
    copts = _convert_options({k: v for k, v in kwargs.items() if k not in verify_keys})
    fw = detect_framework(srcs, framework)
    if onnx is None:
        from portanet.converters.registry import convert_object, convert_paths

        if len(srcs) == 1 and not _is_path(srcs[0]):
            model = convert_object(srcs[0], copts)
        else:
            model = convert_paths(srcs, copts, framework=fw)
    elif isinstance(onnx, ir.Model):
        model = onnx
    else:
        from portanet.ir.io import load_onnx

        model = load_onnx(onnx)
    return verify_model(srcs, model, framework=fw, convert_options=copts, **vkw)


def verify_model(
    sources: Any,
    model: ir.Model,
    *,
    framework: str | None = None,
    convert_options: Any = None,
    backends: Sequence[str] | None = None,
    inputs: Mapping[str, Any] | None = None,
    data: str | os.PathLike[str] | None = None,
    shapes: Sequence[Any] | None = None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    seed: int = 0,
    bisect: bool | None = None,
    repro_dir: str | os.PathLike[str] | None = None,
    train: bool = False,
    chunk: int = DEFAULT_CHUNK,
    device: str = "cpu",
) -> VerifyReport:
    """Compare ``model`` (already converted from ``sources``) with the source framework.

    ``bisect``: None bisects only on failure, True always, False never. ``repro_dir``: where
    the minimal repro of a divergent layer is written. ``train``: gradient parity too.
    """
    srcs = _flatten_sources(sources if isinstance(sources, list | tuple) else [sources])
    fw = detect_framework(srcs, framework)
    if convert_options is None:
        convert_options = options_from_metadata(model)
    runner = runner_for(fw)
    output_names = [v.name or "" for v in model.graph.outputs]
    options: dict[str, Any] = {"convert_options": convert_options, "model": model, "nchw": convert_options.nchw,
                               "output_names": output_names}
    # runners may load the source once (a .pt2, a Keras file) and reuse it for every run
    ref_sources: Any = srcs
    prepare = getattr(runner, "prepare", None)
    if prepare is not None:
        ref_sources = prepare(srcs, options)

    quantized = quantization_info(model)  # an int8 model is judged against the budget, not elementwise
    feed_sets = ([quantized_data_feed_set(model, quantized, data)] if quantized and data and not (inputs or shapes)
                 else _feed_sets(model, inputs, data, shapes, seed))
    sessions, skipped = _open_backends(backends, model, device)
    chosen = list(sessions)
    if not chosen:
        raise InvalidInputError("no backend can run this model here: "
                                + "; ".join(f"{b}: {why}" for b, why in skipped.items()))
    report = VerifyReport(
        framework=fw,
        sources=describe_sources([s for s in srcs if _is_path(s)]),
        rtol=rtol, atol=atol, seed=seed,
        input_kind=feed_sets[0].kind,
        input_shapes=[fs.shapes for fs in feed_sets],
        backends=chosen,
        tools=tool_versions(fw, chosen),
        skipped_backends=skipped,
    )
    describe = getattr(runner, "describe", None)  # which implementation serves as the reference
    if describe is not None:
        report.tools["reference"] = describe(ref_sources, options)
    first_failure: tuple[str, FeedSet] | None = None
    failed_cases: list[FailedCase] = []
    ref_values: dict[str, list[np.ndarray]] = {name: [] for name in output_names}
    for fs in feed_sets:
        ref, _ = run_reference(fw, ref_sources, fs.feeds, output_names=output_names, options=options)
        for name in output_names:
            ref_values[name].append(np.asarray(ref[name]))
        for b, sess in sessions.items():
            got = sess.run(fs.feeds)
            bad = []
            for name in output_names:
                stats = compare(ref[name], got[name], rtol=rtol, atol=atol)
                if quantized:
                    stats = judge_quantized(quantized, ref[name], got[name], stats, getattr(fs, "labels", None))
                report.results.append(OutputResult(b, fs.label, name, stats))
                if not stats.passed:
                    bad.append(name)
                    if first_failure is None:
                        first_failure = (b, fs)
            if bad:
                failed_cases.append(FailedCase(b, fs.label, fs.feeds, ref, got, bad))
    del sessions
    # float32 rounding or a real difference? decided in float64 (see parity.arbitration)
    if not quantized:  # int8 error is judged by judge_quantized, not by float64
        report.arbitration = maybe_arbitrate(report.failures(), fw, ref_sources, model, failed_cases, options,
                                             rtol=rtol, atol=atol, device=device)
    if report.arbitration is not None and report.arbitration.passed:
        first_failure = None
    report.notes = degenerate_notes(ref_values)
    for note in report.notes:
        log.warning("%s", note)

    if bisect or (bisect is None and first_failure is not None and not quantized):
        b, fs = first_failure or (chosen[0], feed_sets[0])
        report.bisect = run_bisect(fw, ref_sources, model, fs.feeds, options, backend=b, rtol=rtol, atol=atol,
                                   chunk=chunk, device=device, repro_dir=repro_dir)
    if train:
        from portanet.parity.gradients import gradient_parity

        report.gradients = gradient_parity(fw, ref_sources, model, feed_sets[0].feeds, rtol=rtol, atol=atol,
                                           seed=seed, options=options, device=device)
    log.info("%s", report.summary())
    return report


def run_bisect(
    framework: str,
    sources: Any,
    model: ir.Model,
    feeds: Mapping[str, np.ndarray],
    options: Mapping[str, Any],
    *,
    backend: str = "ort",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    chunk: int = DEFAULT_CHUNK,
    device: str = "cpu",
    repro_dir: str | os.PathLike[str] | None = None,
) -> BisectResult:
    """Bisect ``model`` against the source on ``feeds``; write a repro if a layer diverges."""
    output_names = [v.name or "" for v in model.graph.outputs]

    def reference(layers: Sequence[str]) -> dict[str, np.ndarray]:
        _, layer_out = run_reference(framework, sources, feeds, output_names=output_names, layers=layers,
                                     options=options)
        return layer_out

    # PyTorch provenance is a module path: containers end where their last submodule ends
    result = _bisect(model, reference, feeds, backend=backend, rtol=rtol, atol=atol, chunk=chunk, device=device,
                     hierarchical=framework == "pytorch")
    if result.found and repro_dir is not None:
        expected = reference([result.layer or ""])[result.layer or ""]
        result.repro = write_repro(model, result, feeds, expected, repro_dir)
    return result
