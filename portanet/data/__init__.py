"""Datasets for training: IDX directories of the MNIST family, ``.npz`` files, batching, normalisation.

``load_data(path)`` returns the training and test splits of a dataset (``path=None``: the
embedded 10,000-digit MNIST subset in ``portanet/data/mnist-10k``, MIT licence beside it).
``plan_layout`` fits samples to a model input (NCHW/NHWC/flat) and ``Normalizer`` applies
mean/std normalisation.
"""

from portanet.data import idx as _idx  # noqa: F401  (registers the "idx" format)
from portanet.data import npz as _npz  # noqa: F401  (registers the "npz" format)
from portanet.data.datasets import (
    DEFAULT_DATA,
    ArrayDataset,
    DataSplits,
    batches,
    default_data_dir,
    formats,
    holdout,
    load_data,
    register_format,
)
from portanet.data.idx import read_idx, write_idx
from portanet.data.npz import load_npz
from portanet.data.transforms import Layout, Normalizer, input_normalizer, plan_layout

__all__ = [
    "DEFAULT_DATA",
    "ArrayDataset",
    "DataSplits",
    "Layout",
    "Normalizer",
    "batches",
    "default_data_dir",
    "formats",
    "holdout",
    "input_normalizer",
    "load_data",
    "load_npz",
    "plan_layout",
    "read_idx",
    "register_format",
    "write_idx",
]
