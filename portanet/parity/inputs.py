"""Inputs for parity runs: seeded random arrays of the declared shapes, given arrays, or real data."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.errors import InvalidInputError
from portanet.ir.metadata import index_bound
from portanet.ir.shapes import dims_of, parse_shape


@dataclass
class FeedSet:
    """One set of inputs: its label (for reports) and the arrays by IR input name."""

    label: str
    feeds: dict[str, np.ndarray]
    kind: str  # "random" | "given" | "data"

    @property
    def shapes(self) -> dict[str, list[int]]:
        return {k: list(v.shape) for k, v in self.feeds.items()}


def graph_inputs(model: ir.Model) -> list[ir.Value]:
    inits = set(model.graph.initializers)
    return [v for v in model.graph.inputs if v.name not in inits]


def _dtype(v: ir.Value) -> np.dtype:
    return np.dtype(v.dtype.numpy()) if v.dtype is not None else np.dtype(np.float32)


def _concrete(v: ir.Value, override: Sequence[int | str] | None, batch: int) -> list[int]:
    dims = list(override) if override is not None else dims_of(v)
    if dims is None:
        raise InvalidInputError(f"input '{v.name}' has no declared shape; pass --shapes or --input")
    declared = dims_of(v)
    if override is not None and declared is not None:
        if len(declared) != len(dims):
            raise InvalidInputError(
                f"--shapes {'x'.join(map(str, dims))}: input '{v.name}' has rank {len(declared)} "
                f"({'x'.join(str(d) if isinstance(d, int) else str(d or '?') for d in declared)})"
            )
        for i, (want, got) in enumerate(zip(declared, dims)):
            if isinstance(want, int) and isinstance(got, int) and want != got:
                raise InvalidInputError(
                    f"--shapes {'x'.join(map(str, dims))}: input '{v.name}' has dimension {i} fixed at {want}"
                )
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, int):
            out.append(d)
        elif i == 0:
            out.append(batch)
        else:
            raise InvalidInputError(f"input '{v.name}' has a free dimension {i} ('{d}'); give its size with --shapes")
    return out


def _random(shape: list[int], dtype: np.dtype, rng: np.random.Generator, high: int | None = None) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        # indices (token ids) stay below the table size the converter recorded
        return rng.integers(0, max(1, min(10, high if high is not None else 10)), size=shape).astype(dtype)
    return rng.integers(0, 2, size=shape).astype(dtype)


def parse_shape_sets(specs: Sequence[str] | None) -> list[dict[str, list[int | str]]]:
    """Shape specs -> one {input name or '': dims} per run.

    ``["1x3x224x224", "4x3x224x224"]`` is two runs of a single-input model; named specs group
    into one run until a name repeats: ``["a=1x3x8x8", "b=1x5", "a=4x3x8x8", "b=4x5"]`` is two
    runs of a two-input model.
    """
    out: list[dict[str, list[int | str]]] = []
    for spec in specs or []:
        name, sep, shape = spec.strip().rpartition("=")
        key = name if sep else ""
        dims = parse_shape(shape if sep else spec)
        if not out or key == "" or key in out[-1] or "" in out[-1]:
            out.append({})
        out[-1][key] = dims
    return out


def random_feed_sets(
    model: ir.Model,
    shape_sets: Sequence[Mapping[str, Sequence[int | str]]] | None,
    *,
    seed: int = 0,
    batches: Sequence[int] = (1, 2),
) -> list[FeedSet]:
    """One FeedSet per shape set; without shape sets, one per batch size in ``batches`` (only
    batch 1 when no input has a symbolic batch dimension)."""
    inputs = graph_inputs(model)
    sets: list[FeedSet] = []
    if not shape_sets:
        dynamic = any((dims_of(v) or [0])[0] is None or isinstance((dims_of(v) or [0])[0], str) for v in inputs)
        shape_sets = [{"__batch__": [b]} for b in (batches if dynamic else batches[:1])]
    for i, spec in enumerate(shape_sets):
        rng = np.random.default_rng(seed + i)
        batch = int(spec["__batch__"][0]) if "__batch__" in spec else 1
        feeds: dict[str, np.ndarray] = {}
        for v in inputs:
            override = spec.get(v.name)
            if override is None and "" in spec:
                if len(inputs) != 1:
                    names = ", ".join(str(x.name) for x in inputs)
                    raise InvalidInputError(f"--shapes without a name needs a single-input model; inputs: {names}")
                override = spec[""]
            if override is not None and isinstance(override[0], int):
                batch = int(override[0])
            feeds[v.name or ""] = _random(_concrete(v, override, batch), _dtype(v), rng, index_bound(v))
        unknown = [k for k in spec if k not in feeds and k not in ("", "__batch__")]
        if unknown:
            raise InvalidInputError(f"--shapes names unknown input(s) {', '.join(unknown)}")
        label = ", ".join(f"{k} {'x'.join(map(str, a.shape))}" for k, a in feeds.items())
        sets.append(FeedSet(label, feeds, "random"))
    return sets


def load_array(path: Path) -> np.ndarray:
    """One array from a .npy file or a single-array .npz (for --input NAME=FILE)."""
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


def given_feed_set(model: ir.Model, arrays: Mapping[str, Any]) -> FeedSet:
    """A FeedSet from user arrays keyed by input name ('' for a single-input model)."""
    inputs = {v.name: v for v in graph_inputs(model)}
    feeds: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        if name == "":
            if len(inputs) != 1:
                raise InvalidInputError(f"--input without a name needs a single-input model; inputs: {', '.join(inputs)}")
            name = next(iter(inputs))
        if name not in inputs:
            raise InvalidInputError(f"--input {name}: the model has no input '{name}'; inputs: {', '.join(inputs)}")
        a = np.asarray(arr)
        want = _dtype(inputs[name])
        if a.dtype != want and a.dtype.kind == want.kind:
            a = a.astype(want)
        feeds[name] = a
    missing = [n for n in inputs if n not in feeds]
    if missing:
        raise InvalidInputError(f"--input: missing input(s) {', '.join(missing)}")
    label = ", ".join(f"{k} {'x'.join(map(str, a.shape))}" for k, a in feeds.items())
    return FeedSet(label + " (given)", feeds, "given")


def data_feed_sets(
    model: ir.Model, data: str | os.PathLike[str], batches: Sequence[int] = (1, 8)
) -> list[FeedSet]:
    """First test samples of a dataset (IDX directory or .npz), fitted to the single input."""
    from portanet.data import load_data, plan_layout

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise InvalidInputError(f"--data feeds single-input models; this one takes {len(inputs)} inputs")
    v = inputs[0]
    split = load_data(data).test
    layout = plan_layout(split.sample_shape, dims_of(v), where=str(data), input_name=v.name or "input")
    x = split.x
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    sets = []
    for b in batches:
        dims = dims_of(v) or []
        if dims and isinstance(dims[0], int) and dims[0] != b:
            b = dims[0]
        arr = layout.apply(x[:b]).astype(_dtype(v)) / np.asarray(scale, dtype=_dtype(v))
        sets.append(FeedSet(f"{v.name} {'x'.join(map(str, arr.shape))} (data)", {v.name or "": arr}, "data"))
        if dims and isinstance(dims[0], int):
            break
    return sets
