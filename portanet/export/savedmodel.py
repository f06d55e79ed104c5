"""``--to savedmodel``: a TensorFlow SavedModel folder (for TF Serving) of the Keras export,
with a ``serve`` endpoint whose batch dimension is dynamic."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from portanet._deps import require
from portanet.export._files import publish, staging
from portanet.export.graph import ExportGraph
from portanet.export.keras import build_keras, keras_artifact
from portanet.export.registry import Artifact, ExportOptions, target

log = logging.getLogger(__name__)


def write_savedmodel(model, folder: Path) -> None:
    """``model.export`` quietly (it prints a signature summary to stdout)."""
    require("tensorflow")
    with contextlib.redirect_stdout(io.StringIO()):
        model.export(str(folder), format="tf_saved_model", verbose=False)


@target("savedmodel", suffix="", help="TensorFlow SavedModel folder with a 'serve' endpoint (TF Serving)")
def export_savedmodel(g: ExportGraph, path: Path, options: ExportOptions) -> Artifact:
    path = Path(path)
    model, in_perms, out_perms, taps = build_keras(g, options)
    with staging(path) as tmp:
        out = tmp / "savedmodel"
        write_savedmodel(model, out)
        keras_file = tmp / "model.keras"
        model.save(keras_file)
        publish(out, path)
    art = keras_artifact(g, path, model, in_perms, out_perms, taps, "savedmodel", "savedmodel")
    return art
