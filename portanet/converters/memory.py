"""A cap on the memory a framework may allocate while it loads a file.

Keras builds a model's layers from the file's config before it reads the weights, so a
config that declares a huge layer (``units: 10**9``, an input of 10**7 x 10**7 pixels) would
allocate and initialise that much memory before any size check could compare it with the
weights stored in the file. ``memory_cap`` bounds the process's address space for the
duration of the load (Linux ``RLIMIT_AS``): such an allocation then fails inside the
framework with its own out-of-memory error, which the caller reports as a corrupt file.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: address space allowed beyond what the process already uses, per byte of the file, and at least
PER_FILE_BYTE = 8
MINIMUM = 2 << 30


def _vm_size() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@contextlib.contextmanager
def memory_cap(file_bytes: int) -> Iterator[None]:
    """Limit new allocations to ``max(MINIMUM, PER_FILE_BYTE * file_bytes)`` while the block runs
    (a no-op where the platform has no address-space limit)."""
    try:
        import resource
    except ImportError:  # not a POSIX platform
        yield
        return
    current = _vm_size()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if current is None:
        yield
        return
    cap = current + max(MINIMUM, PER_FILE_BYTE * file_bytes)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        yield  # already limited more tightly
        return
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
