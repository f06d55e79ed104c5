"""portanet command line: click commands only — parse, call the library, print.

Exit status: 0 success; 2 bad input or unsupported model (one line, no traceback unless
--debug); 3 parity failure (verify); 1 internal error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from portanet import __version__
from portanet.errors import InvalidInputError, PortanetError

log = logging.getLogger("portanet")


class PortanetGroup(click.Group):
    """Turns PortanetError into a one-line message and its exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) or "--debug" in sys.argv
        try:
            return super().invoke(ctx)
        except PortanetError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - last resort: internal error, exit 1
            if debug:
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


def console():  # rich is imported lazily to keep `--help` fast
    from rich.console import Console

    return Console()


@click.group(cls=PortanetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="portanet")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show progress logs.")
def cli(debug: bool, verbose: bool) -> None:
    """portanet: convert trained CNNs from PyTorch, TensorFlow/Keras, Caffe, MXNet and CNTK
    to ONNX, prove the conversion, run, optimize and train them.

    \b
    Examples:
      portanet convert deploy.prototxt net.caffemodel -o net.onnx
      portanet inspect net.onnx
      portanet run net.onnx --input data=x.npy -o out.npz
    """
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False)], force=True)


def user_code_options() -> list:
    """--import / --plugin / --trust-code: user code loaded before the source is read (eager
    callbacks, so every command taking source options honours them)."""

    def _imports(ctx, param, values):
        from portanet.converters.plugins import import_modules

        import_modules(values)

    def _plugins(ctx, param, values):
        from portanet.converters.plugins import load_plugins

        load_plugins(values)

    def _trust(ctx, param, value):
        if value:
            from portanet.converters.plugins import trust_code

            trust_code()
            # for this command only: an in-process caller's later loads stay in safe mode
            ctx.call_on_close(lambda: trust_code(False))

    return [
        click.option("--import", "imports", multiple=True, metavar="MODULE", expose_value=False, callback=_imports,
                     help="Import MODULE first (repeatable): registers the user's Keras classes or layer plugins."),
        click.option("--plugin", "plugins", multiple=True, metavar="FILE.py", expose_value=False, callback=_plugins,
                     type=click.Path(path_type=Path),
                     help="Load layer handlers registered with @portanet.register_layer (repeatable)."),
        click.option("--trust-code", is_flag=True, expose_value=False, callback=_trust,
                     help="Keras: deserialize Lambda layers (runs Python code stored in the model file)."),
    ]


def source_options(fn):
    """The conversion options shared by `convert` and `verify` (they read the source the same way)."""
    options = [
        click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
                     help="Override an input's shape (repeatable; NAME= may be omitted for one input; "
                          "PyTorch files: the example input)."),
        click.option("--prototxt", type=click.Path(path_type=Path), help="Caffe: the deploy prototxt."),
        click.option("--weights", type=click.Path(path_type=Path), help="Caffe: the .caffemodel."),
        click.option("--params", type=click.Path(path_type=Path), help="MXNet: the .params file."),
        click.option("--epoch", type=int, help="MXNet: checkpoint epoch (default: highest found)."),
        click.option("--model-class", metavar="pkg.module:Factory",
                     help="PyTorch: builds the module for a state dict."),
        click.option("--trust-pickle", is_flag=True, help="PyTorch: allow unpickling whole models (runs code!)."),
        click.option("--nchw", is_flag=True,
                     help="Keras/TF: NCHW inputs and outputs instead of the Keras NHWC interface."),
        *user_code_options(),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _source_list(sources: tuple[Path, ...], *flagged: Path | None) -> list[Path]:
    """SOURCES plus the files given by flag (--prototxt/--weights/--params); at least one."""
    srcs = list(sources) + [p for p in flagged if p is not None and p not in sources]
    if not srcs:
        raise InvalidInputError(
            "no source model given: pass the model file(s) as arguments, or --prototxt/--weights (Caffe), "
            "--params (MXNet)"
        )
    return srcs


# ---------------------------------------------------------------------------------- convert
@cli.command()
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output .onnx file.")
@click.option("--framework", "-f", help="Source format (caffe, mxnet, keras, pytorch, cntk, onnx); detected by default.")
@click.option("--opset", type=int, help="ONNX opset of the output (13-21; default 18).")
@source_options
@click.option("-O", "opt_level", type=click.IntRange(0, 2), default=1, show_default=True,
              help="Optimization level: 0 none, 1 clean-up that keeps the model trainable, 2 inference.")
@click.option("--verify", "do_verify", is_flag=True, help="Run the source framework beside the result and check parity.")
def convert(sources: tuple[Path, ...], output: Path, framework: str | None, opset: int | None,
            input_shapes: tuple[str, ...], prototxt: Path | None, weights: Path | None, params: Path | None,
            epoch: int | None, model_class: str | None, trust_pickle: bool, nchw: bool, opt_level: int,
            do_verify: bool) -> None:
    """Convert SOURCES to ONNX.

    \b
    Examples:
      portanet convert deploy.prototxt net.caffemodel -o net.onnx
      portanet convert net.caffemodel -o net.onnx               (layer definitions inside)
      portanet convert resnet-symbol.json -o r.onnx --input-shape data=1x3x224x224
      portanet convert model.keras -o m.onnx --nchw
      portanet convert resnet18.pt2 -o r.onnx
      portanet convert mnist_conv.cmf -o m.onnx
      portanet convert old.onnx -o new.onnx --opset 13
    """
    from portanet.converters.registry import ConvertOptions, convert_paths
    from portanet.ir.io import save_onnx
    from portanet.ir.shapes import parse_input_shapes

    srcs = _source_list(sources, prototxt, weights, params)
    opts = ConvertOptions(
        input_shapes=parse_input_shapes(input_shapes),
        prototxt=prototxt, weights=weights, params=params, epoch=epoch,
        model_class=model_class, trust_pickle=trust_pickle, nchw=nchw,
    )
    if not do_verify and srcs and all(Path(p).suffix.lower() in (".keras", ".h5", ".hdf5") for p in srcs):
        from portanet.converters.keras.importer import use_light_backend

        use_light_backend(srcs)  # a Keras file converts without importing TensorFlow
    if opset is not None and not 13 <= opset <= 21:
        raise InvalidInputError(f"--opset {opset} is outside the supported range 13-21")
    with console().status("converting ..."):
        model = convert_paths(srcs, opts, framework=framework)
        if opt_level > 0:
            model = _optimize(model, opt_level)
    if do_verify:
        model = _verify_into(srcs, model, framework)
    save_onnx(model, output, opset=opset)
    _print_summary(model, output)


def _optimize(model, level: int):
    try:
        from portanet.optimizer import optimize
    except ImportError:  # optimizer not installed in this build
        return model
    return optimize(model, level=level)


def _verify_into(srcs, model, framework):
    from portanet.parity import verify_model

    report = verify_model(srcs, model, framework=framework)
    if click.get_current_context().find_root().params.get("verbose"):
        _print_verify(report)  # the table; its last line is the verdict
    elif report.passed:  # a failure's verdict is the error line printed on exit 3
        console().print(f"[green]{report.summary()}[/green]", soft_wrap=True)
        for note in report.notes:
            console().print(f"[bold yellow]warning[/bold yellow]: {note}", soft_wrap=True)
    report.raise_on_failure()
    report.write_certificate(model)
    return model


def _print_summary(model, output: Path) -> None:
    from portanet.ir.metadata import FRAMEWORK_KEY

    n = sum(1 for _ in model.graph)
    params = sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)
    console().print(
        f"[green]wrote[/green] {output}  ({model.metadata_props.get(FRAMEWORK_KEY, '?')} -> ONNX, "
        f"{n} nodes, {params:,} parameters)"
    )


# ---------------------------------------------------------------------------------- export
@cli.command("export")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, metavar="TARGET",
              help="pytorch, torchscript, pt2, keras, savedmodel or tflite.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output file (net.py, net.pt, net.pt2, model.keras, model.tflite) or folder (savedmodel).")
@click.option("--framework", "-f", help="Source format; detected by default (an .onnx file works too).")
@source_options
@click.option("--verify/--no-verify", "do_verify", default=True, show_default=True,
              help="Run the export in a fresh process beside ONNX Runtime on seeded inputs.")
@click.option("--keep-layout", is_flag=True, help="Keras/SavedModel/TFLite: keep the IR's NCHW interface.")
@click.option("--quantize", type=click.Choice(["dynamic"]), help="TFLite: dynamic-range int8 weights.")
@click.option("--class-name", help="PyTorch: name of the generated nn.Module class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the verification inputs.")
def export_cmd(sources: tuple[Path, ...], to: str, output: Path, framework: str | None,
               input_shapes: tuple[str, ...], prototxt: Path | None, weights: Path | None, params: Path | None,
               epoch: int | None, model_class: str | None, trust_pickle: bool, nchw: bool, do_verify: bool,
               keep_layout: bool, quantize: str | None, class_name: str | None, seed: int) -> None:
    """Export SOURCES (anything `convert` takes, or an .onnx) back into a framework.

    \b
    Examples:
      portanet export deploy.prototxt net.caffemodel --to pytorch -o net.py     (+ net.pt)
      portanet export model.onnx --to keras -o model.keras
      portanet export resnet-symbol.json --to tflite -o resnet.tflite
      portanet export net.onnx --to savedmodel -o served/
    Exit 3 when the export does not match ONNX Runtime (the first divergent layer is named).
    """
    from portanet.converters.registry import ConvertOptions, convert_paths
    from portanet.export import export, get_target
    from portanet.ir.shapes import parse_input_shapes

    tgt = get_target(to)
    srcs = list(sources) + [p for p in (prototxt, weights, params) if p is not None and p not in sources]
    opts = ConvertOptions(
        input_shapes=parse_input_shapes(input_shapes),
        prototxt=prototxt, weights=weights, params=params, epoch=epoch,
        model_class=model_class, trust_pickle=trust_pickle, nchw=nchw,
    )
    with console().status(f"exporting to {tgt.name} ..."):
        model = _optimize(convert_paths(srcs, opts, framework=framework), 1)
        result = export(model, to=tgt.name, path=output, verify=do_verify, seed=seed, keep_layout=keep_layout,
                        quantize=quantize, class_name=class_name, opt_level=0)
    files = ", ".join(str(f) for f in result.artifact.files)
    console().print(f"[green]wrote[/green] {files}  ({tgt.name}, {result.seconds:.2f} s)")
    if result.check is not None:
        c = result.check
        console().print(f"[green]verified[/green] against ONNX Runtime in a fresh process (batch "
                        f"{', '.join(map(str, c.batches))}): max error {c.max_error:.2g}")


# ---------------------------------------------------------------------------------- inspect
@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
def inspect(model_path: Path, as_json: bool) -> None:
    """Show a model's inputs/outputs, op histogram, parameters, opset, provenance and metadata.

    \b
    Examples:
      portanet inspect net.onnx
      portanet inspect net.onnx --json | jq .parameters
    """
    from portanet.inspect import describe
    from portanet.ir.io import load_onnx

    info = describe(load_onnx(model_path, upgrade=False), model_path)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=False))
        return
    _print_inspect(info)


def _print_inspect(info: dict[str, Any]) -> None:
    from rich.table import Table

    con = console()
    con.print(f"[bold]{info['file']}[/bold]  opset {info['opset']}  ir_version {info['ir_version']}  "
              f"producer {info['producer']}")
    io = Table(title="Inputs and outputs")
    for col in ("kind", "name", "shape", "dtype"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            io.add_row(kind[:-1], t["name"], str(t["shape"]), t["dtype"])
    con.print(io)
    ops = Table(title=f"Operators ({info['nodes']} nodes)")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, c in info["ops"].items():
        ops.add_row(op, str(c))
    con.print(ops)
    p = info["parameters"]
    con.print(f"parameters: {p['trainable']:,} trainable in {p['tensors']} tensors, "
              f"{p['buffers']:,} buffer values, " + (f"{p['frozen']:,} frozen in {p['frozen_tensors']} tensors, "
              if p.get("frozen") else "") + f"{p['bytes']:,} bytes of initializers")
    prov = info["provenance"]
    con.print(f"provenance: {prov['nodes_with_provenance']}/{prov['nodes']} nodes from "
              f"{prov['source_layers']} source layers")
    from portanet.parity.report import certificate_summary

    cert_line = certificate_summary(info["metadata"].get("portanet.parity"))
    if cert_line:
        con.print(cert_line)
    if info["metadata"]:
        md = Table(title="Metadata")
        md.add_column("key")
        md.add_column("value", overflow="fold")
        for k, v in info["metadata"].items():
            md.add_row(k, v if isinstance(v, str) else json.dumps(v))
        con.print(md)


# -------------------------------------------------------------------------------------- run
@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE.npy",
              help="An input array (repeatable). Random inputs of the declared shapes by default.")
@click.option("--backend", "--backends", "backend", default="ort", show_default=True, metavar="NAME[,NAME...]",
              help="ort, torch, openvino, opencv or tract; several (comma-separated) run side by side.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size for random inputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random inputs.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write outputs to this .npz file.")
def run(model_path: Path, inputs: tuple[str, ...], backend: str, device: str, batch: int, seed: int,
        output: Path | None) -> None:
    """Run MODEL once and print output shapes and statistics.

    \b
    Examples:
      portanet run net.onnx                                   (random inputs)
      portanet run net.onnx --input data=x.npy -o out.npz
      portanet run net.onnx --backend torch --batch 8
      portanet run net.onnx --backends ort,openvino,opencv,tract
    """
    from rich.table import Table

    from portanet.ir.io import atomic_write_bytes, load_onnx
    from portanet.parity.inputs import load_array
    from portanet.runtime.session import Session

    names = [b.strip() for b in backend.split(",") if b.strip()] or ["ort"]
    model = load_onnx(model_path, upgrade=False)
    session = Session(model, backend=names[0], device=device)
    feeds = session.random_feeds(batch=batch, seed=seed)
    for spec in inputs:
        name, sep, file = spec.partition("=")
        if not sep:
            if len(session.inputs) != 1:
                raise InvalidInputError(f"--input {spec}: name the input (NAME=FILE.npy); inputs: "
                                        + ", ".join(i.name for i in session.inputs))
            name, file = session.inputs[0].name, spec
        feeds[name] = load_array(Path(file))
    outputs = session.run(feeds)
    # further backends run the same feeds; their table adds the max |difference| to the first's
    runs = [(names[0], outputs)] + [(b, Session(model, backend=b, device=device).run(feeds)) for b in names[1:]]
    for be, outs in runs:
        table = Table(title=f"{model_path.name} on {be}/{device}")
        cols = ["output", "shape", "dtype", "min", "max", "mean", "std"] + ([f"max |diff| vs {names[0]}"] if be != names[0] else [])
        for col in cols:
            table.add_column(col, justify="left" if col in ("output", "shape", "dtype") else "right")
        for name, arr in outs.items():
            a = np.asarray(arr)
            stats = [f"{float(f(a)):.6g}" for f in (np.min, np.max, np.mean, np.std)] if a.size and a.dtype.kind in "fiu" else ["-"] * 4
            if be != names[0]:
                ref = np.asarray(outputs[name])
                same = ref.shape == a.shape and a.size and a.dtype.kind in "fiu"
                stats.append(f"{float(np.max(np.abs(a.astype(np.float64) - ref))):.3g}" if same else "shape differs")
            table.add_row(name, str(list(a.shape)), str(a.dtype), *stats)
        console().print(table)
    if output is not None:
        import io

        buf = io.BytesIO()
        np.savez(buf, **outputs)
        atomic_write_bytes(output, buf.getvalue())
        console().print(f"[green]wrote[/green] {output}")


# ------------------------------------------------------------------ commands of later issues
# optimize, verify, train and bench register here (each a thin wrapper over the library).
# --- optimize ---
@cli.command("optimize")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output .onnx file.")
@click.option("-O", "opt_level", type=click.IntRange(0, 2), default=2, show_default=True,
              help="0 none, 1 clean-up that keeps the model trainable, 2 inference (folds BatchNorm, Dropout).")
@click.option("--passes", metavar="a,b,...", help="Run exactly these passes (names as in the --check table).")
@click.option("--check", is_flag=True, help="Run probe inputs through ONNX Runtime around every pass.")
@click.option("--opset", type=int, help="ONNX opset of the output (13-21; default: the model's).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: float16 weights and compute, float32 inputs/outputs, overflow-prone ops kept float32; "
                   "checked against float32 at float16 tolerances (exit 3 beyond them).")
def optimize_cmd(model_path: Path, output: Path, opt_level: int, passes: str | None, check: bool,
                 opset: int | None, precision: str) -> None:
    """Optimize MODEL: fewer nodes and bytes, the same outputs.

    \b
    Examples:
      portanet optimize net.onnx -o net.opt.onnx
      portanet optimize net.onnx -o net.opt.onnx -O1 --check
      portanet optimize net.onnx -o out.onnx --passes constant_folding,remove_unused
      portanet optimize net.onnx -o net.fp16.onnx --precision fp16
    """
    from portanet.ir.io import load_onnx, save_onnx
    from portanet.optimizer import optimize_with_report

    if opset is not None and not 13 <= opset <= 21:
        raise InvalidInputError(f"--opset {opset} is outside the supported range 13-21")
    names = [p.strip() for p in passes.split(",") if p.strip()] if passes else None
    model = load_onnx(model_path)
    with console().status("optimizing ..."):
        result = optimize_with_report(model, level=opt_level, passes=names, check=check)
    fp16 = None
    if precision == "fp16":
        from portanet.quantize.fp16 import fp16_checked

        with console().status("converting to float16 ..."):
            half, fp16 = fp16_checked(result.model)
    save_onnx(half if fp16 is not None else result.model, output, opset=opset)
    _print_optimize(result, output, check)
    if fp16 is not None:
        from portanet.quantize.fp16 import FP16_ATOL, FP16_RTOL

        for name, s in fp16.items():
            console().print(f"float16 vs float32 on probe inputs, output {name}: max abs err {s.max_abs:.3g}, "
                            f"max rel err {s.max_rel:.3g}, cosine {s.cosine:.6f} (tolerance {FP16_ATOL:g} + "
                            f"{FP16_RTOL:g} * scale: pass)", soft_wrap=True)


def _print_optimize(result: Any, output: Path, check: bool) -> None:
    from rich.table import Table

    con = console()
    b, a = result.before, result.after
    table = Table(title=f"{output.name}: {b.nodes} -> {a.nodes} nodes in {result.rounds} round(s)")
    for col in ("", "before", "after"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("nodes", str(b.nodes), str(a.nodes))
    table.add_row("initializer bytes", f"{b.initializer_bytes:,}", f"{a.initializer_bytes:,}")
    for op in sorted(set(b.ops) | set(a.ops)):
        table.add_row(f"  {op}", str(b.ops.get(op, 0)), str(a.ops.get(op, 0)))
    con.print(table)
    if check and not result.records:
        con.print("nothing to change: no pass modified the model (outputs unchanged)")
    elif check:
        passes = Table(title="Passes (ONNX Runtime check on probe inputs)")
        for col in ("round", "pass", "nodes", "max |change|", "relative"):
            passes.add_column(col, justify="left" if col == "pass" else "right")
        for r in result.records:
            passes.add_row(str(r.round), r.name, f"{r.nodes_before} -> {r.nodes_after}",
                           f"{r.max_abs_change:.3g}", f"{r.max_rel_change:.3g}")
        con.print(passes)
        con.print(f"max output change against the original: {result.total_change:.3g}")
    con.print(f"[green]wrote[/green] {output}")


# --- quantize ---
@cli.command("quantize")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Quantized .onnx to write.")
@click.option("--data", "-d", "data", type=click.Path(path_type=Path),
              help="IDX directory or .npz: calibration from its training split, evaluation on its test split "
                   "(default: the embedded MNIST 10k subset).")
@click.option("--mode", type=click.Choice(["static", "dynamic"]), default="static", show_default=True,
              help="static: int8 weights and activations (QDQ); dynamic: int8 MatMul/Gemm weights only.")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="How activation ranges are chosen (static).")
@click.option("--samples", type=int, default=256, show_default=True, help="Calibration samples (training split).")
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales per output channel.")
@click.option("--max-accuracy-drop", type=float, metavar="POINTS",
              help="Accuracy budget: over it, the most sensitive layers stay float until it holds.")
@click.option("--test-samples", type=int, help="Evaluate on the first N test samples (default: all).")
@click.option("--mean", help="Input mean(s), comma-separated (default: as `portanet train`).")
@click.option("--std", help="Input std(s), comma-separated (with --mean).")
@click.option("--no-normalize", is_flag=True, help="Only scale integer images to [0, 1].")
@click.option("--no-latency", is_flag=True, help="Skip the ONNX Runtime latency measurement.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration sample choice.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report as JSON.")
def quantize_cmd(model_path: Path, output: Path, data: Path | None, mode: str, calibration: str, samples: int,
                 per_channel: bool, max_accuracy_drop: float | None, test_samples: int | None, mean: str | None,
                 std: str | None, no_normalize: bool, no_latency: bool, seed: int, json_path: Path | None) -> None:
    """Quantize MODEL to int8 with calibration on real data, and measure what it costs.

    Inputs are prepared as `portanet train` prepares them (layout, normalisation). Prints
    float32 vs int8: top-1 accuracy (labelled data) or agreement/cosine, size, and ONNX
    Runtime latency at batch 1 and 32. Exit 3 when --max-accuracy-drop cannot be met (the
    model with every layer fallback tried is still written).

    \b
    Examples:
      portanet quantize net.onnx -o net.int8.onnx
      portanet quantize net.onnx -o q.onnx --data mnist/ --calibration entropy --samples 512
      portanet quantize net.onnx -o q.onnx --data d.npz --max-accuracy-drop 0.5
    """
    from portanet.errors import ParityError
    from portanet.ir.io import atomic_write_bytes
    from portanet.quantize import QuantizeOptions, quantize_file

    opts = QuantizeOptions(mode=mode, calibration=calibration, samples=samples, per_channel=per_channel,
                           max_accuracy_drop=max_accuracy_drop, test_samples=test_samples, mean=_float_list(mean),
                           std=_float_list(std), normalize=not no_normalize, seed=seed,
                           latency_batches=() if no_latency else (1, 32))
    opts.validate()
    with console().status("quantizing ...") as status:
        result = quantize_file(model_path, output, data, opts, progress=lambda msg: status.update(f"{msg} ..."))
    report = result.report
    _print_quantize(report, output)
    if json_path is not None:
        atomic_write_bytes(json_path, report.to_json().encode())
        console().print(f"[green]wrote[/green] {json_path}")
    if report.budget_met is False:
        raise ParityError(f"{output}: int8 loses {report.drop:.2f} points, over the budget of "
                          f"{report.budget:g}, even with {len(report.fallback.kept) if report.fallback else 0} "
                          "layer(s) in float")


def _print_quantize(report: Any, output: Path) -> None:
    from rich.table import Table

    con = console()
    d = report.data
    con.print(f"calibration: {d['calibration_samples']} training samples of {d['data']} "
              f"({report.calibration or 'none: dynamic'}), evaluation: {d['test_samples']} test samples; "
              f"normalisation: {d['normalization_source']}", soft_wrap=True)
    batches = sorted({b for r in report.rows for b in r.latency_ms})
    table = Table(title=f"{output.name}: float32 vs int8 ({report.mode}, "
                        f"{'per-channel' if report.per_channel else 'per-tensor'} weights)")
    cols = ["precision", "top-1 acc", "agree w/ float", "cosine", "max rel err", "size MB"] + [
        f"ORT b{b} ms" for b in batches]
    for c in cols:
        table.add_column(c, justify="left" if c == "precision" else "right")
    base = report.rows[0]
    for r in report.rows:
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        ratio = lambda a, b, r=r: "" if r is base or not b else f" ({a / b:.2f}x)"  # noqa: E731
        table.add_row(r.name, pct(r.accuracy), pct(r.agreement), f"{r.cosine:.5f}", f"{r.max_rel:.3g}",
                      f"{r.size_bytes / 1e6:.3f}{ratio(r.size_bytes, base.size_bytes)}",
                      *[f"{r.latency_ms[b]:.3f}{ratio(r.latency_ms[b], base.latency_ms.get(b))}" for b in batches])
    con.print(table)
    fb = report.fallback
    if fb is not None:
        con.print(f"naive int8 lost {report.naive_drop:.2f} points (budget {report.budget:g}): measured "
                  f"{len(fb.sensitivities)} layers one at a time", soft_wrap=True)
        ft = Table(title="layers kept in float (source layers, most sensitive first)")
        for c in ("layer", "type", "why"):
            ft.add_column(c, overflow="fold")
        for s, why in fb.kept_layers():
            ft.add_row(s.layer, s.layer_type, why)
        con.print(ft)
    style = "green" if report.budget_met is not False else "red"
    con.print(f"[{style}]{report.summary()}[/{style}]", soft_wrap=True)
    con.print(f"[green]wrote[/green] {output}")


# --- verify ---
@cli.command("verify")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path),
              help="An already converted model to check (default: convert SOURCES now).")
@click.option("--framework", "-f", help="Source format; detected by default.")
@click.option("--backends", default=None, metavar="ort,torch",
              help="Backends to compare: ort, torch, openvino, opencv, tract (default: ort and torch, where they can run the model).")
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE.npy", help="An input array (repeatable).")
@click.option("--data", type=click.Path(path_type=Path), help="A dataset (IDX folder or .npz): its first test samples.")
@click.option("--shapes", metavar="1x3x224x224,4x3x224x224",
              help="Input shapes to run, comma separated (NAME= prefix for multi-input models).")
@click.option("--rtol", type=float, default=1e-4, show_default=True)
@click.option("--atol", type=float, default=1e-5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--bisect/--no-bisect", "do_bisect", default=None,
              help="Find the first divergent layer: by default only on failure; --bisect always.")
@click.option("--repro-dir", type=click.Path(path_type=Path), default=Path("portanet-repro"), show_default=True,
              help="Where bisection writes the minimal repro (repro.onnx, repro_inputs.npz, repro_expected.npz).")
@click.option("--train", "train", is_flag=True, help="Also check the loss and every parameter's gradient (PyTorch, Keras).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full report as JSON.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Save the verified model with its certificate.")
@click.option("--no-certificate", is_flag=True, help="Do not write the certificate into --onnx on success.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@source_options
def verify(sources: tuple[Path, ...], onnx_path: Path | None, framework: str | None, backends: str | None,
           inputs: tuple[str, ...], data: Path | None, shapes: str | None, rtol: float, atol: float, seed: int,
           do_bisect: bool | None, repro_dir: Path, train: bool, json_path: Path | None, output: Path | None,
           no_certificate: bool, device: str, input_shapes: tuple[str, ...], prototxt: Path | None,
           weights: Path | None, params: Path | None, epoch: int | None, model_class: str | None,
           trust_pickle: bool, nchw: bool) -> None:
    """Check numeric parity of a conversion with the source framework.

    Runs the source and each backend on the same inputs (seeded random of the declared
    shapes, --input arrays or --data samples) and prints, per backend and output, the max
    abs error, the max error relative to the output's scale, cosine similarity, top-1
    agreement and pass/fail. Exit status 0 all pass, 3 parity failure, 2 bad input.

    \b
    Examples:
      portanet verify deploy.prototxt net.caffemodel
      portanet verify resnet18.pt2 --shapes 1x3x224x224,4x3x224x224 --json report.json
      portanet verify model.keras --onnx m.onnx --bisect
      portanet verify lenet.pth --model-class zoo:LeNet5 --input-shape 1x1x32x32 --train
    """
    from portanet.ir.io import atomic_write_bytes, load_onnx, save_onnx
    from portanet.ir.shapes import parse_input_shapes
    from portanet.parity import verify as run_verify
    from portanet.parity.inputs import load_array

    srcs = _source_list(sources, prototxt, weights, params)
    arrays = {}
    for spec in inputs:
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = "", spec
        arrays[name] = load_array(Path(file))
    convert_kwargs: dict[str, Any] = dict(
        input_shapes=parse_input_shapes(input_shapes), prototxt=prototxt, weights=weights, params=params,
        epoch=epoch, model_class=model_class, trust_pickle=trust_pickle, nchw=nchw,
    )
    with console().status("verifying ..."):
        if onnx_path is not None:
            model = load_onnx(onnx_path)
        else:
            from portanet.converters.registry import ConvertOptions, convert_paths

            model = convert_paths(srcs, ConvertOptions(**convert_kwargs), framework=framework)
        report = run_verify(
            *srcs, onnx=model, framework=framework,
            backends=[b.strip() for b in backends.split(",") if b.strip()] if backends else None,
            inputs=arrays or None, data=data,
            shapes=[s for s in shapes.split(",") if s.strip()] if shapes else None,
            rtol=rtol, atol=atol, seed=seed, bisect=do_bisect, repro_dir=repro_dir, train=train, device=device,
            **convert_kwargs,
        )
    _print_verify(report)
    if json_path is not None:
        atomic_write_bytes(json_path, report.to_json().encode())
        console().print(f"[green]wrote[/green] {json_path}")
    report.raise_on_failure()
    report.write_certificate(model)
    target = output or (None if no_certificate else onnx_path)
    if target is not None:
        save_onnx(model, target)
        console().print(f"[green]certificate written[/green] to {target}")


def _print_verify(report) -> None:
    from rich.table import Table

    con = console()
    ref = report.tools.get("reference")  # which implementation ran the source (Caffe: real Caffe or OpenCV)
    source = f"{report.framework} source" + (f" [{ref}]" if ref else "")
    table = Table(title=f"parity: {source} vs portanet (rtol={report.rtol:g}, atol={report.atol:g})")
    for col in ("backend", "inputs", "output", "max abs err", "max rel err", "cosine", "top-1", "result"):
        table.add_column(col, justify="right" if col in ("max abs err", "max rel err", "cosine", "top-1") else "left")
    for r in report.results:
        s = r.stats
        table.add_row(r.backend, r.inputs, r.output, f"{s.max_abs:.3g}", f"{s.max_rel:.3g}", f"{s.cosine:.6f}",
                      "-" if s.top1 is None else f"{s.top1:.0%}",
                      f"[green]pass[/green] {s.problem}".strip() if s.passed
                      else "[yellow]f32 rounding[/yellow]" if report.arbitrated
                      else f"[red]FAIL[/red] {s.problem}".strip())
    con.print(table)
    for b, why in report.skipped_backends.items():
        con.print(f"[yellow]skipped backend {b}[/yellow]: {why}")
    b = report.bisect
    if b is not None:
        if b.found:
            s = b.stats
            con.print(f"[bold red]first divergent layer[/bold red]: {b.layer} ({b.layer_type}) on {b.backend}, "
                      f"after {b.compared} of {b.candidates} layers compared; last matching: {b.last_good or '-'}")
            con.print(f"  max abs err {s.max_abs:.3g}, max rel err {s.max_rel:.3g}, cosine {s.cosine:.6f}")
            for n in b.nodes:
                attrs = ", ".join(f"{k}={v}" for k, v in n["attributes"].items())
                weights = ", ".join(f"{k} {v}" for k, v in n["weights"].items())
                con.print(f"  {n['op']} {n['node']}" + (f"  [{attrs}]" if attrs else "") + (f"  weights: {weights}" if weights else ""))
            for kind, path in b.repro.items():
                con.print(f"  repro {kind}: {path}")
        else:
            con.print(f"bisect: no divergent layer among {b.compared} compared layers ({b.candidates} in the model)")
    g = report.gradients
    if g is not None:
        gt = Table(title=f"gradients: loss {g.loss_source:.6g} (source) vs {g.loss_ir:.6g} (portanet torch backend), "
                         f"{len(g.params)} parameters, worst 5 shown")
        for col in ("parameter", "initializer", "max abs err", "max rel err", "cosine", "result"):
            gt.add_column(col)
        for name, ir_name, s in g.worst(5):
            gt.add_row(name, ir_name, f"{s.max_abs:.3g}", f"{s.max_rel:.3g}", f"{s.cosine:.6f}",
                       "[green]pass[/green]" if s.passed else "[red]FAIL[/red]")
        con.print(gt)
        if g.unmatched:
            con.print(f"[red]source parameters not found in the model[/red]: {', '.join(g.unmatched[:10])}")
    for note in report.notes:
        con.print(f"[bold yellow]warning[/bold yellow]: {note}", soft_wrap=True)
    if report.passed:  # a failure's summary is the error line the CLI prints on exit 3
        con.print(f"[green]{report.summary()}[/green]", soft_wrap=True)


# --- train ---
def _float_list(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise InvalidInputError(f"expected comma-separated numbers, received '{text}'") from exc


@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--data", "-d", "data", type=click.Path(path_type=Path),
              help="IDX directory (MNIST family) or .npz with x/y; default: the embedded MNIST 10k subset.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Trained .onnx to write.")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Global batch (split over --nproc).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default="sgd", show_default=True)
@click.option("--lr", type=float, help="Learning rate (default: sgd 0.01, adam/adamw 0.001).")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, help="Weight decay (default: 0; adamw 0.01).")
@click.option("--schedule", type=click.Choice(["constant", "step", "exponential", "cosine"]), default="constant",
              show_default=True, help="Learning-rate schedule, stepped per epoch.")
@click.option("--step-size", type=int, help="step schedule: epochs between decays (default epochs/3).")
@click.option("--gamma", type=float, help="step/exponential schedule: decay factor (default 0.1 / 0.9).")
@click.option("--min-lr", type=float, default=0.0, show_default=True, help="cosine schedule: final rate.")
@click.option("--loss", type=click.Choice(["auto", "cross_entropy", "mse"]), default="auto", show_default=True)
@click.option("--train-output", "train_output", help="Model output to train (default: the first).")
@click.option("--freeze", multiple=True, metavar="PATTERN",
              help="Keep parameters of matching source layers fixed (glob, repeatable), e.g. 'conv*'.")
@click.option("--mean", help="Input mean(s), comma-separated (default: computed on the training data).")
@click.option("--std", help="Input std(s), comma-separated (with --mean).")
@click.option("--no-normalize", is_flag=True, help="Only scale integer images to [0, 1].")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Held out for evaluation when the data has no test split.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--nproc", type=int, default=1, show_default=True,
              help="Worker processes on this machine (DistributedDataParallel; gloo on CPU, nccl on CUDA).")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path),
              help="Checkpoint each epoch here (default: OUTPUT's name + .checkpoints).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --checkpoint-dir.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), help="JSON log (default: OUTPUT's name + .train.json).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="PNG curves (default: OUTPUT's name + .train.png).")
@click.option("--opset", type=int, help="ONNX opset of the output (13-21; default 18).")
def train(model_path: Path, data: Path | None, output: Path, epochs: int, batch_size: int, optimizer: str,
          lr: float | None, momentum: float, weight_decay: float | None, schedule: str, step_size: int | None,
          gamma: float | None, min_lr: float, loss: str, train_output: str | None, freeze: tuple[str, ...],
          mean: str | None, std: str | None, no_normalize: bool, val_fraction: float, seed: int, device: str,
          nproc: int, checkpoint_dir: Path | None, resume: bool, log_path: Path | None, plot_path: Path | None,
          opset: int | None) -> None:
    """Fine-tune MODEL (.onnx) on a dataset and write the trained model as ONNX.

    \b
    Examples:
      portanet train net.onnx -o trained.onnx                  (embedded MNIST subset)
      portanet train net.onnx --data fashion-mnist/ -o t.onnx --optimizer adam --epochs 10
      portanet train net.onnx --data d.npz -o t.onnx --freeze 'conv*' --schedule cosine
      portanet train net.onnx -o t.onnx --resume               (after an interruption)
      portanet train net.onnx -o t.onnx --nproc 2              (2 data-parallel workers)
      torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
          -m portanet.cli train net.onnx -o t.onnx --device cuda
    """
    import os
    from dataclasses import asdict

    from portanet.runtime.trainer import TrainConfig

    config = TrainConfig(
        epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
        weight_decay=weight_decay, schedule=schedule, step_size=step_size, gamma=gamma, min_lr=min_lr, loss=loss,
        output=train_output, freeze=list(freeze), seed=seed, device=device, normalize=not no_normalize,
        mean=_float_list(mean), std=_float_list(std), val_fraction=val_fraction,
    )
    config.validate()
    if opset is not None and not 13 <= opset <= 21:
        raise InvalidInputError(f"--opset {opset} is outside the supported range 13-21")
    if not model_path.is_file():
        raise InvalidInputError(f"{model_path}: no such model file")
    if not output.resolve().parent.is_dir():
        raise InvalidInputError(f"{output}: folder {output.resolve().parent} does not exist")
    stem = output.with_suffix("") if output.suffix == ".onnx" else output
    spec = {
        "model": str(model_path), "data": str(data) if data is not None else None, "output": str(output),
        "config": asdict(config), "checkpoint_dir": str(checkpoint_dir or Path(f"{stem}.checkpoints")),
        "resume": resume, "log": str(log_path or Path(f"{stem}.train.json")),
        "plot": str(plot_path or Path(f"{stem}.train.png")), "opset": opset,
    }
    try:
        result = _train_or_launch(spec, nproc, device)
    except KeyboardInterrupt:
        click.echo(_interrupted_message(Path(spec["checkpoint_dir"]), sys.argv[1:], resume), err=True)
        sys.exit(130)
    if "error" in result:
        raise InvalidInputError(result["error"])
    if int(os.environ.get("RANK", "0")) == 0:
        _print_train_summary(result)


def _interrupted_message(ckpt_dir: Path, argv: list[str], resumed: bool) -> str:
    """What Ctrl-C during training leaves behind, and the command that continues it."""
    from portanet.runtime.trainer import list_checkpoints

    found = list_checkpoints(ckpt_dir) if ckpt_dir.is_dir() else []
    if not found:
        return "interrupted before the first epoch ended: no checkpoint was written; start again to train"
    again = " ".join(argv) + ("" if resumed else " --resume")
    return (f"interrupted: the newest checkpoint is {found[-1]} (saved after each epoch); "
            f"continue with: portanet {again}")


def _train_or_launch(spec: dict[str, Any], nproc: int, device: str) -> dict[str, Any]:
    from portanet.runtime import distributed

    if nproc > 1 and not distributed.in_launched_worker():
        from portanet.runtime.trainer import TrainConfig, train_files

        # check every input here, where errors become one line, before starting workers
        train_files(spec["model"], spec["data"], None, config=TrainConfig(**{**spec["config"], "device": "cpu"}),
                    dry_run=True)
        distributed.check_devices(device, nproc)
        console().print(f"starting {nproc} workers ({'nccl' if device.startswith('cuda') else 'gloo'})")
        return distributed.launch(_train_worker, ({**spec, "launched": True},), nproc)
    return _train_worker(spec)


def _train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One training process: what `portanet train` runs in-process, under torchrun and per --nproc worker."""
    import contextlib
    import os

    from portanet.runtime.trainer import TrainConfig, train_files

    progress = _TrainProgress() if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        with progress if progress is not None else contextlib.nullcontext():
            return train_files(
                spec["model"], spec["data"], spec["output"], config=TrainConfig.from_dict(spec["config"]),
                checkpoint_dir=spec["checkpoint_dir"], resume=spec["resume"], log_path=spec["log"],
                plot_path=spec["plot"], opset=spec["opset"], callback=progress.update if progress else None,
            )
    except PortanetError as exc:
        if spec.get("launched"):  # a --nproc worker: the parent prints the message
            return {"error": str(exc)}
        raise


class _TrainProgress:
    """Rich progress bar fed by Trainer events: loss, accuracy, throughput; a line per epoch."""

    def __enter__(self) -> _TrainProgress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.con = console()
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[rate]} samples/s"),
            TimeElapsedColumn(), console=self.con, transient=True,
        )
        self.progress.__enter__()
        self.task: Any = None
        self.epoch = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, event: Any) -> None:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        fields = {"epoch": f"{event.epoch}/{event.epochs}", "loss": fmt(event.loss, ".4f"),
                  "acc": fmt(event.accuracy, ".4f"), "rate": fmt(event.samples_per_s, ",.0f")}
        if event.kind == "batch":
            if self.task is None or self.epoch != event.epoch:
                if self.task is not None:
                    self.progress.remove_task(self.task)
                self.task = self.progress.add_task("train", total=event.steps, **fields)
                self.epoch = event.epoch
            self.progress.update(self.task, completed=event.step, **fields)
        elif event.kind == "epoch":
            m = event.metrics
            test = f"test loss {m['test_loss']:.4f}" + (
                f"  test acc {m['test_accuracy']:.4f}" if "test_accuracy" in m else "")
            self.progress.console.print(
                f"epoch {fields['epoch']}  train loss {fields['loss']}  acc {fields['acc']}  {test}  "
                f"lr {event.lr:.3g}  {fields['rate']} samples/s  ({m['seconds']:.1f} s)", soft_wrap=True)


def _print_train_summary(result: dict[str, Any]) -> None:
    con = console()
    final = result.get("final") or {}
    if result.get("resumed_from"):
        con.print(f"resumed from {result['resumed_from']}", soft_wrap=True)
    if final:
        acc = f", test accuracy {final['test_accuracy']:.4f}" if "test_accuracy" in final else ""
        con.print(f"trained {final.get('epoch', 0)} epoch(s) on {result['world_size']} process(es), "
                  f"{result['device']}: test loss {final['test_loss']:.4f}{acc}", soft_wrap=True)
    for kind, path in result.get("outputs", {}).items():
        con.print(f"[green]wrote[/green] {kind} {path}", soft_wrap=True)


# --- bench ---
@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--backends", default="ort,torch", show_default=True,
              help="Comma list of ort, torch, openvino, opencv, tract, source (source = the original framework; needs --source; "
                   "for Caffe and MXNet sources the time includes loading the model in OpenCV/mxnet).")
@click.option("--batch-sizes", default="1,32", show_default=True, help="Comma list of batch sizes.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--warmup", default=3, show_default=True, help="Untimed runs before timing.")
@click.option("--iters", default=20, show_default=True, help="Minimum timed runs per cell.")
@click.option("--source", "sources", multiple=True, type=click.Path(path_type=Path),
              help="Source model file(s) for the 'source' backend (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.option("--plot", type=click.Path(path_type=Path), help="Write a PNG bar chart of p50 latency.")
def bench(model_path: Path, backends: str, batch_sizes: str, device: str, warmup: int, iters: int,
          sources: tuple[Path, ...], as_json: bool, plot: Path | None) -> None:
    """Measure latency (p50/p90) and throughput of MODEL per backend and batch size.

    \b
    Examples:
      portanet bench net.onnx
      portanet bench net.onnx --backends ort,torch --batch-sizes 1,8,32 --plot bench.png
      portanet bench net.onnx --backends ort,source --source deploy.prototxt --source net.caffemodel
    """
    from rich.table import Table

    from portanet.ir.io import load_onnx
    from portanet.runtime.bench import bench_model, conditions, plot_results

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError as exc:
        raise InvalidInputError(f"--batch-sizes '{batch_sizes}': expected comma-separated integers") from exc
    if not sizes or min(sizes) < 1:
        raise InvalidInputError(f"--batch-sizes '{batch_sizes}': sizes must be positive")
    names = [b.strip() for b in backends.split(",") if b.strip()]
    model = load_onnx(model_path, upgrade=False)
    con = console()
    with con.status("benchmarking ...") as status:
        results = bench_model(model, backends=names, batch_sizes=sizes, device=device, warmup=warmup,
                              iters=iters, sources=sources,
                              on_result=lambda r: status.update(f"{r.backend} batch {r.batch}: {r.p50_ms:.2f} ms"))
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        table = Table(title=f"{model_path.name} on {device}")
        for col in ("backend", "batch", "p50 ms", "p10-p90 ms", "spread", "samples/s", "runs"):
            table.add_column(col, justify="left" if col == "backend" else "right")
        for r in results:
            table.add_row(r.backend, str(r.batch), f"{r.p50_ms:.3f}", f"{r.p10_ms:.3f}-{r.p90_ms:.3f}",
                          f"{r.spread:.0%}" + (" [yellow]![/yellow]" if r.unreliable else ""),
                          f"{r.throughput:,.1f}", str(r.runs))
        con.print(table)
        cond = conditions()
        con.print(f"conditions: load average {cond.get('load_average')}, {cond.get('cpu_count')} cores, "
                  f"threads {cond.get('thread_env') or 'default'}", soft_wrap=True)
        flagged = [r for r in results if r.unreliable]
        if flagged:
            con.print(f"[yellow]unreliable[/yellow] ({len(flagged)} figure(s), marked !): {flagged[0].unreliable}; "
                      "rerun on an idle machine or with more --iters", soft_wrap=True)
    if plot is not None:
        plot_results(results, plot, title=model_path.name)
        if not as_json:
            con.print(f"[green]wrote[/green] {plot}")


def main() -> None:
    cli(prog_name="portanet")


if __name__ == "__main__":
    main()
