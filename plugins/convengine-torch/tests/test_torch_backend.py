"""The torch plugin against convengine's conformance kit, plus what is specific to it."""

import subprocess
import sys

import pytest

import convengine
from convengine.testing import BackendConformance
from convengine_torch.plugin import TorchBackend


class TestTorchBackend(BackendConformance):
    backend = TorchBackend()


def test_registered_through_the_entry_point():
    names = {b.name: b for b in convengine.list_backends()}
    assert "torch" in names, "pip install ./plugins/convengine-torch registers the 'torch' backend"
    assert names["torch"].plugin == "torch"


def test_unavailable_with_a_reason_when_torch_is_missing():
    """Block `import torch` in a fresh process: the backend is listed, unavailable, with why."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import convengine\n"
        "info = {b.name: b for b in convengine.list_backends()}['torch']\n"
        "assert not info.available and 'torch is not installed' in info.reason, info\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_asymmetric_padding_is_handled():
    np = pytest.importorskip("numpy")
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    k = np.array([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
    y = convengine.conv2d(x, k, padding=(1, 0, 1, 0), backend="torch")
    np.testing.assert_array_equal(y[0, 0], [[0, 3, 8], [9, 19, 25], [21, 37, 43]])
