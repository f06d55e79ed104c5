"""Training losses and the graph surgery that lets cross-entropy train on logits.

A classifier converted from a deployed model usually ends in Softmax. Taking the log of its
probabilities loses precision exactly where training needs it (tiny probabilities), so the
cross-entropy loss trains on the Softmax's *input* instead: ``training_graph`` returns a copy
of the IR whose output is the logits. Weights keep their IR names, so the trained values are
written back into the original model, Softmax included.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from portanet.errors import InvalidInputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingGraph:
    """The model actually lowered for training and what its trained output holds."""

    model: ir.Model
    #: the trained output's name in ``model``
    output: str
    #: ``logits`` (raw scores), ``log_probs`` (LogSoftmax output), ``probs`` (Softmax output) or ``values``
    kind: str
    #: the output of the original model that the loss supervises
    original_output: str


def copy_model(model: ir.Model) -> ir.Model:
    """A deep copy of an IR model (through its protobuf form)."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _class_axis_is_1(node: ir.Node, value: ir.Value) -> bool:
    """Does a Softmax/LogSoftmax act over axis 1 (the class axis of (N, C[, ...]) outputs)?"""
    attr = node.attributes.get("axis")
    axis = attr.as_int() if attr is not None else -1
    rank = len(value.shape) if value.shape is not None else None
    if axis == 1:
        return True
    return axis < 0 and rank is not None and rank + axis == 1


def _pick_output(model: ir.Model, output: str | None) -> ir.Value:
    outs = list(model.graph.outputs)
    if output is None:
        return outs[0]
    for v in outs:
        if v.name == output:
            return v
    raise InvalidInputError(f"the model has no output '{output}'; outputs: {', '.join(v.name or '?' for v in outs)}")


def training_graph(model: ir.Model, output: str | None = None, *, logits: bool = True) -> TrainingGraph:
    """The graph to train: the model's ``output`` (default: the first), as logits when possible.

    With ``logits`` and an output produced by Softmax over the class axis, the copy's output is
    the Softmax input; a LogSoftmax output is trained as log-probabilities. The original model
    is not modified.
    """
    orig = _pick_output(model, output)
    name = orig.name or ""
    prod = orig.producer()
    if not logits or prod is None or prod.op_type not in ("Softmax", "LogSoftmax"):
        return TrainingGraph(model, name, "values" if not logits else "logits", name)
    if prod.op_type == "LogSoftmax":
        return TrainingGraph(model, name, "log_probs", name)
    if not _class_axis_is_1(prod, orig):
        log.warning("output '%s' is a Softmax over a non-class axis; training on log(probabilities)", name)
        return TrainingGraph(model, name, "probs", name)
    copy = copy_model(model)
    out = _pick_output(copy, name)
    softmax = out.producer()
    assert softmax is not None
    logits_value = softmax.inputs[0]
    assert logits_value is not None
    idx = list(copy.graph.outputs).index(out)
    copy.graph.outputs[idx] = logits_value
    if not any(True for _ in out.uses()) and out not in copy.graph.outputs:
        copy.graph.remove(softmax, safe=True)
    log.info("training output '%s' on the logits '%s' (the input of its Softmax)", name, logits_value.name)
    return TrainingGraph(copy, logits_value.name or "", "logits", name)


# -------------------------------------------------------------------------------- losses
class Loss(ABC):
    """A loss over the trained output (N, C, ...) and the targets of a batch."""

    name = ""
    #: does the loss compare class indices (and report accuracy)?
    classification = False

    @abstractmethod
    def __call__(self, output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor: ...

    @abstractmethod
    def check_targets(self, y: np.ndarray, out_shape: tuple[int, ...], *, where: str, output: str) -> None:
        """Raise InvalidInputError when targets ``y`` cannot supervise outputs of ``out_shape`` (N, ...)."""

    def predictions(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The predicted class of each sample (or position) for accuracy."""
        return class_scores(output, target).argmax(1)


def _one_label_scores(out_shape: tuple[int, ...], label_ndim: int) -> bool:
    """Whether outputs of ``out_shape`` (N, 1, ..., C, ..., 1) hold one score vector per sample
    for one label per sample: a single axis besides the batch is not 1 (e.g. a length-1
    sequence (N, 1, C) from a sequence model's last step, or (N, C, 1, 1) from a conv head)."""
    return label_ndim == 1 and len(out_shape) > 2 and sum(d != 1 for d in out_shape[1:]) == 1


def class_scores(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``output`` as (N, C) when it holds one score vector per sample for one label per sample
    (see :func:`_one_label_scores`), else unchanged (class axis 1)."""
    if _one_label_scores(tuple(output.shape), target.dim()):
        return output.reshape(output.shape[0], -1)
    return output


_LOSSES: dict[str, type[Loss]] = {}


def register_loss(cls: type[Loss]) -> type[Loss]:
    _LOSSES[cls.name] = cls
    return cls


def losses() -> list[str]:
    return list(_LOSSES)


def make_loss(name: str) -> Loss:
    if name not in _LOSSES:
        raise InvalidInputError(f"unknown loss '{name}'; known: {', '.join(_LOSSES)}")
    return _LOSSES[name]()


@register_loss
class CrossEntropy(Loss):
    """Mean cross-entropy of class indices (N[, ...]) against class scores (N, C[, ...])."""

    name = "cross_entropy"
    classification = True

    def __call__(self, output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
        import torch.nn.functional as F

        output = class_scores(output, target)
        if kind == "log_probs":
            return F.nll_loss(output, target)
        if kind == "probs":
            # last resort for a Softmax over an unusual axis: log of clamped probabilities
            return F.nll_loss(output.clamp_min(1e-12).log(), target)
        return F.cross_entropy(output, target)

    def check_targets(self, y: np.ndarray, out_shape: tuple[int, ...], *, where: str, output: str) -> None:
        if y.dtype.kind not in "iub":
            raise InvalidInputError(f"{where}: cross-entropy needs integer class labels, received {y.dtype} targets")
        if len(out_shape) < 2:
            raise InvalidInputError(
                f"{where}: cross-entropy needs class scores (N, C) from output '{output}', received shape {list(out_shape)}"
            )
        if _one_label_scores(tuple(out_shape), y.ndim):
            out_shape = (out_shape[0], max(out_shape[1:]))
        if tuple(y.shape[1:]) != tuple(out_shape[2:]):
            raise InvalidInputError(
                f"{where}: labels of shape {list(y.shape[1:]) or 'scalar'} per sample do not match output '{output}' "
                f"of shape {list(out_shape)} (expected {list(out_shape[2:]) or 'one label'} per sample)"
            )
        n_classes = out_shape[1]
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            raise InvalidInputError(
                f"{where}: labels range {lo}..{hi} but output '{output}' has {n_classes} classes "
                f"(expected labels 0..{n_classes - 1})"
            )


@register_loss
class MSE(Loss):
    """Mean squared error; integer class labels become one-hot targets."""

    name = "mse"

    def __call__(self, output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
        import torch.nn.functional as F

        if target.dtype == output.dtype and target.shape == output.shape:
            return F.mse_loss(output, target)
        # class indices (N,) -> one-hot (N, C)
        onehot = F.one_hot(target.long(), num_classes=output.shape[1]).to(output.dtype)
        return F.mse_loss(output, onehot)

    def check_targets(self, y: np.ndarray, out_shape: tuple[int, ...], *, where: str, output: str) -> None:
        if y.ndim == 1 and y.dtype.kind in "iub" and len(out_shape) == 2:
            CrossEntropy().check_targets(y, out_shape, where=where, output=output)
            return
        if tuple(y.shape[1:]) != tuple(out_shape[1:]):
            raise InvalidInputError(
                f"{where}: targets of shape {list(y.shape[1:])} per sample do not match output '{output}' "
                f"of shape {list(out_shape[1:])} per sample"
            )


def auto_loss(y: np.ndarray) -> str:
    """cross_entropy for integer labels, mse for anything else."""
    return "cross_entropy" if y.dtype.kind in "iub" else "mse"
