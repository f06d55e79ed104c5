"""``--to keras``: a Keras 3 functional model (``.keras``) of standard layers, channels-last."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from portanet._deps import require
from portanet.export._files import publish, staging
from portanet.export.graph import ExportGraph
from portanet.export.registry import Artifact, ExportOptions, target

log = logging.getLogger(__name__)


def build_keras(g: ExportGraph, options: ExportOptions) -> tuple[Any, list, list, list]:
    """(keras.Model, input perms, output perms, taps); raises UnsupportedOpError listing all."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ logs are not ours to print
    require("keras")
    from portanet.export.keras_build.builder import KerasBuilder

    g.fold_constants()  # Keras layers take constant weights, not computed ones
    builder = KerasBuilder(g, keep_layout=options.keep_layout)
    model, in_perms, out_perms = builder.build(g.name("model"))
    return model, in_perms, out_perms, builder.taps


def keras_artifact(g: ExportGraph, path: Path, model: Any, in_perms: list, out_perms: list, taps: list,
                   target_name: str = "keras", runner: str = "keras") -> Artifact:
    return Artifact(target_name, path, [path], runner, input_perms=in_perms, output_perms=out_perms,
                    input_names=[t.name for t in model.inputs], taps=taps if runner == "keras" else [])


@target("keras", suffix=".keras", help="Keras 3 functional model of standard layers (keras.saving.load_model)")
def export_keras(g: ExportGraph, path: Path, options: ExportOptions) -> Artifact:
    path = Path(path)
    model, in_perms, out_perms, taps = build_keras(g, options)
    with staging(path) as tmp:
        out = tmp / "model.keras"
        model.save(out)
        publish(out, path)
    log.info("wrote %s (%d layers)", path, len(model.layers))
    return keras_artifact(g, path, model, in_perms, out_perms, taps)
