"""docs/plugins.md's reference is the docstrings of the contract, every name documented, and up to date.

Issue 16 (7): an author had to open convengine's source for ``fingerprint()``'s type, the
attributes of ``ConvProblem``, the machine profile's rates, ``BackendInfo``, ``Engine.conv2d``
and the exception classes. docs/api_reference.py renders them all from the docstrings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import module_from_file

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    return module_from_file("api_reference", ROOT / "docs" / "api_reference.py")


def test_every_name_of_the_contract_is_documented():
    section, missing = _generator().render()
    assert not missing, f"undocumented (add a docstring, or a #: comment above the attribute): {', '.join(missing)}"
    for name in ("fingerprint() -> dict", "input_shape", "out_height", "out_width", "gemm_flops_float32", "bandwidth",
                 "parallel_launch_s", "convengine.BackendInfo", "convengine.Engine", "conv2d(", "BackendDeclinedError",
                 "BackendFailedError", "BackendUnavailableError", "extra_problems"):
        assert name in section, name


def test_the_reference_in_docs_plugins_md_is_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "api_reference.py"), "--check"], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr + "\n(run: python docs/api_reference.py)"


def test_an_undocumented_member_is_reported(monkeypatch):
    """The check can fail: a member without a docstring is named."""
    generator = _generator()

    class Bare:
        """A class."""

        def method(self):
            pass

    missing: list[str] = []
    generator.render_member(Bare, "method", {}, "Bare", missing)
    assert missing == ["Bare.method"]
