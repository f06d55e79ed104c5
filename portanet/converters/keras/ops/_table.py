"""The Keras handler table (one per importer); families register into it on import."""

from __future__ import annotations

from portanet.converters.handlers import HandlerTable

HANDLERS = HandlerTable("keras")
