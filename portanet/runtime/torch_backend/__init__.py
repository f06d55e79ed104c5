"""The torch backend: the IR lowered to ``torch.fx``, trainable, on CPU or CUDA.

    module = lower(model, device="cpu")      # TorchModule (an nn.Module)
    module.train(); loss = f(module(x)); loss.backward(); opt.step()
    write_back(module, model)                # trained weights -> IR initializers
    Session(model, backend="torch").run({"x": x})

``train()`` enables Dropout and batch statistics in BatchNormalization (running stats
updated with ONNX's momentum translated to torch's convention); ``eval()`` reproduces ONNX
inference semantics. One lowering function per op lives under ``ops/`` (one module per op
family), registered in ``registry``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet._deps import require
from portanet.errors import InvalidInputError, RuntimeBackendError
from portanet.ir.provenance import source_of
from portanet.runtime.session import Backend

torch = require("torch")

from portanet.runtime.torch_backend.lowering import TorchModule, lower_graph  # noqa: E402
from portanet.runtime.torch_backend.registry import supported_ops  # noqa: E402

__all__ = ["TorchBackend", "TorchModule", "lower", "source_layer_of_param", "supported_ops", "write_back"]

log = logging.getLogger(__name__)


def check_device(device: str) -> Any:
    """``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` -> torch.device; RuntimeBackendError without CUDA."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeBackendError(f"device '{device}' requested but torch sees no CUDA device here")
    if device != "cpu" and not device.startswith("cuda"):
        raise InvalidInputError(f"unknown device '{device}'; use cpu or cuda")
    return torch.device(device)


def lower(model: ir.Model, device: str = "cpu") -> TorchModule:
    """Lower ``model`` to a TorchModule on ``device`` (in train mode, like any new nn.Module).

    Raises UnsupportedOpError listing every op of the model the backend cannot lower.
    """
    dev = check_device(device)
    module = lower_graph(model)
    return module.to(dev)


def _unwrap(module: Any) -> TorchModule:
    # DistributedDataParallel / DataParallel keep the real module in .module
    while not isinstance(module, TorchModule) and hasattr(module, "module"):
        module = module.module
    if not isinstance(module, TorchModule):
        raise InvalidInputError(f"expected a TorchModule from lower(), received {type(module).__name__}")
    return module


def write_back(module: TorchModule, model: ir.Model) -> ir.Model:
    """Copy the module's parameters and buffers into ``model``'s initializers (in place);
    returns ``model``. Dtypes and shapes of the initializers are kept."""
    module = _unwrap(module)
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    inits = model.graph.initializers
    for tname, ir_name in module.param_ir_names.items():
        value = inits.get(ir_name)
        if value is None or value.const_value is None:
            raise InvalidInputError(f"the model has no initializer '{ir_name}' to write parameter '{tname}' into")
        old = value.const_value
        arr = tensors[tname].detach().to("cpu").numpy()
        want = tuple(old.shape)
        if tuple(arr.shape) != want:
            raise InvalidInputError(
                f"initializer '{ir_name}' expects shape {list(want)}, parameter '{tname}' has {list(arr.shape)}"
            )
        arr = np.ascontiguousarray(arr.astype(old.dtype.numpy(), copy=True))
        value.const_value = ir.tensor(arr, name=ir_name)
    return model


def source_layer_of_param(model: ir.Model, ir_name: str) -> str | None:
    """The source layer (provenance) of the first node consuming initializer ``ir_name``."""
    value = model.graph.initializers.get(ir_name)
    if value is None:
        return None
    for node in model.graph:
        if any(v is value for v in node.inputs):
            src = source_of(node)
            if src is not None:
                return src[0]
    return None


class TorchBackend(Backend):
    """Inference through the torch lowering: ``Session(model, backend="torch", device=...)``."""

    name = "torch"

    def __init__(self, model: ir.Model, device: str = "cpu", **_: Any) -> None:
        self.device = check_device(device)
        self.module = lower(model, device)
        self.module.eval()
        self._out_dtypes: dict[str, np.dtype] = {}
        for v in model.graph.outputs:
            try:
                self._out_dtypes[v.name or ""] = np.dtype(v.dtype.numpy()) if v.dtype is not None else None
            except (TypeError, ValueError):  # dtypes numpy cannot hold (float8, ...)
                pass

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        args = []
        for name in self.module.input_names:
            arr = np.asarray(feeds[name])
            if arr.dtype in _WIDEN:
                # torch lacks arithmetic on uint16/32/64: compute in int64, cast back below
                arr = arr.astype(np.int64)
            if arr.dtype.name == "bfloat16":  # ml_dtypes' bfloat16, which torch cannot read
                args.append(torch.from_numpy(arr.astype(np.float32)).to(self.device, torch.bfloat16))
                continue
            if arr.dtype.name in _FLOAT8:  # ml_dtypes' float8: same bits as torch's
                raw = torch.from_numpy(np.array(arr, order="C", copy=True).view(np.uint8).reshape(arr.shape))
                args.append(raw.view(_FLOAT8[arr.dtype.name]).to(self.device))
                continue
            # a private, writable, contiguous copy when needed (np.ascontiguousarray would
            # turn a 0-d array into 1-d)
            if not (arr.flags.c_contiguous and arr.flags.writeable):
                arr = np.array(arr, order="C", copy=True)
            args.append(torch.from_numpy(arr).to(self.device))
        try:
            with torch.no_grad():
                out = self.module(*args)
        except RuntimeError as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeBackendError(f"torch backend failed to run the model: {msg}") from exc
        outs = out if isinstance(out, tuple) else (out,)
        result = {}
        for n, t in zip(self.module.output_names, outs):
            want = self._out_dtypes.get(n)
            if isinstance(t, torch.Tensor) and t.dtype in _FLOAT8.values() and want is not None:
                result[n] = t.detach().to("cpu").view(torch.uint8).numpy().view(want)
                continue
            arr = _to_numpy(t)
            result[n] = arr.astype(want) if want is not None and arr.dtype != want else arr
        names = list(output_names) if output_names else self.module.output_names
        unknown = [n for n in names if n not in result]
        if unknown:
            raise RuntimeBackendError(
                f"unknown output(s) {', '.join(unknown)}; the model outputs {', '.join(self.module.output_names)}"
            )
        return {n: result[n] for n in names}


_WIDEN = {np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64)}
#: ml_dtypes float8 type name -> torch dtype
_FLOAT8 = {
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "float8_e5m2": torch.float8_e5m2,
    "float8_e5m2fnuz": torch.float8_e5m2fnuz,
}


def _to_numpy(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        if t.dtype == torch.bfloat16:
            t = t.float()  # cast to the declared bfloat16 numpy type by the caller
        return t.detach().to("cpu").numpy()
    return np.asarray(t)
