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


def test_grouped_layers_are_predicted_slower_per_flop_with_fewer_channels_per_group():
    """oneDNN's grouped convolutions run far below its ungrouped rate when groups are narrow
    (RegNetY's 8 channels per group: a third of the rate assumed before): the cost model must
    not pick torch for them on the ungrouped rate."""
    from convengine.core.costmodel import MachineProfile
    from convengine.core.problem import ConvProblem
    from convengine_torch.plugin import GROUP_FULL_RATE_CHANNELS

    machine = MachineProfile(gemm_flops_float32=3e11, gemm_flops_float64=1.5e11, bandwidth=1e12,
                             parallel_launches=1e6)
    backend = TorchBackend()
    backend._device = "cpu"

    def per_flop(per_group, groups=8):
        channels = per_group * groups
        problem = ConvProblem.from_shapes((1, channels, 56, 56), (channels, per_group, 3, 3), padding=1,
                                          groups=groups, dtype="float32")
        return (backend.estimate_seconds(problem, machine) - 3e-5) / problem.flops

    ungrouped = per_flop(256, groups=1)
    assert per_flop(GROUP_FULL_RATE_CHANNELS) == pytest.approx(ungrouped, rel=0.05)
    assert per_flop(8) > 3 * ungrouped
    assert per_flop(4) > per_flop(8) > per_flop(16) > per_flop(GROUP_FULL_RATE_CHANNELS)
