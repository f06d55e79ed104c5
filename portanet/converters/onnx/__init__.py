"""onnx importer."""
