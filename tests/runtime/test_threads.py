"""Thread settings: the count, and the guard against a spinning OpenMP runtime loaded before convengine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import convengine as ce

PROBE = ("import warnings, json, os\n"
         "warnings.simplefilter('always')\n"
         "with warnings.catch_warnings(record=True) as caught:\n"
         "{imports}\n"
         "from convengine.runtime import threads\n"
         "print(json.dumps({{'spinning': threads.SPINNING_OPENMP, 'policy': os.environ.get('OMP_WAIT_POLICY'),\n"
         "  'spin': os.environ.get('GOMP_SPINCOUNT'),\n"
         "  'warned': [str(w.message) for w in caught if w.category.__name__ == 'ThreadingWarning']}}))\n")


def _probe(*modules, env_extra=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra or {})
    imports = "\n".join(f"    import {m}" for m in modules)
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_convengine_first_asks_openmp_to_sleep_after_a_short_spin_and_does_not_warn():
    from convengine.runtime.threads import WORKER_SPIN_COUNT

    result = _probe("convengine")
    assert result == {"spinning": False, "policy": "PASSIVE", "spin": WORKER_SPIN_COUNT, "warned": []}


@pytest.mark.parametrize("env_extra,spin", [({"OMP_WAIT_POLICY": "PASSIVE"}, None),  # the user's policy: no spin added
                                            ({"GOMP_SPINCOUNT": "0"}, "0")])  # the user's own spin count
def test_a_users_openmp_settings_are_left_alone(env_extra, spin):
    result = _probe("convengine", env_extra=env_extra)
    assert result["policy"] == "PASSIVE" and result["spin"] == spin


def test_torch_first_is_detected_warned_about_and_numba_runs_single_threaded():
    pytest.importorskip("torch")
    result = _probe("torch", "convengine")
    assert result["spinning"] is True
    assert result["warned"] and "OMP_WAIT_POLICY=PASSIVE" in result["warned"][0]


def test_an_explicit_wait_policy_is_respected():
    pytest.importorskip("torch")
    result = _probe("torch", "convengine", env_extra={"OMP_WAIT_POLICY": "ACTIVE"})
    assert result == {"spinning": False, "policy": "ACTIVE", "spin": None, "warned": []}


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_non_positive_ints(bad):
    with pytest.raises(ValueError, match="num_threads must be a positive int"):
        ce.set_num_threads(bad)


@pytest.mark.parametrize("first,preset,limited,value", [
    ("convengine", None, True, "17"),
    ("numpy", None, False, "17"),  # OpenBLAS loaded with numpy before convengine set it
    ("numpy", "12", True, "12"),  # the user's own setting, seen by OpenBLAS at load
])
def test_openblas_spin_limit_applies_when_openblas_can_see_it(first, preset, limited, value):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    code = (f"import {first}\nimport convengine, os, json\nfrom convengine.runtime import threads\n"
            "print(json.dumps([threads.blas_spin_limited(), os.environ['OPENBLAS_THREAD_TIMEOUT']]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [limited, value]
