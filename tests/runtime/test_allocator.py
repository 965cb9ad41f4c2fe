"""glibc malloc settings for model runs (:mod:`convengine.runtime.allocator`), each in a fresh process."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

PROBE = """
import json, resource
import numpy as np
from convengine.runtime import allocator
applied = allocator.keep_large_buffers()
again = allocator.keep_large_buffers()
faults = []
for size in [6 << 20, 24 << 20] * 6:  # a run's pattern: buffers of mixed sizes, freed and allocated again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(size, np.uint8); a[::4096] = 1; del a
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "again": again, "faults": faults}))
"""


def _probe(**env_extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_settings_apply_once_and_freed_buffers_are_reused_without_page_faults():
    result = _probe()
    assert result["applied"] is True and result["again"] is True
    # the first of each size faults its pages in (hundreds of faults: huge pages make them fewer than
    # the 4 KiB pages touched); every later one reuses freed memory
    assert min(result["faults"][:2]) >= 100 and max(result["faults"][2:]) < 50, result["faults"]


def test_a_users_malloc_setting_is_left_alone():
    result = _probe(MALLOC_TRIM_THRESHOLD_="65536")  # Dask's default: hand freed memory back
    assert result["applied"] is False
    assert min(result["faults"][2:]) >= 100, result["faults"]  # the user's setting holds: every buffer faults again


def test_dask_workers_start_with_the_same_settings():
    pytest.importorskip("distributed")
    from convengine.dask.cluster import worker_environment
    from convengine.runtime.allocator import MALLOC_ENVIRONMENT

    env = worker_environment(2)
    assert all(env[k] == v for k, v in MALLOC_ENVIRONMENT.items())
