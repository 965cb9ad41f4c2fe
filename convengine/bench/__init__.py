"""Side-by-side timing of backends and peer libraries, on single layers and on whole models.

Absolute times on a shared machine are noise; ratios measured in the same run are not.
Every contender is prepared and warmed first (JIT compilation and weight packing stay out
of the timings), then the contenders are timed in interleaved rounds so that a burst of
load from a neighbour hits them all alike, and the median of the rounds is reported
(:mod:`convengine.runtime.timing`).

- :mod:`.catalogue`: the layer shapes benchmarked (ResNet-50, AlexNet, the course's examples);
- :mod:`.peers`: ``torch.nn.functional.conv2d`` and ONNX Runtime, the baselines;
- :mod:`.compare`: one layer, every contender (:class:`Timing` rows);
- :mod:`.runners`, :mod:`.models`: a whole model under each policy and backend against ONNX
  Runtime (a :class:`ModelReport` of :class:`ModelResult` rows);
- :mod:`.memory`: a whole-model contender's peak memory, in a fresh process;
- :mod:`.alone`: a whole model (``convengine bench --onnx FILE``), each runtime alone in fresh
  processes (an :class:`AloneReport` of :class:`AloneResult` rows), per-layer times on request;
- :mod:`.report`: the tables ``convengine bench`` prints.

The names below are this package's API: ``convengine bench`` (:mod:`convengine.cli.bench`),
the scripts in ``benchmarks/`` and the asv suite use them, the asv suite by the same names on
older commits, where ``convengine.bench`` was one module.
"""

from ..core.arrays import problem_data
from ..runtime.timing import SETTLE_S, interleaved
from .alone import AloneReport, AloneResult, LayerTime, bench_alone, layer_times, load_onnx_file
from .compare import Timing, compare, model_totals, simulated
from .memory import MEMORY_METHOD, MemoryResult, measure_model_memory
from .models import TORCH_ON_MODELS, ModelReport, ModelResult, backend_skip_reason, bench_model, conv_problems, model_input
from .peers import PEERS, PeerUnavailable, available_peers, make_peer, onnx_conv_model, onnxruntime_options
from .report import format_alone, format_layer, format_model, format_totals
from .runners import HEAVY_LIBRARIES, MODEL_PEER, build_model_runner, import_heavy_libraries, tune_model

__all__ = [
    "HEAVY_LIBRARIES", "MEMORY_METHOD", "MODEL_PEER", "PEERS", "SETTLE_S", "TORCH_ON_MODELS", "AloneReport",
    "AloneResult", "LayerTime", "MemoryResult", "ModelReport", "ModelResult", "PeerUnavailable", "Timing",
    "available_peers", "backend_skip_reason", "bench_alone", "bench_model", "build_model_runner", "compare",
    "conv_problems", "format_alone", "format_layer", "format_model", "format_totals", "import_heavy_libraries",
    "interleaved", "layer_times", "load_onnx_file", "make_peer", "measure_model_memory", "model_input",
    "model_totals", "onnx_conv_model", "onnxruntime_options", "problem_data", "simulated", "tune_model",
]
