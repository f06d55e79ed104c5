"""Caffe importer: deploy ``.prototxt`` and/or binary ``.caffemodel`` (V1 or V2 format) to the
IR, read without Caffe through a schema written in this project (``caffe.proto``).

Modules: ``schema`` (message classes from ``caffe.proto``), ``reader`` (text/binary files,
blobs), ``net`` (V1 upgrade, input declarations, TEST-phase deploy graph, weight pairing),
``converter`` (naming, BatchNorm+Scale pairing, lowering loop), ``ops`` (one handler module
per layer family) and ``importer`` (registration and detection).
"""
