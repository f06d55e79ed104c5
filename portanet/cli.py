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


# ---------------------------------------------------------------------------------- convert
@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output .onnx file.")
@click.option("--framework", "-f", help="Source format (caffe, mxnet, keras, pytorch, cntk, onnx); detected by default.")
@click.option("--opset", type=int, help="ONNX opset of the output (13-21; default 18).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Override an input's shape (repeatable; NAME= may be omitted for one input).")
@click.option("--prototxt", type=click.Path(path_type=Path), help="Caffe: the deploy prototxt.")
@click.option("--weights", type=click.Path(path_type=Path), help="Caffe: the .caffemodel.")
@click.option("--params", type=click.Path(path_type=Path), help="MXNet: the .params file.")
@click.option("--epoch", type=int, help="MXNet: checkpoint epoch (default: highest found).")
@click.option("--model-class", metavar="pkg.module:Factory", help="PyTorch: builds the module for a state dict.")
@click.option("--trust-pickle", is_flag=True, help="PyTorch: allow unpickling whole models (runs code!).")
@click.option("--nchw", is_flag=True, help="Keras/TF: NCHW inputs and outputs instead of the Keras NHWC interface.")
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

    srcs = list(sources) + [p for p in (prototxt, weights, params) if p is not None and p not in sources]
    opts = ConvertOptions(
        input_shapes=parse_input_shapes(input_shapes),
        prototxt=prototxt, weights=weights, params=params, epoch=epoch,
        model_class=model_class, trust_pickle=trust_pickle, nchw=nchw,
    )
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
              f"{p['buffers']:,} buffer values, {p['bytes']:,} bytes of initializers")
    prov = info["provenance"]
    con.print(f"provenance: {prov['nodes_with_provenance']}/{prov['nodes']} nodes from "
              f"{prov['source_layers']} source layers")
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
@click.option("--backend", default="ort", show_default=True, help="ort or torch.")
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
    """
    from rich.table import Table

    from portanet.ir.io import atomic_write_bytes, load_onnx
    from portanet.runtime.session import Session

    session = Session(load_onnx(model_path, upgrade=False), backend=backend, device=device)
    feeds = session.random_feeds(batch=batch, seed=seed)
    for spec in inputs:
        name, sep, file = spec.partition("=")
        if not sep:
            if len(session.inputs) != 1:
                raise InvalidInputError(f"--input {spec}: name the input (NAME=FILE.npy); inputs: "
                                        + ", ".join(i.name for i in session.inputs))
            name, file = session.inputs[0].name, spec
        feeds[name] = _load_array(Path(file))
    outputs = session.run(feeds)
    table = Table(title=f"{model_path.name} on {backend}/{device}")
    for col in ("output", "shape", "dtype", "min", "max", "mean", "std"):
        table.add_column(col, justify="right" if col in ("min", "max", "mean", "std") else "left")
    for name, arr in outputs.items():
        a = np.asarray(arr)
        stats = [f"{float(f(a)):.6g}" for f in (np.min, np.max, np.mean, np.std)] if a.size and a.dtype.kind in "fiu" else ["-"] * 4
        table.add_row(name, str(list(a.shape)), str(a.dtype), *stats)
    console().print(table)
    if output is not None:
        import io

        buf = io.BytesIO()
        np.savez(buf, **outputs)
        atomic_write_bytes(output, buf.getvalue())
        console().print(f"[green]wrote[/green] {output}")


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                if len(z.files) != 1:
                    raise InvalidInputError(f"{path}: .npz must hold exactly one array for --input")
                return z[z.files[0]]
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"{path}: not a .npy/.npz array file ({exc})") from exc


# ------------------------------------------------------------------ commands of later issues
# optimize, verify, train and bench register here (each a thin wrapper over the library).
# --- optimize ---
# --- verify ---
# --- train ---
# --- bench ---
@cli.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=Path))
@click.option("--backends", default="ort,torch", show_default=True,
              help="Comma list of ort, torch, source (source = the original framework; needs --source).")
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
    from portanet.runtime.bench import bench_model, plot_results

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
        for col in ("backend", "batch", "p50 ms", "p90 ms", "samples/s", "runs"):
            table.add_column(col, justify="left" if col == "backend" else "right")
        for r in results:
            table.add_row(r.backend, str(r.batch), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput:,.1f}",
                          str(r.runs))
        con.print(table)
    if plot is not None:
        plot_results(results, plot, title=model_path.name)
        if not as_json:
            con.print(f"[green]wrote[/green] {plot}")


def main() -> None:
    cli(prog_name="portanet")


if __name__ == "__main__":
    main()
