"""Scratch buffers that outlive one call: the column matrix of im2col, Winograd's transforms.

A fresh multi-megabyte ``np.empty`` per call is not free: the allocator maps new pages and
the kernel zero-fills every one on first touch. Measured on ResNet-50's 64->64 3x3 layer
(Winograd, batch 1), page faults on its two 3 MB transform buffers cost more than the
arithmetic (3.6 ms per call against 1.4 ms of kernels). Backends therefore take scratch
space from here: one buffer per (thread, purpose), grown to the largest request and reused,
so a model's layers share it. A buffer is valid until the same thread asks for the same
purpose again, which within one backend call is never. :func:`release` hands the memory back.
"""

from __future__ import annotations

import math
import threading

import numpy as np

_local = threading.local()


#: Scratch arrays start on a 64-byte boundary (a cache line, one AVX-512 vector): kernels that
#: lay out whole vectors in them then load whole lines.
ALIGNMENT = 64


def scratch(purpose: str, shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype``, reused across calls in this thread.

    It starts on an :data:`ALIGNMENT`-byte boundary.
    """
    dtype = np.dtype(dtype)
    count = math.prod(shape)  # plain ints: a numpy reduction costs more than the rest of this call
    nbytes = count * dtype.itemsize
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    held = buffers.get(purpose)
    if held is None or held.nbytes < nbytes:
        held = buffers[purpose] = aligned_empty((max(nbytes, 1),), np.uint8)
    return held[:nbytes].view(dtype).reshape(shape)


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array that starts on an :data:`ALIGNMENT`-byte boundary.

    Why: numpy's allocations start 16 bytes past one (glibc's malloc), so every 64-byte vector a
    kernel loads from a packed weight array would straddle two cache lines (``direct``, one
    thread, hot: Inception-v3's 7x1 layer 109-111 -> 116-119 GFLOP/s, 96 -> 96 3x3 at 35x35
    121-122 -> 130-131 once aligned).
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def held_bytes() -> int:
    """Bytes of scratch this thread holds."""
    return sum(b.base.nbytes for b in getattr(_local, "buffers", {}).values())  # (each aligned view's whole allocation)


def release() -> None:
    """Free this thread's scratch buffers (the next call allocates them again)."""
    _local.buffers = {}
