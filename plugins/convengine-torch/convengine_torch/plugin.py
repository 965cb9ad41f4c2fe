"""The ``torch`` backend: ``torch.nn.functional.conv2d`` behind convengine's contract.

torch is imported lazily, in ``availability()`` and ``prepare()``, so that a machine
without torch still imports this plugin and lists the backend as unavailable.
"""

from __future__ import annotations

import convengine
from convengine.runtime.threads import get_num_threads

from . import __version__


def _torch():
    import torch

    return torch


#: Input channels per group from which a grouped F.conv2d runs at the rate of an ungrouped one; with
#: fewer, its rate falls in proportion. Measured on this project's 2-vCPU Xeon (numpy's GEMM 310
#: GFLOP/s), 3x3 layers of 8 channels per group (RegNetY-400MF's, ResNeXt-50's layer2.0.conv2):
#: 34-42 GFLOP/s at batch 1, 19-45 at batch 32 on the larger planes, where the ungrouped formula
#: assumed 155 and chose torch for layers the ``grouped`` backend ran 20-30% (batch 1) and
#: 1.7-2.6x (batch 32) faster; 4 per group (ResNeXt's first stage, batch 32): 16 GFLOP/s.
GROUP_FULL_RATE_CHANNELS = 32


class TorchBackend(convengine.Backend):
    name = "torch"
    numerical_class = convengine.EXACT
    version = __version__

    def __init__(self):
        self._device = None

    @property
    def device(self) -> str:
        """``cuda`` when torch sees a GPU, else ``cpu``."""
        if self._device is None:
            try:
                self._device = "cuda" if _torch().cuda.is_available() else "cpu"
            except Exception:
                self._device = "cpu"
        return self._device

    def availability(self):
        try:
            _torch()
        except Exception as exc:
            return f"torch is not installed ({type(exc).__name__}: {exc}); pip install torch"
        return None

    def fingerprint(self) -> dict:
        torch = _torch()
        info = {"version": self.version, "torch": torch.__version__, "device": self.device}
        if self.device == "cuda":
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cudnn"] = torch.backends.cudnn.version()
        return info

    def error_bound(self, dtype: str) -> float:
        """cuDNN may use TF32 tensor cores for float32 when torch allows it: then it is not exact."""
        if dtype == "float32" and self.device == "cuda" and _torch().backends.cudnn.allow_tf32:
            return 1e-3
        return super().error_bound(dtype)

    def estimate_seconds(self, problem, machine):
        if self.device == "cuda":
            transfer = 4 * (problem.batch * problem.in_channels * problem.height * problem.width
                            + problem.batch * problem.out_channels * problem.out_height * problem.out_width)
            return transfer / 12e9 + problem.flops / 20e12 + 3e-5
        # Measured against numpy's GEMM rate on ResNet-50 and AlexNet layers at batch 1 (2 cores):
        # F.conv2d on NCHW tensors reaches 35-55% of it, reorders to oneDNN's blocked layout and
        # back included (which is the memory term: input and output read and written once more).
        # Grouped, less in proportion to the channels per group (GROUP_FULL_RATE_CHANNELS).
        itemsize = 4 if problem.dtype == "float32" else 8
        reorder = 2 * itemsize * problem.batch * (problem.in_channels * problem.height * problem.width
                                                  + problem.out_channels * problem.out_height * problem.out_width)
        share = 0.5 * min(1.0, problem.in_channels // problem.groups / GROUP_FULL_RATE_CHANNELS)
        return problem.flops / (share * machine.gemm_flops(problem.dtype)) + reorder / machine.bandwidth + 3e-5

    def prepare(self, problem, weight, bias):
        torch = _torch()
        import torch.nn.functional as F

        device = torch.device(self.device)
        w = torch.from_numpy(weight.copy()).to(device)
        b = None if bias is None else torch.from_numpy(bias.copy()).to(device)
        top, bottom, left, right = problem.padding
        symmetric = top == bottom and left == right
        stride, dilation, groups = problem.stride, problem.dilation, problem.groups

        def execute(x):
            torch.set_num_threads(get_num_threads())
            with torch.no_grad():
                # torch refuses to wrap read-only memory without a warning; copy those.
                t = torch.from_numpy(x if x.flags.writeable else x.copy()).to(device)
                if symmetric:
                    y = F.conv2d(t, w, b, stride=stride, padding=(top, left), dilation=dilation, groups=groups)
                else:  # conv2d pads symmetrically only
                    t = F.pad(t, (left, right, top, bottom))
                    y = F.conv2d(t, w, b, stride=stride, padding=0, dilation=dilation, groups=groups)
                return y.cpu().numpy()

        return execute


@convengine.hookimpl
def convengine_register_backends(register):
    register(TorchBackend())
