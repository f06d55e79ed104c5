"""Latency/throughput measurement for `portanet bench` (and the case study).

Each (backend, batch size) pair gets warm-up runs, then timed runs until both ``iters`` runs
and ``min_seconds`` have passed; latency percentiles are over individual runs.
"""

from __future__ import annotations

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def summarize(backend: str, device: str, batch: int, times: Sequence[float]) -> BenchResult:
    arr = np.asarray(times) * 1000.0
    p50 = float(np.percentile(arr, 50))
    return BenchResult(
        backend=backend, device=device, batch=batch, runs=len(arr), p50_ms=p50,
        p90_ms=float(np.percentile(arr, 90)), mean_ms=float(arr.mean()),
        throughput=batch / (p50 / 1000.0) if p50 > 0 else float("inf"),
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
            res = summarize(backend, device, batch, time_callable(fn, feeds, warmup=warmup, iters=iters,
                                                                  min_seconds=min_seconds))
            results.append(res)
            if on_result:
                on_result(res)
    return results


def plot_results(results: Sequence[BenchResult], path: str | Path, title: str = "") -> Path:
    """Grouped bars: p50 latency per backend for each batch size (PNG)."""
    from portanet._deps import require

    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(r.backend for r in results))
    batches = sorted({r.batch for r in results})
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(batches) * max(1, len(backends)) / 2, 3.6))
    width = 0.8 / max(1, len(backends))
    for i, be in enumerate(backends):
        ys = [next((r.p50_ms for r in results if r.backend == be and r.batch == b), np.nan) for b in batches]
        xs = np.arange(len(batches)) + i * width
        ax.bar(xs, ys, width, label=be)
    ax.set_xticks(np.arange(len(batches)) + width * (len(backends) - 1) / 2)
    ax.set_xticklabels([f"batch {b}" for b in batches])
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(title or "portanet bench")
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
