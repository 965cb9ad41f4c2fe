"""Every ``# noqa`` says why: a bare one hides a linter's finding with no reason a reader can check.

ruff's RUF100 (enabled in pyproject.toml) removes a noqa that silences nothing; this checks that
each remaining one carries its reason after the codes, as in
``import numba  # noqa: F401  (only whether Numba is installed)``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOQA = re.compile(r"#\s*noqa(?::\s*[A-Z]+\d+(?:\s*,\s*[A-Z]+\d+)*)?(?P<reason>.*)$")


def _python_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py"],
                                cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: the files to check are the ones git tracks")
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_every_noqa_says_why():
    bare = []
    for path in _python_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            match = NOQA.search(line)
            if match and not re.search(r"\w", match.group("reason")):
                bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "a noqa without its reason (write it after the codes):\n" + "\n".join(bare)


def test_the_check_finds_a_bare_noqa():
    assert not re.search(r"\w", NOQA.search("import numba  # noqa: F401").group("reason"))
    assert not re.search(r"\w", NOQA.search("x = 1  # noqa").group("reason"))
    assert re.search(r"\w", NOQA.search("import numba  # noqa: F401, E402  (only whether it is installed)").group("reason"))
