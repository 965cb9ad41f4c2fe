"""Whole models: the graph executor under each policy and backend, against ONNX Runtime.

Parameters: ``model`` (``lenet``, ``alexnet``, ``resnet18``, ``resnet50`` from the model zoo,
batch 1, float32) and ``policy``: ``auto`` (the engine's cost model, per layer), ``tune``
(measured per layer), each backend of :data:`.common.BACKENDS` running every convolution
(``Engine(policy=NAME)``), and ``peer:onnxruntime``: ONNX Runtime (CPU provider, default
graph optimizations, convengine's thread count, sequential, no spinning) on
``to_onnx(graph)``, the same weights and input.

* ``ModelInference.time_run``: one run of the prepared model (batch-norm folded, weights
  packed, everything warm).
* ``ZooInference.time_run`` and ``peakmem_run``: the same for the zoo's newer architectures
  (:data:`ZOO_MODELS`: ResNeXt-50 32x4d, Wide ResNet-50-2, SqueezeNet 1.1, ShuffleNet V2 1.0x,
  MobileNetV2; batch 1, 224x224, float32) under ``auto`` and ONNX Runtime only, to keep the
  suite fast: the grouped, depthwise and channel-shuffle paths against ONNX Runtime. A commit
  whose zoo lacks a model (or whose ``to_onnx`` cannot export it) shows n/a there.
* ``ModelInference.peakmem_run``: the benchmark process's peak RSS: interpreter and imports
  (a constant), the model in memory (the unpickled ``Graph``; for ONNX Runtime the bytes of
  the ``.onnx`` file), the prepared model, one run.
* ``ModelFirstRun.time_first_run``: the cold first call, preparation included (backend
  choice, weight packing and re-layout; ONNX Runtime's session creation and graph
  optimization), in a fresh benchmark process with one sample per process. Numba kernels
  are not compiled there: they load from Numba's disk cache (``__pycache__``), which the
  first process to use a kernel fills; only the first measurement after a kernel's source
  changes can include its compilation.

What is built once. ``setup_cache`` only names a directory: asv runs it in a fresh
temporary directory, which is then the working directory of every benchmark of both
classes, and removes it at the end of the run. Each model's files are made there the first
time a benchmark needs them, by a helper process (:func:`_ensure`), so that building never
counts in a benchmark process's peak memory: the graph from the zoo, pickled (protocol 5:
unpickling holds one copy of the weights, none of the float64 temporaries of the zoo's
random initialisation), its input, and its ``to_onnx`` export. ``tune`` tunes a model the
first time a benchmark needs it, in a helper process too (tuning prepares and runs every
backend on every layer), into a tuning cache in that directory: fresh for each asv run, so
no stale measurement is reused; the benchmarks prepare from it.

Left out (``NotImplementedError`` in ``setup``, shown as n/a): a backend that is not
registered or not available, or whose ``supports`` declines any convolution of the model
(``winograd``: 3x3 stride 1 only, so every model here); ``fft`` on models with 1x1
convolutions (ResNets: the FFT backend transforms every 1x1 kernel to the input's size,
a minute of preparation and ~17 GB on ResNet-50: the backend's ``supports`` declines 1x1
kernels, and :func:`skip_reason` repeats the rule for commits before it did); ``naive`` on
ResNet-50 (about 3 s a run on 2 cores, over this suite's 2 s budget a run; its layers are
tracked in ``conv2d``).
"""

from __future__ import annotations

import os
import pickle

# isort: off
from .common import BACKENDS, _module, bench, usable_backend  # (first: it imports convengine before numpy)
# isort: on

import numpy as np

MODELS = ("lenet", "alexnet", "resnet18", "resnet50")
#: The newer zoo entries (issue 14), timed under auto and ONNX Runtime only (ZooInference).
ZOO_MODELS = ("resnext50_32x4d", "wide_resnet50_2", "squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v2")
PEER = "peer:onnxruntime"
POLICIES = ("auto", "tune") + BACKENDS + (PEER,)
BATCH = 1

#: (policy, model) left out on purpose: over ~2 s a run, or minutes and gigabytes to prepare.
TOO_SLOW = {
    ("naive", "resnet50"): "naive on resnet50: about 3 s a run on 2 cores (this suite's budget is ~2 s a run); "
                           "its layers are tracked in conv2d",
}

def _files(directory: str, model: str) -> dict:
    names = {"graph": "graph.pickle", "input": "input.npy", "onnx": "onnx", "errors": "errors.json",
             "built": "built", "tuning": "tuning.json", "tuned": "tuned"}
    return {key: os.path.join(directory, f"{model}.{name}") for key, name in names.items()}


def _make(directory: str, model: str, what: str) -> None:
    """In a helper process: build ``model``'s files (``what="files"``) or tune it (``"tuned"``).

    Files: the pickled graph (protocol 5: unpickling it holds one copy of the weights, without
    the float64 temporaries of the zoo's random initialisation), its input, its ONNX export;
    what failed goes to ``<model>.errors.json``. Tuning: every convolution of the model into
    a tuning cache that only this run of the suite uses.
    """
    import json

    files = _files(directory, model)
    if what == "tuned":
        from convengine import Engine  # the public name: the same at every commit
        from convengine.graph.executor import CompiledGraph

        with open(files["graph"], "rb") as f:
            graph = pickle.load(f)
        CompiledGraph(graph, Engine(policy="tune", tuning_cache=files["tuning"]), batch=BATCH)
        open(files["tuned"], "w").close()
        return
    errors = {}
    try:
        graph = _module("models", "get_model").get_model(model)
        with open(files["graph"], "wb") as f:
            pickle.dump(graph, f, protocol=5)
        np.save(files["input"], bench.model_input(graph, BATCH))
    except Exception as exc:  # e.g. a version of convengine without the zoo
        errors["graph"] = f"cannot build {model}: {type(exc).__name__}: {exc}"
    else:
        try:
            to_onnx = _module("graph.onnx_export", "to_onnx").to_onnx
            with open(files["onnx"], "wb") as f:
                f.write(to_onnx(graph).SerializeToString())
        except Exception as exc:
            errors["onnx"] = f"cannot export {model} to ONNX: {type(exc).__name__}: {exc}"
    with open(files["errors"], "w") as f:
        json.dump(errors, f)
    open(files["built"], "w").close()


def _ensure(directory: str, model: str, what: str) -> dict:
    """``model``'s files, made now in a helper process (see :func:`_make`) unless already there.

    A separate process, so that neither building nor tuning counts in a benchmark process's
    peak memory (asv reads the benchmark process's own ``ru_maxrss``). A fork of this one,
    so it has what a benchmark process has (the heavy libraries, imported by asv's
    forkserver, and the same hash seed) and computes the tuning keys the benchmark processes
    will look up; it is forked in ``setup``, before this process starts any thread pool.
    """
    import multiprocessing

    files = _files(directory, model)
    marker = files["built" if what == "files" else "tuned"]
    if not os.path.exists(marker):
        helper = multiprocessing.get_context("fork").Process(target=_make, args=(directory, model, what))
        helper.start()
        helper.join(timeout=1200)
        if helper.exitcode != 0 or not os.path.exists(marker):
            raise RuntimeError(f"making the {what} of {model} failed (helper exit code {helper.exitcode})")
    return files


def skip_reason(policy: str, model: str, problems) -> str | None:
    """Why a (policy, model) combination does not run (see the module docstring), or ``None``."""
    if (policy, model) in TOO_SLOW:
        return TOO_SLOW[(policy, model)]
    if policy == "fft" and any(p.kernel_h == p.kernel_w == 1 for _, p in problems):  # fft's own rule, for older commits
        return (f"fft on {model}: 1x1 convolutions (a GEMM; the FFT backend transforms every kernel to the "
                f"input's size: a minute and gigabytes of preparation on resnet50; newer versions decline them)")
    return None


class ModelCase:
    """One (model, policy) combination: the model and input loaded, ready to prepare and run.

    The constructor raises ``NotImplementedError`` (asv: n/a) when the combination cannot or
    should not run here; for ``tune`` it makes sure the model is tuned (in another process).
    """

    def __init__(self, directory: str, model: str, policy: str):
        import json

        self.model, self.policy = model, policy
        self.paths = _ensure(directory, model, "files")
        with open(self.paths["errors"]) as f:
            errors = json.load(f)
        if "graph" in errors:
            raise NotImplementedError(errors["graph"])
        self.graph, self.onnx_model, self.tuning_cache = None, None, None
        if policy == PEER:
            if "onnx" in errors:
                raise NotImplementedError(errors["onnx"])
            try:
                import onnxruntime  # noqa: F401  (only whether it is installed)
            except ImportError as exc:
                raise NotImplementedError(f"onnxruntime is not installed ({exc})") from None
            with open(self.paths["onnx"], "rb") as f:  # the model in memory, as the Graph is for convengine
                self.onnx_model = f.read()
        else:
            with open(self.paths["graph"], "rb") as f:
                self.graph = pickle.load(f)
            problems = bench.conv_problems(self.graph, BATCH)
            reason = skip_reason(policy, model, problems)
            if reason:
                raise NotImplementedError(reason)
            if policy not in ("auto", "tune"):
                self._check_backend(policy, problems)
            if policy == "tune":
                self.tuning_cache = _ensure(directory, model, "tuned")["tuning"]
        self.x = np.load(self.paths["input"])
        self.executor = None

    def _check_backend(self, name: str, problems) -> None:
        usable_backend(name)
        declined = bench.backend_skip_reason(name, problems, explicit=True)
        if declined:
            raise NotImplementedError(f"backend {name!r} on {self.model}: {declined}")

    def prepare(self):
        """Everything before the per-input call: backend choice and packing, or ONNX Runtime's session."""
        run, _ = bench.build_model_runner(self.policy, self.graph, BATCH, tuning_cache=self.tuning_cache,
                                          onnx_model=self.onnx_model)
        self.executor = run
        return run

    def run(self):
        return self.executor(self.x)


class _ModelFiles:
    """One directory per asv run for both classes below: asv runs ``setup_cache`` in a fresh
    temporary directory, runs their benchmarks in it and removes it at the end; the models'
    files and tuning caches are made there when first needed (:func:`_ensure`)."""

    def setup_cache(self):
        return os.getcwd()


class ModelInference(_ModelFiles):
    params = [list(MODELS), list(POLICIES)]
    param_names = ["model", "policy"]
    timeout = 1200.0  # setup may tune a model first (minutes for resnet50)
    # Prepared and run once in setup, so no asv warm-up; a sample is one call or more
    # (at least 50 ms), 2..7 samples within 10 s per process.
    warmup_time = 0.0
    sample_time = 0.05
    repeat = (2, 7, 10.0)

    def setup(self, directory, model, policy):
        self.case = ModelCase(directory, model, policy)
        self.case.prepare()
        self.case.run()

    def time_run(self, directory, model, policy):
        self.case.run()

    def peakmem_run(self, directory, model, policy):
        self.case.run()


class ZooInference(ModelInference):
    """ModelInference's benchmarks on :data:`ZOO_MODELS`, convengine's ``auto`` against ONNX Runtime."""

    params = [list(ZOO_MODELS), ["auto", PEER]]


class ModelFirstRun(_ModelFiles):
    params = [list(MODELS), list(POLICIES)]
    param_names = ["model", "policy"]
    timeout = 1200.0
    # One call per process, nothing before it: the first call is the only one that is cold.
    warmup_time = 0.0
    number = 1
    repeat = 1

    def setup(self, directory, model, policy):
        self.case = ModelCase(directory, model, policy)  # loaded (and tuned), not prepared

    def time_first_run(self, directory, model, policy):
        self.case.prepare()
        self.case.run()
