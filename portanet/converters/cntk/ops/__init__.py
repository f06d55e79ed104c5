"""CNTK op handlers, one module per op family; importing this package registers them all."""

from portanet.converters.cntk.ops import conv, elementwise, linear, norm, reduce, shape  # noqa: F401
