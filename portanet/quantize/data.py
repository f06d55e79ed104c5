"""Calibration and evaluation samples, prepared exactly as ``portanet train`` prepares them.

The dataset (``portanet.data.load_data``: an IDX folder of the MNIST family or an ``.npz``)
is fitted to the model's single input with ``plan_layout`` and normalised with
``input_normalizer`` -- the same two steps the Trainer runs. The normalisation is, in order:
``mean``/``std`` given by the caller; the one recorded in the model by ``portanet train``
(``portanet.training`` metadata: a fine-tuned model expects its training inputs); otherwise
statistics of the training split (``portanet train``'s default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from portanet.data import Layout, Normalizer, input_normalizer, load_data, plan_layout
from portanet.errors import InvalidInputError
from portanet.ir.metadata import get_json
from portanet.ir.shapes import dims_of

log = logging.getLogger(__name__)

#: metadata key of the record ``portanet train`` writes into a trained model
TRAINING_KEY = "portanet.training"


@dataclass
class PreparedData:
    """Model-ready float32 samples: ``calib`` from the training split, ``test_x``/``test_y`` from the test split."""

    input_name: str
    calib: np.ndarray
    test_x: np.ndarray
    #: class indices (N,) when the data is labelled for classification, else None
    test_y: np.ndarray | None
    layout: Layout
    normalizer: Normalizer
    #: where the normalisation came from (given mean/std, the training record, training split statistics)
    normalization_source: str
    path: str

    def describe(self) -> dict[str, object]:
        return {"data": self.path, "calibration_samples": int(len(self.calib)), "test_samples": int(len(self.test_x)),
                "labelled": self.test_y is not None, "layout": self.layout.rule,
                "normalization": self.normalizer.to_dict(), "normalization_source": self.normalization_source}


def single_input(model: ir.Model, where: str) -> ir.Value:
    """The model's one float graph input (quantization calibrates a single data input)."""
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    if len(inputs) != 1:
        raise InvalidInputError(f"{where}: quantization needs a model with one input, this one has {len(inputs)}: "
                                + ", ".join(v.name or "?" for v in inputs))
    inp = inputs[0]
    if inp.dtype is not None and inp.dtype != ir.DataType.FLOAT:
        raise InvalidInputError(f"{where}: model input '{inp.name}' is {inp.dtype}; quantization needs a float32 input")
    return inp


def prepare_data(
    model: ir.Model,
    data: str | os.PathLike[str] | None,
    *,
    samples: int = 256,
    test_samples: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalize: bool = True,
    seed: int = 0,
    where: str = "model",
) -> PreparedData:
    """Load ``data`` and prepare ``samples`` calibration samples (a seeded random choice from the
    training split) and the test split (its first ``test_samples``, all by default)."""
    if samples < 1:
        raise InvalidInputError(f"--samples must be at least 1, received {samples}")
    inp = single_input(model, where)
    splits = load_data(data, seed=seed)
    path = splits.path or "data"
    layout = plan_layout(splits.train.sample_shape, dims_of(inp), where=path, input_name=inp.name or "input")
    if splits.test.sample_shape != splits.train.sample_shape:
        raise InvalidInputError(f"{path}: test samples have shape {list(splits.test.sample_shape)}, training "
                                f"samples {list(splits.train.sample_shape)}")
    record = get_json(model, TRAINING_KEY)
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise InvalidInputError("give both --mean and --std (or neither)")
        norm, source = input_normalizer(splits.train.x, layout, mean=mean, std=std), "given mean/std"
    elif normalize and isinstance(record, dict) and isinstance(record.get("normalization"), dict):
        norm, source = Normalizer.from_dict(record["normalization"]), "the model's training record"
    else:
        norm = input_normalizer(splits.train.x, layout, normalize=normalize)
        source = "training split statistics" if normalize else "none (integer scaling only)"
    order = np.random.default_rng(seed).permutation(len(splits.train))[:samples]
    calib = norm.apply(layout.apply(splits.train.x[np.sort(order)]))
    test = splits.test if test_samples is None else splits.test.subset(slice(0, max(1, test_samples)))
    test_x = norm.apply(layout.apply(test.x))
    test_y = np.asarray(test.y, dtype=np.int64) if test.is_classification else None
    log.info("calibration: %d samples of %s (%s layout, normalisation: %s)", len(calib), path, layout.rule,
             source)
    return PreparedData(inp.name or "input", calib, test_x, test_y, layout, norm, source, path)
