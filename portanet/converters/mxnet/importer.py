"""MXNet importer: ``<prefix>-symbol.json`` + ``<prefix>-NNNN.params``, read without mxnet.

Naming in the IR (so parity tools can map values back to MXNet):

* graph inputs keep the MXNet variable names (``data``); weights keep theirs
  (``conv0_weight``, BatchNorm ``..._running_mean``);
* the value of each op node's output is named like MXNet's internal outputs:
  ``<node>_output`` for single-output ops and ``<node>_output<i>`` for multi-output ops
  (SliceChannel), exactly ``sym.get_internals()`` names; graph outputs therefore carry
  ``sym.list_outputs()`` names;
* node provenance is the MXNet node name and op.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import onnx_ir as ir

from portanet.converters.registry import ConvertOptions, Importer, register_importer
from portanet.errors import ConversionError, InvalidInputError

log = logging.getLogger(__name__)

_PARAMS_RE = re.compile(r"^(?P<prefix>.*)-(?P<epoch>\d{4,})\.params$")


#: ops whose visible outputs have their own names in MXNet (``<node>_<name>``)
_OUTPUT_NAMES = {
    "LeakyReLU": ("output", "mask"),
    "BatchNorm": ("output", "mean", "var"),
}


def output_suffixes(op: str, count: int) -> list[str]:
    """MXNet's names of an op's visible outputs: ``output`` for one, ``output0``... for several."""
    if count == 1:
        return ["output"]
    named = _OUTPUT_NAMES.get(op)
    if named is not None and len(named) >= count:
        return list(named[:count])
    return [f"output{i}" for i in range(count)]


def symbol_prefix(symbol_path: Path) -> str:
    """'/m/resnet-symbol.json' -> '/m/resnet' (the checkpoint prefix)."""
    name = symbol_path.name
    if name.endswith("-symbol.json"):
        return str(symbol_path.with_name(name[: -len("-symbol.json")]))
    return str(symbol_path.with_suffix(""))


def find_params(symbol_path: Path, epoch: int | None = None) -> Path:
    """The ``<prefix>-NNNN.params`` beside a symbol file: ``epoch`` if given, else the highest."""
    prefix = Path(symbol_prefix(symbol_path))
    folder = prefix.parent
    if epoch is not None:
        p = folder / f"{prefix.name}-{epoch:04d}.params"
        if not p.is_file():
            raise InvalidInputError(f"{symbol_path}: no checkpoint for epoch {epoch} (expected {p})")
        return p
    found: list[tuple[int, Path]] = []
    for p in folder.glob(f"{prefix.name}-*.params"):
        m = _PARAMS_RE.match(p.name)
        if m and m.group("prefix") == prefix.name:
            found.append((int(m.group("epoch")), p))
    if not found:
        raise InvalidInputError(
            f"{symbol_path}: no '{prefix.name}-NNNN.params' beside it; pass the weights with --params"
        )
    return max(found)[1]


def _is_symbol_json(path: Path) -> bool:
    if not path.is_file() or path.suffix.lower() != ".json":
        return False
    if path.name.endswith("-symbol.json"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'"nodes"' in head and (b'"op"' in head or b'"heads"' in head)


def _is_params(path: Path) -> bool:
    if not path.is_file() or path.suffix.lower() != ".params":
        return False
    with open(path, "rb") as f:
        return f.read(8) == (0x112).to_bytes(8, "little")


@register_importer
class MxnetImporter(Importer):
    """MXNet symbol JSON + .params (any version from 0.8 to 1.9), without mxnet."""

    name = "mxnet"
    title = "MXNet"
    suffixes = (".json", ".params")

    def detect(self, path: Path) -> bool:
        return _is_symbol_json(path) or _is_params(path)

    def convert(self, paths: Sequence[Path], options: ConvertOptions) -> ir.Model:
        symbol_path, params_path = self._resolve(paths, options)
        return convert_checkpoint(symbol_path, params_path, options)

    def _resolve(self, paths: Sequence[Path], options: ConvertOptions) -> tuple[Path, Path]:
        symbols = [p for p in paths if p.suffix.lower() == ".json"]
        params = [p for p in paths if p.suffix.lower() == ".params"]
        if options.params is not None and Path(options.params) not in params:
            params.append(Path(options.params))
        others = [p for p in paths if p not in symbols and p not in params]
        if others:
            raise InvalidInputError(
                f"{others[0]}: expected an MXNet -symbol.json or .params file, received '{others[0].suffix or others[0].name}'"
            )
        if not symbols and len(params) == 1:
            # 'net-0003.params' alone: its symbol is 'net-symbol.json' beside it
            m = _PARAMS_RE.match(params[0].name)
            guess = params[0].with_name(f"{m.group('prefix')}-symbol.json") if m else None
            if guess is not None and guess.is_file():
                symbols = [guess]
        if len(symbols) != 1:
            raise InvalidInputError(
                f"MXNet conversion takes one -symbol.json file, received {len(symbols)}"
                + (f" ({', '.join(map(str, symbols))})" if symbols else "")
            )
        if len(params) > 1:
            raise InvalidInputError(f"MXNet conversion takes one .params file, received {len(params)}")
        params_path = params[0] if params else find_params(symbols[0], options.epoch)
        if not params_path.is_file():
            raise InvalidInputError(f"{params_path}: no such .params file")
        return symbols[0], params_path


def convert_checkpoint(
    symbol_path: str | Path, params_path: str | Path, options: ConvertOptions | None = None
) -> ir.Model:
    """Convert an MXNet checkpoint (symbol JSON + params) to the IR."""
    from portanet.converters.mxnet.context import Converter, NodeCtx
    from portanet.converters.mxnet.handlers import HANDLERS
    from portanet.converters.mxnet.params import load_params
    from portanet.converters.mxnet.symbol import load_symbol
    from portanet.ir.builder import GraphBuilder

    opts = options or ConvertOptions()
    symbol_path, params_path = Path(symbol_path), Path(params_path)
    symbol = load_symbol(symbol_path)
    where = str(symbol_path)
    # every unsupported op type at once, before converting anything
    # (recurrent variants portanet cannot express count as types of their own)
    from portanet.converters.mxnet.handlers.rnn import op_variant

    HANDLERS.check_supported(((n.name, op_variant(n)) for n in symbol.op_nodes()), path=where)
    params = load_params(params_path)
    _check_input_names(symbol, opts, params)
    builder = GraphBuilder("mxnet", name=Path(symbol_prefix(symbol_path)).name)
    conv = Converter(
        symbol, params, builder, input_shapes=opts.input_shapes, dynamic_batch=opts.dynamic_batch,
        params_path=str(params_path),
    )
    needed = _needed_nodes(symbol)
    for node in symbol.nodes:
        if node.is_variable or node.index not in needed:
            continue
        ctx = NodeCtx(conv, node)
        start = len(builder.nodes)
        with builder.layer(node.name, node.op):
            result = HANDLERS.call(node.op, node.name, ctx, path=where)
            outs = list(result) if isinstance(result, list | tuple) else [result]
            created = {o for nd in builder.nodes[start:] for o in nd.outputs}
            for i, (value, suffix) in enumerate(zip(outs, output_suffixes(node.op, len(outs)))):
                wanted = f"{node.name}_{suffix}"
                if value not in created:  # an input passed through: give the layer its own value
                    value = builder.op("Identity", [value], outputs=[wanted])
                else:
                    _rename(builder, value, wanted)
                conv.values[(node.index, i)] = value
    for src, idx in symbol.heads:
        node = symbol.nodes[src]
        if node.is_variable:
            value = conv.variable(node)
        elif (src, idx) not in conv.values:
            raise ConversionError(
                f"graph output refers to output {idx} of '{node.name}' ({node.op}), which does not exist",
                path=where,
            )
        else:
            value = conv.values[(src, idx)]
        builder.add_output(value)
    unused = sorted(set(params) - conv.used_params)
    if unused:
        log.info("%d stored arrays are not used by the symbol: %s", len(unused), ", ".join(unused[:5]))
    model = builder.build(source_files=[symbol_path, params_path], options=opts.as_metadata(), infer=False)
    conv.annotate(model)
    return model


def _needed_nodes(symbol) -> set[int]:
    """Indices of nodes the heads depend on (dead branches, e.g. loss nodes, are skipped)."""
    needed: set[int] = set()
    stack = [src for src, _ in symbol.heads]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(src for src, _ in symbol.nodes[i].inputs)
    return needed


def _check_input_names(symbol, opts: ConvertOptions, params) -> None:
    data_vars = [n.name for n in symbol.nodes if n.is_variable and n.name not in params]
    for name in opts.input_shapes:
        if name and name not in data_vars:
            raise InvalidInputError(
                f"--input-shape: the symbol has no input named '{name}'; inputs: {', '.join(data_vars) or 'none'}"
            )


def _rename(builder, value: ir.Value, wanted: str) -> None:
    if value.name == wanted:
        return
    builder._value_names.discard(value.name or "")
    value.name = builder.unique_value_name(wanted)
