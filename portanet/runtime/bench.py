"""Latency/throughput measurement for `portanet bench` (and the case study).

Each (backend, batch size) pair gets warm-up runs, then timed runs until both ``iters`` runs
and ``min_seconds`` have passed; latency percentiles are over individual runs.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.errors import InvalidInputError

log = logging.getLogger(__name__)

RunFn = Callable[[Mapping[str, np.ndarray]], Any]


#: (p90 - p10) / p50 above which a latency figure is flagged as unreliable
SPREAD_LIMIT = 0.5
#: 1-minute load average per core above which the machine counts as busy
LOAD_LIMIT = 0.75


@dataclass
class BenchResult:
    backend: str
    device: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # samples per second at p50
    p10_ms: float = 0.0
    #: (p90 - p10) / p50: how much the timed runs disagree
    spread: float = 0.0
    #: why this figure should not be trusted ("" when it can be)
    unreliable: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def conditions() -> dict[str, Any]:
    """The measurement conditions a latency figure depends on: load average, cores, thread
    settings (environment and the frameworks' own), Python and platform."""
    import os
    import platform
    import sys

    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": sys.version.split()[0]}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        info["load_average"] = None
    info["thread_env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                          if k in os.environ}
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def busy_reason(cond: Mapping[str, Any]) -> str:
    """Why the machine was too busy for trustworthy timings ("" when it was not)."""
    load = cond.get("load_average")
    cores = cond.get("cpu_count") or 1
    if load and load[0] > LOAD_LIMIT * cores:
        return f"machine busy: 1-min load average {load[0]:.2f} on {cores} cores"
    return ""


def time_callable(
    fn: RunFn, feeds: Mapping[str, np.ndarray], *, warmup: int = 3, iters: int = 20, min_seconds: float = 0.5
) -> list[float]:
    """Seconds per call of ``fn(feeds)`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn(feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters or (time.perf_counter() - start) < min_seconds:
        t0 = time.perf_counter()
        fn(feeds)
        times.append(time.perf_counter() - t0)
        if len(times) >= 50 * max(iters, 1):
            break
    return times


def summarize(backend: str, device: str, batch: int, times: Sequence[float], busy: str = "") -> BenchResult:
    """Percentiles of ``times`` (seconds); flags the figure when the runs disagree by more than
    ``SPREAD_LIMIT`` of the median or the machine was ``busy`` (a reason from ``busy_reason``)."""
    arr = np.asarray(times) * 1000.0
    p10, p50, p90 = (float(np.percentile(arr, q)) for q in (10, 50, 90))
    spread = (p90 - p10) / p50 if p50 > 0 else 0.0
    why = [f"spread {spread:.0%} of the median"] if spread > SPREAD_LIMIT else []
    if busy:
        why.append(busy)
    return BenchResult(
        backend=backend, device=device, batch=batch, runs=len(arr), p50_ms=p50,
        p90_ms=p90, mean_ms=float(arr.mean()),
        throughput=batch / (p50 / 1000.0) if p50 > 0 else float("inf"),
        p10_ms=p10, spread=spread, unreliable="; ".join(why),
    )


def _source_runner(model: ir.Model, sources: Sequence[Path]) -> RunFn:
    """The source framework itself, through portanet.parity's reference runner."""
    import importlib

    from portanet.ir.metadata import FRAMEWORK_KEY

    framework = model.metadata_props.get(FRAMEWORK_KEY)
    if not sources:
        raise InvalidInputError("backend 'source' needs the source model files (--source FILE)")
    try:
        runner = importlib.import_module(f"portanet.parity.runners.{framework}")
    except ModuleNotFoundError as exc:
        raise InvalidInputError(f"no reference runner for source framework '{framework}'") from exc
    prepare = getattr(runner, "prepare", None)
    # runners with prepare() load the source model once; the others (OpenCV, the mxnet
    # subprocess) load it inside every call, which the timing then includes
    loaded = prepare(list(sources)) if prepare is not None else list(sources)
    return lambda feeds: runner.run_reference(loaded, dict(feeds))


def bench_model(
    model: ir.Model,
    *,
    backends: Sequence[str] = ("ort",),
    batch_sizes: Sequence[int] = (1,),
    device: str = "cpu",
    warmup: int = 3,
    iters: int = 20,
    min_seconds: float = 0.5,
    sources: Sequence[Path] = (),
    seed: int = 0,
    on_result: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """Benchmark ``model`` on every backend and batch size; ``source`` runs the source framework."""
    from portanet.runtime.session import Session

    results: list[BenchResult] = []
    feeder = Session(model, backend="ort")  # for the declared input shapes only
    for backend in backends:
        if backend == "source":
            fn: RunFn = _source_runner(model, sources)
        else:
            sess = Session(model, backend=backend, device=device)
            fn = sess.run
        for batch in batch_sizes:
            feeds = feeder.random_feeds(batch=batch, seed=seed)
            log.info("benchmarking %s/%s at batch %d", backend, device, batch)
            times = time_callable(fn, feeds, warmup=warmup, iters=iters, min_seconds=min_seconds)
            res = summarize(backend, device, batch, times, busy=busy_reason(conditions()))
            results.append(res)
            if on_result:
                on_result(res)
    return results


def plot_results(results: Sequence[BenchResult], path: str | Path, title: str = "") -> Path:
    """Write ``bench_figure`` as a PNG."""
    from portanet.ir.io import atomic_write_bytes

    fig = bench_figure(results, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return atomic_write_bytes(Path(path), buf.getvalue())


def bench_figure(results: Sequence[BenchResult], title: str = "") -> Any:
    """One panel per batch size (each with its own linear latency axis, so batch-1 bars are
    not dwarfed by batch 32): p50 latency per backend, the p10-p90 range as an error bar,
    the value on each bar, hatched bars for figures flagged unreliable. A matplotlib Figure."""
    from portanet._deps import require

    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    backends = list(dict.fromkeys(r.backend for r in results))
    batches = sorted({r.batch for r in results})
    colors = matplotlib.colormaps["tab10"].colors
    fig = Figure(figsize=(0.6 + 0.9 * max(2, len(backends)) * max(1, len(batches)), 3.8))
    axes = fig.subplots(1, max(1, len(batches)), squeeze=False)
    flagged = False
    for ax, b in zip(axes[0], batches):
        rows = [next((r for r in results if r.backend == be and r.batch == b), None) for be in backends]
        xs = np.arange(len(backends))
        ys = [r.p50_ms if r else 0.0 for r in rows]
        lo = [r.p50_ms - r.p10_ms if r and r.p10_ms else 0.0 for r in rows]
        hi = [r.p90_ms - r.p50_ms if r else 0.0 for r in rows]
        bars = ax.bar(xs, ys, 0.7, color=[colors[i % len(colors)] for i in range(len(backends))],
                      yerr=[lo, hi], capsize=3, ecolor="0.3")
        for bar, r in zip(bars, rows):
            if r is None:
                continue
            if r.unreliable:
                bar.set_hatch("//")
                flagged = True
            ax.annotate(f"{r.p50_ms:.3g}", (bar.get_x() + bar.get_width() / 2, r.p90_ms), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(xs)
        ax.set_xticklabels(backends, rotation=30 if len(backends) > 3 else 0)
        ax.set_title(f"batch {b}")
        ax.set_ylabel("p50 latency (ms)")
        ax.set_ylim(0, max([r.p90_ms for r in rows if r] + [1e-3]) * 1.25)
    fig.suptitle(title or "portanet bench")
    if flagged:
        fig.text(0.01, 0.01, "hatched: unreliable figure (large spread or busy machine)", fontsize=7)
    fig.tight_layout()
    return fig
