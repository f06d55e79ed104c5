"""MXNet op handlers: one module per op family, all registering into ``HANDLERS``.

A handler takes a ``NodeCtx`` and returns the IR value of each visible output of the node
(a single value or a list, indexed like the node's MXNet outputs).
"""

from portanet.converters.handlers import HandlerTable

HANDLERS = HandlerTable("mxnet")

# importing the family modules fills the table
from portanet.converters.mxnet.handlers import (  # noqa: E402,F401
    activation,
    detection,
    elementwise,
    nn,
    reduce,
    rnn,
    shape,
)

__all__ = ["HANDLERS"]
