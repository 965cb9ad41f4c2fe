"""What a measured speed depends on, on this host.

An autotuning result (backend X is fastest for problem P) is only valid on the machine
and software stack it was measured on. :func:`host_fingerprint` collects the parts of the
host that change such a result: the CPU model and its instruction-set extensions (an
AVX-512 machine and an AVX2 machine of the same family rank backends differently), the
cores the process may use, the BLAS libraries that numpy calls into, and the versions of
Python, numpy and convengine. Things that vary from run to run without changing the
hardware (BLAS thread counts, clock speeds, load) are deliberately left out, so that the
fingerprint, and any cache key built from it with :func:`fingerprint_digest`, is stable.

The fingerprint is computed once per process: it is needed on every tuned dispatch and
reading ``/proc/cpuinfo`` or probing the loaded libraries is not free. It never raises: a
field that cannot be determined is ``"unknown"``, which at worst makes two hosts share
tuning results, never breaks a convolution.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import platform

import numpy as np
from threadpoolctl import threadpool_info

from .._version import __version__
from .threads import usable_cores

UNKNOWN = "unknown"

_CPUINFO = "/proc/cpuinfo"


def fingerprint_digest(obj) -> str:
    """Short, stable sha256 hex digest of a JSON-serialisable object.

    The encoding is canonical (sorted keys, no whitespace), so equal objects give equal
    digests across processes and releases; persisted cache keys depend on that.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def host_fingerprint() -> dict:
    """Describe the host properties a measured speed depends on (see the module docstring).

    Keys: ``cpu_model``, ``cpu_flags`` (digest of the sorted flag set), ``logical_cores``,
    ``usable_cores``, ``machine``, ``blas`` (list of ``{internal_api, version,
    architecture}``), ``python``, ``numpy``, ``convengine``. Computed once per process;
    each call returns a fresh copy, so callers may modify it.
    """
    return copy.deepcopy(_collect())


@functools.lru_cache(maxsize=None)
def _collect() -> dict:
    cpuinfo = _guard(_read_cpuinfo, default={})
    return {
        "cpu_model": _guard(lambda: cpuinfo.get("model name") or platform.processor() or UNKNOWN),
        "cpu_flags": _guard(lambda: _flags_digest(cpuinfo)),
        "logical_cores": _guard(lambda: os.cpu_count() or UNKNOWN),
        "usable_cores": _guard(usable_cores),
        "machine": _guard(lambda: platform.machine() or UNKNOWN),
        "blas": _guard(_blas_libraries),
        "python": _guard(platform.python_version),
        "numpy": _guard(lambda: np.__version__),
        "convengine": __version__,
    }


def _guard(probe, default=UNKNOWN):
    """Run one probe; a failure makes that field unknown instead of failing the caller."""
    try:
        return probe()
    except Exception:
        return default


def _read_cpuinfo() -> dict:
    """Fields of the first processor block of /proc/cpuinfo (empty where there is none).

    Every processor block repeats the same model and flags, and the file has hundreds of
    blocks on large machines, so reading stops after the first.
    """
    fields: dict[str, str] = {}
    try:
        with open(_CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(name.strip(), value.strip())
                elif fields and not line.strip():
                    break
    except OSError:
        pass
    return fields


def _flags_digest(cpuinfo: dict) -> str:
    """Digest of the CPU's instruction-set flags ("flags" on x86, "Features" on ARM)."""
    flags = cpuinfo.get("flags") or cpuinfo.get("Features")
    if not flags:
        return UNKNOWN
    return fingerprint_digest(sorted(set(flags.split())))


def _blas_libraries() -> list:
    """numpy's BLAS library (whose speed the backends depend on), without its thread count.

    Only numpy's own copy counts: which other BLAS copies are loaded depends on what the
    process happened to import (scipy.linalg, torch), and the fingerprint must not.
    """
    site = os.path.dirname(os.path.dirname(np.__file__))  # numpy/ and numpy.libs/ live here
    blas = [info for info in threadpool_info() if info.get("user_api") == "blas"]
    bundled = [info for info in blas if os.path.dirname(info.get("filepath", "")).startswith(os.path.join(site, "numpy"))]
    libraries = [
        {key: info.get(key) or UNKNOWN for key in ("internal_api", "version", "architecture")}
        for info in bundled or blas  # a numpy linked to a system BLAS bundles none
    ]
    return sorted(libraries, key=lambda lib: (lib["internal_api"], lib["version"], lib["architecture"]))


#: What :func:`l2_cache_bytes` says where the system does not tell.
DEFAULT_L2_BYTES = 1 << 20


@functools.lru_cache(maxsize=None)
def l2_cache_bytes() -> int:
    """One core's second-level cache in bytes (glibc's ``sysconf``, else Linux's sysfs, else 1 MiB).

    What a kernel's working set must fit in to be read at cache speed: sizes its blocking
    per machine (2 MiB on Sapphire Rapids, 1 MiB on Zen 4), not for one CPU.
    """
    try:
        size = os.sysconf("SC_LEVEL2_CACHE_SIZE")
        if size > 0:
            return int(size)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index2/size") as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return DEFAULT_L2_BYTES
