"""How ``verify`` judges a quantized model: against the float source's accuracy, not elementwise.

An int8 model differs from its float source by design (every activation is rounded to 256
levels), so the strict elementwise test always fails. ``portanet quantize`` records its
settings under the ``portanet.quantization`` metadata key; for such a model ``verify`` keeps
the same comparison statistics but passes an output when

* its cosine similarity with the source is at least ``MIN_COSINE``, and
* for a classifier output, the accuracy drop is within the budget recorded at quantization
  (``--max-accuracy-drop``, default ``DEFAULT_BUDGET`` points): with labelled ``--data`` the
  drop is the source's top-1 accuracy minus the quantized model's; without labels (given or
  random inputs, at least ``MIN_SAMPLES`` of them) it is bounded by the share of samples whose
  top-1 class differs from the source's (accuracy cannot fall by more), a stricter test.

With ``--data``, a quantized model is checked on up to ``DATA_SAMPLES`` test samples prepared
as at quantization (the recorded layout and normalisation), with their labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.ir.metadata import get_json
from portanet.parity.compare import TensorStats
from portanet.parity.inputs import FeedSet

#: model metadata key written by ``portanet quantize``
QUANTIZE_KEY = "portanet.quantization"
#: accuracy points allowed when the quantization recorded no budget
DEFAULT_BUDGET = 0.5
#: int8 keeps about 8 bits per activation: a whole network's output stays this aligned with float
#: (measured: 0.9995+ on the case-study CNN, ResNet-50 and MobileNetV2 in the tests and benchmark)
MIN_COSINE = 0.99
#: fewer rows cannot resolve a budget of a fraction of a point
MIN_SAMPLES = 100
#: test samples a quantized model is verified on with --data
DATA_SAMPLES = 2000


@dataclass
class LabelledFeedSet(FeedSet):
    """A FeedSet whose rows carry class labels (None: unlabelled data)."""

    labels: Any = None


def quantization_info(model: ir.Model) -> dict[str, Any] | None:
    """The record ``portanet quantize`` wrote into ``model`` (None: not a quantized model)."""
    info = get_json(model, QUANTIZE_KEY)
    return info if isinstance(info, dict) else None


def judge(info: dict[str, Any], ref: Any, got: Any, stats: TensorStats, labels: Any = None) -> TensorStats:
    """``stats`` (from ``compare``) with the quantized verdict in ``passed`` and ``problem``;
    ``labels`` (class indices of the rows) turn the top-1 test into an accuracy comparison."""
    if stats.problem and stats.max_abs == float("inf"):  # shape mismatch: nothing to judge
        return stats
    budget = info.get("max_accuracy_drop")
    budget = DEFAULT_BUDGET if budget is None else float(budget)
    problems = []
    if not stats.cosine >= MIN_COSINE:
        problems.append(f"cosine {stats.cosine:.5f} < {MIN_COSINE}")
    r, g = np.asarray(ref), np.asarray(got)
    rows = int(r.shape[0]) if r.ndim else 0
    note = f"int8 within budget {budget:g}"
    if stats.top1 is not None and labels is not None and len(labels) == rows and r.shape == g.shape:
        y = np.asarray(labels).reshape(-1)
        acc_ref = float(np.mean(np.argmax(r.reshape(rows, r.shape[1], -1)[:, :, 0], axis=1) == y))
        acc_got = float(np.mean(np.argmax(g.reshape(rows, g.shape[1], -1)[:, :, 0], axis=1) == y))
        drop = 100.0 * (acc_ref - acc_got)
        note = (f"accuracy {100 * acc_got:.2f}% vs float source {100 * acc_ref:.2f}% ({-drop:+.2f} points), "
                f"budget {budget:g}")
        if drop > budget + 1e-9:
            problems.append(note)
    elif stats.top1 is not None and rows >= MIN_SAMPLES:
        changed = 100.0 * (1.0 - stats.top1)
        if changed > budget + 1e-9:
            problems.append(f"top-1 differs from the float source on {changed:.2f}% of samples > budget {budget:g}")
    return replace(stats, passed=not problems, problem="; ".join(problems) or note)


def data_feed_set(model: ir.Model, info: dict[str, Any], data: str | os.PathLike[str]) -> Any:
    """Up to ``DATA_SAMPLES`` test samples of ``data``, laid out and normalised as at quantization."""
    from portanet.data import Normalizer, load_data, plan_layout
    from portanet.ir.shapes import dims_of
    from portanet.parity.inputs import graph_inputs

    (v,) = graph_inputs(model)
    split = load_data(data).test
    layout = plan_layout(split.sample_shape, dims_of(v), where=str(data), input_name=v.name or "input")
    norm = (Normalizer.from_dict(info["input"]["normalization"]) if isinstance(info.get("input"), dict)
            else Normalizer.identity(split.x))
    x = norm.apply(layout.apply(split.x[:DATA_SAMPLES]))
    labels = split.y[:DATA_SAMPLES] if split.is_classification else None
    return LabelledFeedSet(f"{v.name} {'x'.join(map(str, x.shape))} (data, normalised as at quantization)",
                           {v.name or "": x}, "data", labels)
