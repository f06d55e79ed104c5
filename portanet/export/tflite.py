"""``--to tflite``: TensorFlow Lite through TensorFlow's converter from the Keras export
(float32, or ``--quantize dynamic`` for dynamic-range int8 weights), checked in the TFLite
interpreter."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from portanet._deps import require
from portanet.errors import ConversionError
from portanet.export._files import publish, staging
from portanet.export.graph import ExportGraph
from portanet.export.keras import build_keras, keras_artifact
from portanet.export.registry import Artifact, ExportOptions, target
from portanet.export.savedmodel import write_savedmodel

log = logging.getLogger(__name__)


@target("tflite", suffix=".tflite", help="TensorFlow Lite flatbuffer (float32; --quantize dynamic)",
        atol=0.0, rtol=1e-4)
def export_tflite(g: ExportGraph, path: Path, options: ExportOptions) -> Artifact:
    tf = require("tensorflow")
    path = Path(path)
    model, in_perms, out_perms, taps = build_keras(g, options)
    with staging(path) as tmp:
        saved = tmp / "savedmodel"
        write_savedmodel(model, saved)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if options.quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif options.quantize is not None:
            raise ConversionError(f"unknown quantization '{options.quantize}' (use dynamic)", framework="export to tflite")
        try:
            flat = converter.convert()
        except Exception as exc:  # noqa: BLE001 - the converter raises many types
            raise ConversionError(f"TensorFlow Lite converter failed: {str(exc).splitlines()[0]}",
                                  framework="export to tflite") from exc
        out = tmp / "model.tflite"
        out.write_bytes(flat)
        publish(out, path)
    art = keras_artifact(g, path, model, in_perms, out_perms, taps, "tflite", "tflite")
    log.info("wrote %s (%.1f kB)", path, os.path.getsize(path) / 1024)
    return art
