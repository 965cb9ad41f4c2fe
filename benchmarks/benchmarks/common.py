"""What the suite's benchmark modules share: the axes, the skip rules, and one benchmark case.

Axes are fixed, whatever this machine has installed, so that results of different machines
and commits line up:

* ``LAYER_NAMES``: every layer of :mod:`convengine.bench.catalogue` (course examples, every distinct
  convolution of ResNet-50 and AlexNet, MobileNetV2's, EfficientNet's and the grouped ones), in the
  fixed order of ``SUITE_LAYERS``, at batch 1; ``BATCH32_LAYERS`` a few of them at 32.
* ``CONTENDERS``: the built-in backends and the two known plugin backends (``winograd``,
  ``torch``), any other registered backend, ``auto`` (the engine's own choice, so dispatch
  regressions show), and the peer libraries ``peer:torch`` and ``peer:onnxruntime``.

A combination that cannot run here raises ``NotImplementedError`` in ``setup`` (asv records
it as skipped, "n/a"): a backend not registered or not available (``cuda`` without a GPU), a
backend that does not support the layer (``winograd`` is 3x3 stride 1 only), a peer that is
not installed, and the few combinations :func:`skip_reason` names as too slow to be worth it.

Nothing is compiled or packed inside a timing: every case is prepared and run once in
``setup`` (Numba JIT compilation, or loading its cache, weight re-layouts, thread pools).
Imports here are cheap and start no threads (torch is imported only by the cases that use
it), because the suite runs under asv's ``forkserver``: this module is imported once and
every benchmark process is forked from it.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

# isort: off
import convengine as ce  # before numpy: it limits OpenBLAS's idle spinning only if numpy is not loaded yet
# isort: on

import numpy as np

try:
    from convengine.core.registry import default_registry
except ImportError:  # commits before the layered package (asv run over history)
    from convengine.plugins import default_registry

_REPOSITORY = Path(__file__).resolve().parents[2]
#: The last commit of the flat layout (``convengine/bench.py``, ``convengine/layers.py``, modules
#: beside each other), whose helpers an older installed convengine can load (see :func:`_module`).
FLAT_LAYOUT = "a5318aa"


def _module(names, needs: str):
    """``convengine.<name>`` as installed, or the flat layout's copy when the installed one lacks ``needs``.

    ``names`` lists where the module lives, the layered package's name first and the flat
    layout's last (``("bench.catalogue", "layers")``). ``asv run`` over a commit range installs
    old versions of convengine, which may predate ``convengine.layers``, the peer and
    whole-model helpers of ``convengine.bench`` or ``convengine.graph.onnx_export``. Those
    helpers are pure Python on top of APIs that old versions have (``ConvProblem``,
    ``Engine.prepare``, the graph IR), so the suite then loads them as they were at
    :data:`FLAT_LAYOUT` (``git show``), whose relative imports (``.problem``, ``.engine``)
    resolve inside the old installed package, not the current layered source, whose imports
    (``..core.problem``) would not. Loaded as ``convengine._suite_<leaf>``, inside the
    installed package (a dotted name such as ``graph.onnx_export`` inside that subpackage).
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    for candidate in names:  # the layered package's name first, then the flat layout's
        try:
            module = importlib.import_module(f"convengine.{candidate}")
            if hasattr(module, needs):
                return module
        except ImportError:
            pass
    name = names[-1]
    package, _, leaf = f"convengine.{name}".rpartition(".")
    qualified = f"{package}._suite_{leaf}"
    if qualified not in sys.modules:
        path = "convengine/" + name.replace(".", "/") + ".py"
        try:
            source = subprocess.run(["git", "-C", str(_REPOSITORY), "show", f"{FLAT_LAYOUT}:{path}"], check=True,
                                    capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise ImportError(f"the installed convengine has no {name}.{needs}, and {path} of {FLAT_LAYOUT} "
                              f"cannot be read ({exc})") from None
        spec = importlib.util.spec_from_loader(qualified, loader=None, origin=f"{FLAT_LAYOUT}:{path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[qualified] = module
        exec(compile(source, spec.origin, "exec"), module.__dict__)
    return sys.modules[qualified]


layers = _module(("bench.catalogue", "layers"), "SETS")
bench = _module("bench", "bench_model")

#: Backends always on the axis, registered here or not (the built-ins and the two plugins). asv files a
#: result by its position in the product of the axes, so an axis must not change with what a commit
#: registers: "grouped" (a built-in since issue 14) missing here shifted every older commit's results by
#: one place, and `asv continuous` then compared different cells. "tiled_winograd" (a built-in since session 16) the same.
KNOWN_BACKENDS = ("naive", "im2col", "direct", "fft", "cuda", "winograd", "winograd4", "torch", "grouped", "tiled_winograd")


def _registered_backends() -> tuple[str, ...]:
    try:
        return tuple(default_registry().names())
    except Exception:  # a broken plugin set must not take the suite down
        return ()


def _preimport() -> None:
    """Import the heavy libraries the cases use, once, in asv's forkserver process.

    Selection reads every backend's ``device`` (the torch plugin imports torch for it), so
    without this every forked benchmark process would spend a second or more importing.
    Only imports: nothing here starts a thread pool or probes a GPU, which a forked child
    could not use afterwards.
    """
    for name in ("numba", "scipy.fft", "torch", "onnx", "onnxruntime"):
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            try:
                importlib.import_module(name)
            except Exception:  # a broken optional install: the cases that need it will say so
                pass


_preimport()

BACKENDS = KNOWN_BACKENDS + tuple(sorted(set(_registered_backends()) - set(KNOWN_BACKENDS)))
PEERS = tuple(bench.PEERS)
CONTENDERS = BACKENDS + ("auto",) + PEERS

class LayerSampling:
    """asv's sampling for one layer's calls: JIT and caches are warm after setup, so little warm-up is
    needed; a sample is at least 20 ms of calls, and 2..10 samples per process within 5 s."""

    timeout = 180.0
    warmup_time = 0.05
    sample_time = 0.02
    repeat = (2, 10, 5.0)


#: The layer axis in a fixed order, whatever catalogue the installed convengine has (see KNOWN_BACKENDS):
#: a commit older than a layer has it as n/a. New catalogue layers go at the end (a test checks that
#: every one is here); until then they follow, in the catalogue's order.
SUITE_LAYERS = (
    "course.example1", "course.example2", "course.example3", "resnet50.conv1", "resnet50.layer1.conv1",
    "resnet50.layer1.conv2", "resnet50.layer1.conv3", "resnet50.layer1.0.conv1", "resnet50.layer2.conv1",
    "resnet50.layer2.conv2", "resnet50.layer2.conv3", "resnet50.layer2.0.conv1", "resnet50.layer2.0.downsample",
    "resnet50.layer3.conv1", "resnet50.layer3.conv2", "resnet50.layer3.conv3", "resnet50.layer3.0.conv1",
    "resnet50.layer3.0.downsample", "resnet50.layer4.conv1", "resnet50.layer4.conv2", "resnet50.layer4.conv3",
    "resnet50.layer4.0.conv1", "resnet50.layer4.0.downsample", "alexnet.conv1", "alexnet.conv2", "alexnet.conv3",
    "alexnet.conv4", "alexnet.conv5", "mobilenet_v2.features.1.conv.0.0", "mobilenet_v2.features.2.conv.1.0",
    "mobilenet_v2.features.3.conv.1.0", "mobilenet_v2.features.4.conv.1.0", "mobilenet_v2.features.5.conv.1.0",
    "mobilenet_v2.features.7.conv.1.0", "mobilenet_v2.features.8.conv.1.0", "mobilenet_v2.features.12.conv.1.0",
    "mobilenet_v2.features.14.conv.1.0", "mobilenet_v2.features.15.conv.1.0",
    "efficientnet_b0.features.1.0.block.0.0", "efficientnet_b0.features.2.0.block.1.0",
    "efficientnet_b0.features.2.1.block.1.0", "efficientnet_b0.features.3.0.block.1.0",
    "efficientnet_b0.features.3.1.block.1.0", "efficientnet_b0.features.4.0.block.1.0",
    "efficientnet_b0.features.4.1.block.1.0", "efficientnet_b0.features.5.0.block.1.0",
    "efficientnet_b0.features.5.1.block.1.0", "efficientnet_b0.features.6.0.block.1.0",
    "efficientnet_b0.features.6.1.block.1.0", "efficientnet_b0.features.7.0.block.1.0",
    "resnext50_32x4d.layer1.0.conv2", "resnext50_32x4d.layer2.0.conv2", "resnext50_32x4d.layer2.1.conv2",
    "resnext50_32x4d.layer3.0.conv2", "resnext50_32x4d.layer3.1.conv2", "resnext50_32x4d.layer4.0.conv2",
    "resnext50_32x4d.layer4.1.conv2", "regnet_y_400mf.trunk_output.block1.block1-0.f.b",
    "regnet_y_400mf.trunk_output.block2.block2-0.f.b", "regnet_y_400mf.trunk_output.block2.block2-1.f.b",
    "regnet_y_400mf.trunk_output.block3.block3-0.f.b", "regnet_y_400mf.trunk_output.block3.block3-1.f.b",
    "regnet_y_400mf.trunk_output.block4.block4-0.f.b", "regnet_y_400mf.trunk_output.block4.block4-1.f.b",
)
LAYER_NAMES = SUITE_LAYERS + tuple(spec.name for spec in layers.LAYERS if spec.name not in SUITE_LAYERS)
#: Layers also measured at batch 32: a 3x3, a 1x1 (a GEMM) and AlexNet's 3x3 at 12x12.
BATCH32_LAYERS = ("resnet50.layer3.conv2", "resnet50.layer3.conv1", "alexnet.conv3")

DTYPE = "float32"


def skip_reason(contender: str, spec, batch: int) -> Optional[str]:
    """Why a combination is left out of the suite on purpose (too slow to be worth its minutes).

    fft on 1x1 kernels is the fft backend's own rule (its ``supports`` declines them); it is
    repeated here only for the commits before that, so that the axis is n/a at every commit.
    """
    if contender == "fft" and spec.kernel == (1, 1):
        return ("fft on a 1x1 kernel: a pointwise layer is a plain GEMM; the FFT backend would transform "
                "every kernel to the input's size (seconds of prepare); newer versions decline them")
    if contender == "naive" and batch > 1:
        return "naive at batch > 1: the plain-loop fallback takes seconds a call; it is measured at batch 1"
    return None


class Case:
    """One (layer, contender, batch) combination, ready to prepare and run.

    The constructor raises ``NotImplementedError`` (asv: skipped) when the combination
    cannot or should not run here. ``prepare()`` builds the executor and returns it;
    ``run()`` runs the last one prepared on the case's input.
    """

    def __init__(self, layer_name: str, contender: str, batch: int = 1, dtype: str = DTYPE):
        try:
            self.spec = layers.layer(layer_name)
        except KeyError:
            raise NotImplementedError(f"layer {layer_name!r} is not in this version's catalogue") from None
        self.contender = contender
        self.problem = self.spec.problem(batch, dtype)
        reason = skip_reason(contender, self.spec, batch)
        if reason:
            raise NotImplementedError(reason)
        self.x, self.w, self.b = bench.problem_data(self.problem)
        self._engine = None
        if contender in PEERS:
            self.prepare()  # the only way to learn whether a peer runs the problem
            return
        if contender != "auto":
            entry = usable_backend(contender)
            declined = entry.backend.supports(self.problem)
            if declined:
                raise NotImplementedError(f"backend {contender!r} does not support {layer_name}: {declined}")
        self._engine = ce.Engine() if contender == "auto" else ce.Engine(policy=contender)
        self.executor: Optional[Callable[[], object]] = None

    def prepare(self) -> Callable[[], object]:
        """Everything before the per-input call: backend choice, weight packing, a peer's session."""
        if self.contender in PEERS:
            try:
                self.executor = bench.make_peer(self.contender, self.problem, self.x, self.w, self.b)
            except bench.PeerUnavailable as exc:
                raise NotImplementedError(str(exc)) from None
        else:
            prepared = self._engine.prepare(self.w, self.b, input_shape=self.problem.input_shape,
                                            **self.spec.conv_kwargs())
            x = self.x
            self.executor = lambda: prepared(x)
        return self.executor

    def run(self):
        return self.executor()

    def warm(self) -> None:
        """Prepare and run once: JIT compilation (or its cache load), packing, thread pools."""
        self.prepare()
        self.run()

    def gflops(self, budget_s: float = 0.1, max_calls: int = 7) -> float:
        """Achieved GFLOP/s: the problem's direct-algorithm FLOPs over the median of a few calls.

        Calls continue until ``budget_s`` has been spent or ``max_calls`` made (at least one).
        """
        times = []
        start = time.perf_counter()
        while not times or (time.perf_counter() - start < budget_s and len(times) < max_calls):
            t0 = time.perf_counter()
            self.run()
            times.append(time.perf_counter() - t0)
        return float(f"{self.problem.flops / float(np.median(times)) / 1e9:.4g}")


def usable_backend(name: str):
    """The registry entry of a backend that can run here, else ``NotImplementedError`` (asv's n/a)."""
    try:
        entry = default_registry().get(name)
    except ValueError as exc:
        raise NotImplementedError(str(exc)) from None
    if not entry.available:
        raise NotImplementedError(f"backend {name!r} is not available: {entry.unavailable_reason}")
    simulated = bench.simulated(entry.attribute("device"))
    if simulated:
        raise NotImplementedError(f"backend {name!r}: {simulated}")
    return entry
