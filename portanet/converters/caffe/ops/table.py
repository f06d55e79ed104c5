"""The Caffe handler table (a separate module so family modules can import it)."""

from portanet.converters.handlers import HandlerTable

HANDLERS = HandlerTable("caffe")
