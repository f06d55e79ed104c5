"""CNTK reference runner: there is none to run.

CNTK's last wheels (2.7, 2019) target Python <= 3.7 and no independent CNTK implementation
exists, so ``portanet verify`` cannot execute a CNTK source beside the converted model.
CNTK conversions are instead proven in portanet's own test suite by three independent
routes: known labels of real CNTK models, CNTK files written from PyTorch modules (PyTorch
is the reference for every supported op), and a numpy evaluator of CNTK semantics that
shares no code with the importer. This module states that plainly instead of pretending.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from portanet.errors import RuntimeBackendError

MESSAGE = (
    "no CNTK runtime exists for current Python (CNTK 2.7 wheels stop at Python 3.7), so a CNTK "
    "source cannot be run for parity; CNTK conversions are verified by portanet's test suite through known "
    "labels, PyTorch-equivalent networks and an independent numpy evaluator - convert without --verify"
)


def run_reference(
    sources: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Always raises RuntimeBackendError: there is no CNTK to run (see the module docstring)."""
    raise RuntimeBackendError(MESSAGE)
