"""Matrices laid out to be read down their columns in place, fast.

A kernel that reads a matrix down its columns, one short run per row (``direct``'s NHWC tiles on
a channels-last ``(C, O)`` weight matrix: 32 weights of each of C rows), touches one page and one
first-level cache set per row. Two layouts make that slow, and :func:`spread_rows` avoids both:

- Rows a multiple of 512 bytes apart land in 8 of the 64 sets or fewer (rows 12 KiB apart,
  ConvNeXt-T's 768 x 3072 matrices, all in one): their lines evict each other. Hot, one process,
  batch 1, 7x7, two threads (Xeon, 48 KiB 12-way L1): 2.1-2.3 ms against 1.0 from a packed copy.
  A cache line of padding per row moves each row to other sets.
- 4 KiB pages: each row on a page of its own, a TLB miss a row. On 2 MiB pages, 3072 -> 768 at
  7x7 ran 1.02-1.05 ms against 1.09-1.13 on 4 KiB pages (packed: 0.99-1.01); numpy asks the
  kernel for such pages for allocations of 4 MiB and more, so the matrices share one buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping

import numpy as np

from .workspace import ALIGNMENT, aligned_empty

#: Rows this many bytes apart, or a multiple, crowd into a few cache sets when read down a column.
ALIASING_BYTES = 512
#: A cache line: the padding that moves each row to other sets, and where each matrix starts.
LINE_BYTES = ALIGNMENT


def aliases(row_bytes: int) -> bool:
    """Whether rows ``row_bytes`` apart crowd into a few cache sets when read down a column."""
    return row_bytes % ALIASING_BYTES == 0


def spread_rows(arrays: MutableMapping[str, np.ndarray], names: Iterable[str]) -> None:
    """Replace each 2-D floating matrix ``arrays[name]`` by an equal one laid out to be read down its
    columns: all of them in one buffer (large: on 2 MiB pages where the system gives them), each
    starting on a cache line, rows one line further apart where their stride would alias.

    One at a time, so that each old matrix is freed (where nothing else holds it) before the
    next is copied: the peak grows by one matrix, not by all of them.
    """
    names = [n for n in dict.fromkeys(names) if arrays[n].ndim == 2 and arrays[n].dtype.kind == "f"]
    places, total = [], 0  # (name, row stride in elements, byte offset)
    for name in names:
        rows, columns = arrays[name].shape
        itemsize = arrays[name].itemsize
        stride = columns + (LINE_BYTES // itemsize if aliases(columns * itemsize) else 0)
        places.append((name, stride, total))
        total += -(-rows * stride * itemsize // LINE_BYTES) * LINE_BYTES
    if not places:
        return
    raw = aligned_empty((total,), np.uint8)  # on a line; untouched pages cost nothing until written
    for name, stride, offset in places:
        matrix = arrays[name]
        rows, columns = matrix.shape
        buffer = raw[offset:offset + rows * stride * matrix.itemsize].view(matrix.dtype).reshape(rows, stride)
        buffer[:, columns:] = 0
        buffer[:, :columns] = matrix
        arrays[name] = buffer[:, :columns]
