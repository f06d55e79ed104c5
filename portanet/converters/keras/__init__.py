"""TensorFlow/Keras importer.

Keras 3 models (``.keras``, legacy ``.h5``, in-memory ``keras.Model``) are mapped layer by
layer to an NCHW IR (``graph.py`` walks the layer graph, ``ops/`` holds one handler module
per layer family). Other TensorFlow graphs (SavedModel directories, ``tf.function``) go
through tf2onnx and the ONNX importer (``tf_graph.py``).
"""
