"""glibc malloc settings for a process that runs models: freed activations reused, not mapped afresh.

Why: a model run allocates and frees the same large activation buffers every time. glibc
serves blocks above its mmap threshold (adaptive, at most 32 MiB) with fresh mappings, and
trims freed memory at the top of the heap back to the system; each run then page-faults
(and zero-fills) its buffers in again, as ONNX Runtime's arena never does. At batch 1,
RegNetY-400MF took ~1,150 page faults a run (its torch-plugin layer's allocations mixed
in), 9% of its time on this project's 2-vCPU VM; at batch 32 every activation is above
32 MiB: MobileNetV2 ran 218 -> 154 ms, EfficientNet-B0 337 -> 251, DenseNet-121
1246 -> 1152, ResNet-50 1238 -> 1160 with the thresholds here, for 0-5% more peak RSS
(batch 1: within 3 MiB on the zoo's models). The executor applies them when a compiled
model's first run ends, after the weights' temporaries are freed.

The same numbers go into the environment of Dask workers (:mod:`convengine.dask.cluster`),
where Dask's own ``MALLOC_TRIM_THRESHOLD_=65536`` would otherwise hand every freed
activation back to the system.
"""

from __future__ import annotations

import ctypes
import os
import threading

#: Blocks up to this size come from the heap: a batch-32 activation of ResNet-50 is 100 MiB.
MMAP_THRESHOLD = 1 << 30
#: Freed memory kept at the top of the heap before it is handed back (what a run freed, it reuses).
TRIM_THRESHOLD = 1 << 30
#: The same settings as environment variables, for processes convengine starts (read at start-up).
MALLOC_ENVIRONMENT = {"MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD), "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_applied: bool | None = None


def keep_large_buffers() -> bool:
    """Apply :data:`MMAP_THRESHOLD` and :data:`TRIM_THRESHOLD` to this process once; whether they apply.

    Left alone when the user set either ``MALLOC_*_THRESHOLD_`` variable (their choice), and
    where the C library is not glibc (no ``mallopt``).
    """
    global _applied
    if _applied is not None:  # (every model run asks: no lock once settled)
        return _applied
    with _lock:
        if _applied is None:
            _applied = _apply()
        return _applied


def _apply() -> bool:
    if any(name in os.environ for name in MALLOC_ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
