"""CNTK op handlers, one module per op family; importing this package registers them all."""

from portanet.converters.cntk.ops import (  # noqa: F401
    conv,
    elementwise,
    linear,
    norm,
    reduce,
    rnn,
    sequence,
    shape,
)
