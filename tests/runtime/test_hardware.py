import hashlib
import io
import json
import platform
import sys

import numpy as np
import pytest

import convengine
from convengine.runtime import hardware
from convengine.runtime.hardware import UNKNOWN, fingerprint_digest, host_fingerprint

KEYS = {
    "cpu_model",
    "cpu_flags",
    "logical_cores",
    "usable_cores",
    "machine",
    "blas",
    "python",
    "numpy",
    "convengine",
}


def test_fingerprint_describes_this_host():
    fp = host_fingerprint()
    assert set(fp) == KEYS
    assert fp["python"] == platform.python_version()
    assert fp["numpy"] == np.__version__
    assert fp["convengine"] == convengine.__version__
    assert fp["machine"] == (platform.machine() or UNKNOWN)
    assert isinstance(fp["cpu_model"], str) and fp["cpu_model"]
    if isinstance(fp["usable_cores"], int) and isinstance(fp["logical_cores"], int):
        assert 1 <= fp["usable_cores"] <= fp["logical_cores"]
    for lib in fp["blas"]:
        assert set(lib) == {"internal_api", "version", "architecture"}  # no num_threads
    json.dumps(fp)  # usable in a cache key


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_linux_cpu_fields_come_from_cpuinfo():
    fields = hardware._read_cpuinfo()
    fp = host_fingerprint()
    if "model name" in fields:
        assert fp["cpu_model"] == fields["model name"]
    if "flags" in fields:
        assert fp["cpu_flags"] == fingerprint_digest(sorted(set(fields["flags"].split())))


def test_fingerprint_is_cached_and_returns_copies():
    first = host_fingerprint()
    hits = hardware._collect.cache_info().hits
    first["cpu_model"] = "tampered"
    second = host_fingerprint()
    assert second["cpu_model"] != "tampered"
    assert hardware._collect.cache_info().hits == hits + 1


def _write_cpuinfo(path, flags):
    block = f"processor\t: {{}}\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n\n"
    path.write_text(block.format(0) + block.format(1))


def test_cpu_flags_distinguish_instruction_sets(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(hardware, "_CPUINFO", str(cpuinfo))

    def collect(flags):
        _write_cpuinfo(cpuinfo, flags)
        return hardware._collect.__wrapped__()

    avx512 = collect("sse2 avx avx2 fma avx512f avx512bw")
    avx2 = collect("sse2 avx avx2 fma")
    reordered = collect("avx512bw fma avx2 avx sse2 avx512f avx2")
    assert avx512["cpu_model"] == avx2["cpu_model"] == "Test CPU 9000"
    assert avx512["cpu_flags"] != avx2["cpu_flags"]
    assert reordered["cpu_flags"] == avx512["cpu_flags"]  # a set: order and repeats do not matter


def test_never_raises_and_fills_unknown(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("probe failed")

    monkeypatch.setattr(hardware, "_CPUINFO", str(tmp_path / "missing"))
    monkeypatch.setattr(hardware, "threadpool_info", boom)
    monkeypatch.setattr(hardware.platform, "processor", boom)
    monkeypatch.setattr(hardware.platform, "machine", boom)
    monkeypatch.setattr(hardware.os, "cpu_count", boom)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", boom, raising=False)
    fp = hardware._collect.__wrapped__()
    for key in ("cpu_model", "cpu_flags", "logical_cores", "usable_cores", "machine", "blas"):
        assert fp[key] == UNKNOWN, key
    assert fp["python"] == platform.python_version()


def test_digest_is_stable_short_and_canonical():
    canonical = hashlib.sha256(b'{"a":1,"b":[1,2]}').hexdigest()[:16]
    assert fingerprint_digest({"b": [1, 2], "a": 1}) == canonical  # pinned: persisted keys rely on it
    assert fingerprint_digest({"a": 1, "b": [1, 2]}) == canonical
    assert fingerprint_digest({"a": 1, "b": [2, 1]}) != canonical
    assert len(canonical) == 16 and int(canonical, 16) >= 0


def test_digest_rejects_unserialisable_objects():
    with pytest.raises(TypeError):
        fingerprint_digest({"a": object()})


def test_fingerprint_does_not_depend_on_what_else_was_imported():
    """scipy.linalg (and torch) load BLAS copies of their own; the key must not change with them."""
    import subprocess
    import sys

    code = (
        "from convengine.runtime import hardware\n"
        "before = hardware._collect()['blas']\n"
        "import scipy.linalg\n"
        "try:\n    import torch\nexcept ImportError:\n    pass\n"
        "hardware._collect.cache_clear()\n"
        "assert hardware._collect()['blas'] == before, (before, hardware._collect()['blas'])\n"
        "print('same')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "same" in result.stdout, result.stderr


def test_l2_cache_size_from_sysconf_then_sysfs_then_a_default(monkeypatch):
    """The second-level cache size that sizes ``direct``'s job order: glibc's answer, else sysfs's, else 1 MiB."""
    measure = hardware.l2_cache_bytes.__wrapped__  # (the cached function measures once per process)
    monkeypatch.setattr(hardware.os, "sysconf", lambda name: 2 << 20)
    assert measure() == 2 << 20

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(hardware.os, "sysconf", no_sysconf)
    monkeypatch.setattr(hardware, "open", lambda *args, **kwargs: io.StringIO("2048K\n"), raising=False)
    assert measure() == 2 << 20

    def no_file(*args, **kwargs):
        raise FileNotFoundError(args[0])

    monkeypatch.setattr(hardware, "open", no_file, raising=False)
    assert measure() == hardware.DEFAULT_L2_BYTES == 1 << 20
    assert hardware.l2_cache_bytes() > 0  # this machine's, whatever it is
