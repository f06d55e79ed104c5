"""What a Caffe op handler sees: the layer, its bottoms (IR values + static shapes), its
weights, and helpers to emit nodes and constants.

Shapes are tracked statically with the batch dimension at its declared value; emitted nodes
never bake that batch size into shape constants (reshapes copy leading dims with ``0``), so the
graph runs with any batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.caffe.net import Layer
from portanet.errors import ConversionError
from portanet.ir.builder import GraphBuilder
from portanet.ir.frozen import mark_frozen

Shape = list[int]


@dataclass
class Out:
    """One handler output: the IR value and its static Caffe shape."""

    value: ir.Value
    shape: Shape


@dataclass
class Ctx:
    b: GraphBuilder
    layer: Layer
    inputs: list[ir.Value]
    shapes: list[Shape]
    weights_path: str | None = None
    #: per-conversion cache of non-trainable float constants
    fcache: dict[tuple[bytes, tuple[int, ...]], ir.Value] = field(default_factory=dict)
    #: extra information from the importer (e.g. a fused BatchNorm layer)
    extra: dict[str, Any] = field(default_factory=dict)

    # -- layer data ---------------------------------------------------------------------
    @property
    def p(self) -> Any:
        """The caffe.LayerParameter."""
        return self.layer.param

    @property
    def x(self) -> ir.Value:
        return self.inputs[0]

    @property
    def shape(self) -> Shape:
        return self.shapes[0]

    def expect_bottoms(self, *counts: int) -> None:
        if len(self.inputs) not in counts:
            want = " or ".join(map(str, counts))
            raise ConversionError(f"expected {want} bottom(s), received {len(self.inputs)}")

    def axis(self, axis: int, rank: int | None = None) -> int:
        """Caffe's CanonicalAxisIndex: negative axes count from the end."""
        rank = len(self.shape) if rank is None else rank
        if not -rank <= axis < rank:
            raise ConversionError(f"axis {axis} is out of range for a {rank}-D bottom {self.shape}")
        return axis % rank

    def expect_blobs(self, count: int, what: str) -> None:
        """Caffe refuses a caffemodel whose blob count differs from the layer's definition
        (e.g. a bias blob for ``bias_term: false``); so does portanet."""
        n = len(self.layer.blobs)
        if n and n != count:
            raise ConversionError(
                f"expected {count} blob(s) ({what}) from the prototxt, received {n} in the caffemodel",
                path=self.weights_path,
            )

    def blob(self, i: int, shape: Sequence[int] | None = None, what: str = "") -> np.ndarray:
        """Weight blob ``i``, reshaped to ``shape`` (element counts must agree: legacy 4-D
        blobs such as 1x1xNxK are accepted for an (N, K) weight)."""
        label = f"blob {i}" + (f" ({what})" if what else "")
        blobs = self.layer.blobs
        if i >= len(blobs):
            if not blobs:
                raise ConversionError(
                    "has no weights: pass the .caffemodel that holds them", path=self.weights_path
                )
            raise ConversionError(
                f"{label} is missing: expected at least {i + 1} blob(s), received {len(blobs)}",
                path=self.weights_path,
            )
        arr = blobs[i]
        if shape is None:
            return arr
        shape = [int(d) for d in shape]
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise ConversionError(
                f"{label} expected shape {tuple(shape)} from the prototxt, received {tuple(arr.shape)} "
                "in the caffemodel",
                path=self.weights_path,
            )
        return arr.reshape(shape)

    # -- emitting -----------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[ir.Value | None], attributes: dict[str, Any] | None = None,
           *, outputs: int | Sequence[str] = 1) -> Any:
        return self.b.op(op_type, inputs, attributes, outputs=outputs)

    def param(self, suffix: str, array: np.ndarray) -> ir.Value:
        """A learned weight (trainable float initializer) named ``<layer>_<suffix>``; frozen
        when it comes from a blob whose ``param { lr_mult: 0 }`` Caffe never updates."""
        value = self.b.initializer(f"{self.layer.name}_{suffix}", np.asarray(array, dtype=np.float32))
        if self._lr_mult_zero(array):
            mark_frozen(value, "caffe lr_mult: 0")
        return value

    def _lr_mult_zero(self, array: Any) -> bool:
        specs = self.layer.param.param  # ParamSpec per blob, in blob order
        for i, blob in enumerate(self.layer.blobs):
            if i < len(specs) and specs[i].HasField("lr_mult") and specs[i].lr_mult == 0 \
                    and np.may_share_memory(array, blob):
                return True
        return False

    def buffer(self, suffix: str, array: np.ndarray) -> ir.Value:
        """A float initializer that is state rather than a parameter (BatchNorm statistics)."""
        return self.b.initializer(f"{self.layer.name}_{suffix}", np.asarray(array, dtype=np.float32))

    def ints(self, values: Sequence[int] | int) -> ir.Value:
        """An int64 constant (shapes, axes, repeats)."""
        return self.b.const(np.asarray(values, dtype=np.int64), name=f"{self.layer.name}_shape")

    def fconst(self, array: Any) -> ir.Value:
        """A fixed float constant as a ``Constant`` node, so it is never taken for a
        trainable parameter (scales, shifts, divisor maps)."""
        arr = np.array(array, dtype=np.float32, order="C")  # keeps 0-d scalars 0-d
        key = (arr.tobytes(), arr.shape)
        if key not in self.fcache:
            self.fcache[key] = self.b.op(
                "Constant", [], {"value": ir.tensor(arr)}, outputs=[f"{self.layer.name}_const"]
            )
        return self.fcache[key]

    def reshape(self, x: ir.Value, spec: Sequence[int]) -> ir.Value:
        """ONNX Reshape with Caffe-compatible ``spec`` (0 copies the same-index input dim)."""
        return self.op("Reshape", [x, self.ints(list(spec))])


def prod(dims: Sequence[int]) -> int:
    return int(np.prod(list(dims), dtype=np.int64)) if len(dims) else 1
