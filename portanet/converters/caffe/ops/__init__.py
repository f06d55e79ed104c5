"""Caffe op handlers, one module per layer family, registered into ``HANDLERS``.

A handler takes a :class:`~portanet.converters.caffe.context.Ctx` and returns one
:class:`~portanet.converters.caffe.context.Out` per top blob of the layer.
"""

# importing the family modules registers their handlers
from portanet.converters.caffe.ops import activation, conv, dense, detection, fork, normalization, pooling, recurrent, tensor  # noqa: E402,F401,I001
from portanet.converters.caffe.ops.table import HANDLERS

__all__ = ["HANDLERS"]
