"""The case study end to end (``make demo``): one CNN in five frameworks, converted, verified, run
on every backend, fine-tuned, and compared in one report.

    .venv/bin/python model_zoo/case_study.py [--out DIR] [--data MNIST_DIR] [--epochs N] [--full | --quick]

1. Load MNIST-format digits (default: portanet's embedded mnist-10k), scaled to [0, 1] and
   standardised (mean 0.1307, std 0.3081).
2. Train the case-study CNN natively in PyTorch and in Keras (shuffled mini-batches,
   cross-entropy on the logits, SGD with momentum, per-epoch learning-rate decay).
3. Write the same network as Caffe prototxt + caffemodel, MXNet symbol + params (by mxnet 1.9.1
   in ``.venv-mxnet``; skipped with a note when that environment is missing) and a CNTK v2 model,
   each holding the trained PyTorch weights.
4. Convert each with portanet, verify parity against its source framework (PyTorch eager, Keras,
   OpenCV DNN for Caffe, mxnet for MXNet, the PyTorch twin for CNTK), measure test accuracy on
   ONNX Runtime and the torch backend, and latency at batch 1 and 64.
5. Fine-tune the converted Caffe model with portanet's Trainer and export it again.
6. Write ``report.json``, ``report.md`` and ``report.png`` into ``--out`` (default ``out/``).

Exit status: 0 when every framework that ran is within parity tolerance, 1 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import model_zoo from the repository root, and
    # keep this folder off sys.path so its `keras`/`mxnet` builder packages shadow nothing
    _REPO = Path(__file__).resolve().parents[1]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO / "model_zoo"]
    sys.path.insert(0, str(_REPO))

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's oneDNN rewrites reorder float sums from run to run; off, Keras's numbers repeat
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

from model_zoo import case_study_nets as nets  # noqa: E402
from model_zoo.case_study_report import (  # noqa: E402
    CaseStudyResult,
    FrameworkRow,
    ParityEntry,
    rich_table,
    write_all,
)
from model_zoo.common import REPO  # noqa: E402

log = logging.getLogger("case_study")

BACKENDS = ("ort", "torch")
BATCH_SIZES = (1, 64)


# ------------------------------------------------------------------------------ run context
@dataclass
class Context:
    """State shared by the stages of one run."""

    out: Path
    digits: nets.Digits
    settings: nets.TrainSettings
    parity_images: int
    bench: dict[str, Any]
    torch_model: Any = None
    keras_models: Any = None
    weights: dict[str, np.ndarray] | None = None
    trained: dict[str, nets.TrainResult] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)


@dataclass
class Built:
    """A converted source: ``predict`` runs the source (the parity reference) on standardised NCHW
    images; ``verify_framework`` names portanet's reference runner (None: compare with ``predict``)."""

    sources: list[Any]
    model: Any
    predict: Callable[[np.ndarray], np.ndarray]
    verify_framework: str | None
    convert_options: Any = None
    #: the source framework's own forward pass, timed for the "source" latency (None: not in-process)
    native: Callable[[np.ndarray], Any] | None = None


@dataclass(frozen=True)
class FrameworkCase:
    key: str
    title: str
    reference: str
    weights: str
    build: Callable[[Context], Built]
    #: why this framework cannot run here (None: it can)
    unavailable: Callable[[Context], str | None] = lambda ctx: None


CASES: dict[str, FrameworkCase] = {}


def framework(key: str, title: str, reference: str, weights: str,
              unavailable: Callable[[Context], str | None] | None = None) -> Callable:
    """Register the builder of one framework's row (rows appear in registration order)."""

    def deco(fn: Callable[[Context], Built]) -> Callable[[Context], Built]:
        CASES[key] = FrameworkCase(key, title, reference, weights, fn, unavailable or (lambda ctx: None))
        return fn

    return deco


def _input_name(model: Any) -> str:
    return model.graph.inputs[0].name


def _output_name(model: Any) -> str:
    return model.graph.outputs[0].name


def _reference_predict(fw: str, sources: list[Any], model: Any, options: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The source framework through portanet's reference runner (OpenCV DNN, mxnet)."""
    from portanet.parity.reference import run_reference

    def predict(x: np.ndarray) -> np.ndarray:
        outs, _ = run_reference(fw, sources, {_input_name(model): x}, output_names=[_output_name(model)],
                                options={"convert_options": options, "model": model, "caffe_reference": "opencv"})
        return outs[_output_name(model)]

    return predict


# ------------------------------------------------------------------------------ frameworks
def _no_trained_torch(ctx: Context) -> str | None:
    return None if ctx.weights is not None else "skipped: the PyTorch model did not train"


@framework("pytorch", "PyTorch", "PyTorch (eager)", "trained natively",
           lambda ctx: None if ctx.torch_model is not None else "skipped: PyTorch training failed")
def _pytorch(ctx: Context) -> Built:
    import torch

    import portanet

    example = (torch.from_numpy(ctx.digits.x_test[:1]),)
    model = portanet.convert(ctx.torch_model, example_inputs=example)
    net = ctx.torch_model

    def native(x: np.ndarray) -> Any:
        with torch.no_grad():
            return net(torch.from_numpy(x))

    return Built([net], model, lambda x: nets.predict_pytorch(net, x), "pytorch", native=native)


@framework("keras", "Keras", "Keras (TensorFlow)", "trained natively",
           lambda ctx: None if ctx.keras_models is not None else "skipped: Keras training failed")
def _keras(ctx: Context) -> Built:
    import portanet
    from portanet.converters.registry import ConvertOptions

    model_k = ctx.keras_models[0]
    # NCHW input like every other row, so the same images feed all converted models
    model = portanet.convert(model_k, nchw=True)
    return Built([model_k], model, lambda x: nets.predict_keras(model_k, x), "keras", ConvertOptions(nchw=True),
                 native=lambda x: model_k(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), training=False))


@framework("caffe", "Caffe", "OpenCV DNN (Caffe importer)", "from PyTorch", _no_trained_torch)
def _caffe(ctx: Context) -> Built:
    import portanet
    from portanet.converters.registry import ConvertOptions

    prototxt, caffemodel = nets.write_caffe(ctx.weights, ctx.out / "sources" / "caffe")
    sources = [prototxt, caffemodel]
    model = portanet.convert(*map(str, sources))
    opts = ConvertOptions()
    import cv2

    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))

    def native(x: np.ndarray) -> Any:
        net.setInput(x)
        return net.forward()

    return Built(sources, model, _reference_predict("caffe", sources, model, opts), "caffe", opts, native)


def _mxnet_missing(ctx: Context) -> str | None:
    from model_zoo.mxnet import mxnet_python

    if ctx.weights is None:
        return "skipped: the PyTorch model did not train"
    if mxnet_python() is None:
        return "skipped: the mxnet 1.9.1 side environment (.venv-mxnet) is missing; `make mxnet-env` creates it"
    return None


@framework("mxnet", "MXNet", "mxnet 1.9.1", "from PyTorch", _mxnet_missing)
def _mxnet(ctx: Context) -> Built:
    import portanet
    from model_zoo.mxnet import mxnet_python
    from portanet.converters.registry import ConvertOptions

    symbol, params, version = nets.write_mxnet(ctx.weights, ctx.out / "sources" / "mxnet", mxnet_python())
    ctx.tools["mxnet"] = version
    sources = [symbol, params]
    # a symbol file carries no input shape: declare the digits' (with a symbolic batch)
    opts = ConvertOptions(input_shapes={"data": ["N", 1, 28, 28]})
    model = portanet.convert(*map(str, sources), input_shapes=opts.input_shapes)
    return Built(sources, model, _reference_predict("mxnet", sources, model, opts), "mxnet", opts)


@framework("cntk", "CNTK", "PyTorch twin (no CNTK runtime)", "from PyTorch", _no_trained_torch)
def _cntk(ctx: Context) -> Built:
    import portanet

    path = nets.write_cntk(ctx.weights, ctx.out / "sources" / "cntk")
    model = portanet.convert(str(path))
    # CNTK cannot run on current Python: the file holds the PyTorch model's weights in CNTK's
    # layout, so the PyTorch model is the reference
    return Built([path], model, lambda x: nets.predict_pytorch(ctx.torch_model, x), None)


# ---------------------------------------------------------------------------- measurements
def run_backend(model: Any, backend: str, x: np.ndarray, batch: int = 500) -> np.ndarray:
    from portanet.runtime.session import Session

    sess = Session(model, backend=backend)
    name, out = _input_name(model), _output_name(model)
    return np.concatenate([np.asarray(sess.run({name: x[i:i + batch]})[out]) for i in range(0, len(x), batch)])


def check_parity(ctx: Context, case: FrameworkCase, built: Built, row: FrameworkRow) -> None:
    """portanet.parity.verify_model against the source's reference runner (or, for CNTK, a direct
    comparison with the PyTorch twin); the arrays compared are kept in ``parity/<key>.npz``."""
    from portanet.parity import DEFAULT_ATOL, DEFAULT_RTOL, compare, verify_model

    x = ctx.digits.x_test[:ctx.parity_images]
    ref = np.asarray(built.predict(x))
    got = {b: run_backend(built.model, b, x) for b in BACKENDS}
    (ctx.out / "parity").mkdir(parents=True, exist_ok=True)
    np.savez(ctx.out / "parity" / f"{case.key}.npz", input=x, reference=ref, **got)
    if built.verify_framework is None:
        for b in BACKENDS:
            st = compare(ref, got[b], rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL)
            row.parity.append(ParityEntry(b, st.max_abs, st.max_rel, st.top1, st.passed))
        return
    report = verify_model(built.sources, built.model, framework=built.verify_framework,
                          convert_options=built.convert_options, inputs={_input_name(built.model): x},
                          backends=list(BACKENDS), repro_dir=ctx.out / "repro" / case.key)
    for r in report.results:
        row.parity.append(ParityEntry(r.backend, r.stats.max_abs, r.stats.max_rel, r.stats.top1, r.stats.passed))
    if report.bisect is not None and report.bisect.found:
        row.notes.append(f"first divergent layer: {report.bisect.layer}")
    report.write_certificate(built.model)


def measure(ctx: Context, case: FrameworkCase, row: FrameworkRow) -> None:
    """Convert, verify, evaluate and benchmark one framework; fills ``row``."""
    import portanet
    from portanet.runtime.bench import bench_model, busy_reason, conditions, summarize, time_callable

    built = case.build(ctx)
    check_parity(ctx, case, built, row)
    models = ctx.out / "models"
    models.mkdir(parents=True, exist_ok=True)
    portanet.save(built.model, models / f"{case.key}.onnx")
    row.onnx = f"models/{case.key}.onnx"
    y = ctx.digits.y_test
    row.source_accuracy = nets.accuracy(built.predict(ctx.digits.x_test), y)
    for b in BACKENDS:
        row.accuracy[b] = nets.accuracy(run_backend(built.model, b, ctx.digits.x_test), y)
    if built.native is not None:
        for n in BATCH_SIZES:
            x = np.ascontiguousarray(ctx.digits.x_test[:n])
            times = time_callable(lambda _feeds, x=x: built.native(x), {}, **ctx.bench)
            record_latency(row, summarize("source", "cpu", n, times, busy=busy_reason(conditions())))
    for res in bench_model(built.model, backends=BACKENDS, batch_sizes=BATCH_SIZES, **ctx.bench):
        record_latency(row, res)


def record_latency(row: FrameworkRow, res: Any) -> None:
    """One BenchResult into the row: p50, spread and why it is unreliable (if it is)."""
    key = f"{res.backend}/{res.batch}"
    row.latency_ms[key] = res.p50_ms
    row.latency_spread[key] = res.spread
    if res.unreliable:
        row.latency_unreliable[key] = res.unreliable


def finetune(ctx: Context, key: str, train_samples: int | None, on_batch: Callable[[int, int], None]) -> dict:
    """Fine-tune the converted model of ``key`` with portanet's Trainer for one epoch, export it
    to ONNX again and measure ONNX Runtime test accuracy before and after."""
    import portanet
    from portanet.data import DEFAULT_DATA, DataSplits
    from portanet.runtime.trainer import TrainConfig, Trainer

    src = ctx.out / "models" / f"{key}.onnx"
    model = portanet.load(src)
    before = nets.accuracy(run_backend(model, "ort", ctx.digits.x_test), ctx.digits.y_test)
    raw = ctx.digits.raw
    train = raw.train if train_samples is None else raw.train.subset(slice(0, train_samples))
    splits = DataSplits(train, raw.test, raw.path, raw.format)
    lr = ctx.settings.lr * ctx.settings.gamma ** ctx.settings.epochs  # where the native schedule ended
    cfg = TrainConfig(epochs=1, batch_size=ctx.settings.batch_size, optimizer="sgd", lr=lr,
                      momentum=ctx.settings.momentum, mean=[nets.MEAN], std=[nets.STD], seed=ctx.settings.seed,
                      log_every=5)

    def callback(ev: Any) -> None:
        if ev.kind == "batch":
            on_batch(ev.step, ev.steps)

    trainer = Trainer(model, cfg)
    trainer.fit(splits, callback=callback)
    dst = ctx.out / "models" / f"{key}-finetuned.onnx"
    portanet.save(trainer.export(), dst)
    trainer.write_log(dst.with_suffix(".train.json"))
    after = nets.accuracy(run_backend(portanet.load(dst), "ort", ctx.digits.x_test), ctx.digits.y_test)
    return {"status": "ok", "framework": CASES[key].title, "epochs": 1, "train_samples": len(train), "lr": lr,
            "accuracy_before": before, "accuracy_after": after,
            "trainer_test_accuracy": trainer.history[-1].get("test_accuracy"),
            "onnx": str(dst.relative_to(ctx.out)),
            # the same run from the command line (the CLI drives the same Trainer)
            "command": f"portanet train models/{key}.onnx -o models/{key}-finetuned.onnx --epochs 1 "
                       f"--batch-size {cfg.batch_size} --lr {lr:.4g} --momentum {cfg.momentum} "
                       f"--mean {nets.MEAN} --std {nets.STD} --seed {cfg.seed}"
                       + ("" if Path(raw.path) == DEFAULT_DATA else f" --data {raw.path}")
                       + (f"  (on the first {len(train)} training images)" if train_samples else "")}


def _round_trip(ctx: Context, rows: list, train_samples: int | None, on_batch: Callable[[int, int], None]) -> dict:
    """``portanet export`` of the converted Caffe model (model_zoo/case_study_export.py)."""
    if not any(r.key == "caffe" and r.ok for r in rows):
        return {"status": "skipped: no converted Caffe model"}
    try:
        from model_zoo.case_study_export import round_trip

        sources = sorted((ctx.out / "sources" / "caffe").glob("case_study.*"))
        return round_trip(ctx.out, sources, ctx.digits, ctx.settings, train_samples, on_batch)
    except Exception as exc:  # noqa: BLE001 - the report says what failed
        log.exception("export round trip failed")
        return {"status": _failure(exc)}


# ----------------------------------------------------------------------------------- driver
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="case_study.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "out", help="output folder (default: out/)")
    p.add_argument("--data", type=Path, default=None,
                   help="an MNIST-format directory (default: the embedded mnist-10k)")
    p.add_argument("--epochs", type=int, default=None, help="native training epochs (default 4; --full 12)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="longer training (12 epochs)")
    mode.add_argument("--quick", action="store_true", help="1 epoch of a few batches, short benchmarks (tests)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for PyTorch and TensorFlow (default: their own, all cores); "
                        "1 keeps timings stable on a machine shared with other jobs")
    p.add_argument("--frameworks", default=",".join(CASES),
                   help=f"comma-separated subset of {','.join(CASES)} (default: all)")
    args = p.parse_args(argv)
    unknown = [f for f in args.frameworks.split(",") if f not in CASES]
    if unknown:
        p.error(f"unknown framework(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def set_threads(n: int) -> None:
    """Pin PyTorch's and TensorFlow's intra-op pools to ``n`` threads (before either runs anything)."""
    import torch

    torch.set_num_threads(n)
    import cv2

    cv2.setNumThreads(n)
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except ImportError:
        pass


def _tool_versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for dist in ("portanet", "torch", "tensorflow-cpu", "keras", "onnxruntime", "onnx", "opencv-python-headless"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _failure(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"failed: {type(exc).__name__}: {first}"[:300]


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # piped or captured: room for the whole table
        console = Console(width=max(console.width, 150))
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    started = time.perf_counter()
    if args.threads:
        set_threads(args.threads)
    from portanet.runtime.bench import conditions

    start_conditions = conditions()
    wanted = [k for k in CASES if k in args.frameworks.split(",")]
    epochs = args.epochs or (1 if args.quick else 12 if args.full else 4)
    settings = nets.TrainSettings(epochs=epochs, max_batches=10 if args.quick else None)
    bench = (dict(warmup=1, iters=3, min_seconds=0.0) if args.quick
             else dict(warmup=5, iters=30, min_seconds=0.5))
    from portanet.errors import PortanetError

    try:  # bad input ends here, in one line, before anything is written
        digits = nets.load_digits(args.data)
    except PortanetError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    stages = 3 + len(wanted) + 4  # data, two trainings, frameworks, int8, fine-tune, export, report
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    with progress:
        overall = progress.add_task("case study", total=stages)
        detail = progress.add_task("", total=1, visible=False)

        current = [""]

        def stage(text: str) -> None:
            current[0] = text
            progress.update(overall, description=f"[bold]{text}")
            progress.update(detail, visible=False)

        def advance(done: int, total: int) -> None:
            progress.update(detail, completed=done, total=total, visible=True, description=f"  {current[0]}: batches")

        def step() -> None:
            progress.advance(overall)

        stage("loading data")
        ctx = Context(out, digits, settings, 64, bench, tools=_tool_versions())
        step()

        stage("training PyTorch")
        try:
            import torch

            torch.manual_seed(settings.seed)
            from model_zoo.pytorch.models import CaseStudyCNN

            model = CaseStudyCNN()
            ctx.trained["pytorch"] = nets.train_pytorch(model, digits, settings, advance)
            ctx.torch_model, ctx.weights = model, nets.torch_weights(model)
        except Exception as exc:  # noqa: BLE001 - the row reports it; the other frameworks still run
            log.error("PyTorch training failed: %s", _failure(exc))
        step()

        stage("training Keras")
        if "keras" in wanted:
            try:
                models = nets.keras_case_study_cnn(settings.seed)
                ctx.trained["keras"] = nets.train_keras(models, digits, settings, advance)
                ctx.keras_models = models
            except Exception as exc:  # noqa: BLE001
                log.error("Keras training failed: %s", _failure(exc))
        step()

        rows: list[FrameworkRow] = []
        for key in wanted:
            case = CASES[key]
            stage(f"{case.title}: convert, verify, measure")
            row = FrameworkRow(key, case.title, case.reference, case.weights)
            if key in ctx.trained:
                row.train_seconds_per_epoch = ctx.trained[key].median_seconds
                row.train_seconds_all = list(ctx.trained[key].seconds_per_epoch)
                row.train_epochs = len(ctx.trained[key].seconds_per_epoch)
            why = case.unavailable(ctx)
            if why:
                row.status = why
            else:
                try:
                    measure(ctx, case, row)
                except Exception as exc:  # noqa: BLE001 - one framework's failure is its row's status
                    log.exception("%s failed", case.title)
                    row.status = _failure(exc)
            rows.append(row)
            step()

        stage("quantizing the converted PyTorch model to int8")
        from model_zoo.case_study_quantize import int8_row

        rows.append(int8_row(ctx, rows, record_latency, BATCH_SIZES))
        step()

        stage("fine-tuning the converted Caffe model")
        tuned: dict[str, Any] = {}
        donor = next((r for r in rows if r.key == "caffe" and r.ok), None)
        if donor is None:
            tuned = {"status": "skipped: no converted Caffe model"}
        else:
            try:
                tuned = finetune(ctx, "caffe", 320 if args.quick else None, advance)
            except Exception as exc:  # noqa: BLE001
                log.exception("fine-tuning failed")
                tuned = {"status": _failure(exc)}
        step()

        stage("exporting the converted Caffe model back to PyTorch code and TFLite")
        exported = _round_trip(ctx, rows, 320 if args.quick else None, advance)
        step()

        stage("writing the report")
        result = CaseStudyResult(
            data={"name": str(args.data) if args.data else "embedded mnist-10k", "train": len(digits.y_train),
                  "test": len(digits.y_test)},
            settings={"epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
                      "momentum": settings.momentum, "gamma": settings.gamma, "max_batches": settings.max_batches,
                      "quick": args.quick, "full": args.full, "threads": args.threads, "bench": bench},
            rtol=1e-4, atol=1e-5, parity_images=ctx.parity_images, rows=rows, finetune=tuned, tools=ctx.tools,
            export=exported)
        result.seconds = time.perf_counter() - started
        result.conditions = {"start": start_conditions, "end": conditions()}
        paths = write_all(result, out)
        step()

    console.print(rich_table(result))
    if tuned.get("status") == "ok":
        console.print(f"fine-tuned {tuned['framework']}: ORT test accuracy {100 * tuned['accuracy_before']:.2f}% -> "
                      f"{100 * tuned['accuracy_after']:.2f}%")
    console.print(f"report: {paths['md']}  picture: {paths['png']}  ({result.seconds:.0f} s)")
    flagged = result.unreliable()
    if flagged:
        console.print(f"[yellow]{len(flagged)} latency figure(s) unreliable[/] (marked † in the report): "
                      f"{flagged[0]}; load average at start {start_conditions.get('load_average')}")
    failed = [r.title for r in rows if r.ok and r.parity_passed is False]
    broken = [r.title for r in rows if r.status.startswith("failed")]
    if failed or broken:
        console.print(f"[bold red]parity failed: {', '.join(failed)}[/]" if failed else
                      f"[bold red]did not run: {', '.join(broken)}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
