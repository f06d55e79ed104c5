"""TensorFlow/Keras importer.

Keras 3 models (``.keras``, legacy ``.h5``, in-memory ``keras.Model``) are mapped layer by
layer to an NCHW IR: ``graph.py`` walks the layer graph (nested models included),
``context.py`` tracks the layout each tensor is held in, ``ops/`` holds one handler module
per layer family. Layouts at the graph boundary:

* default: the Keras interface; inputs/outputs keep the channels-last order
  ``(N, H, W, C)``, with one Transpose after each image input (and before each image output);
* ``nchw``: every input/output of rank >= 3 is channels-first ``(N, C, H, W)``.

Other TensorFlow graphs (SavedModel folders, ``tf.function``, subclassed models given
``example_inputs``) go through tf2onnx and the ONNX importer (``tf_graph.py``).
"""
