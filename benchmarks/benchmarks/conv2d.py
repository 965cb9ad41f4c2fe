"""2-D convolution: every backend and peer on the layers that matter.

Parameters: ``layer`` (a name from :mod:`convengine.bench.catalogue`) and ``contender`` (a backend,
``auto``, or a peer ``peer:torch`` / ``peer:onnxruntime``); see :mod:`.common` for the axes
and for which combinations are skipped. float32, convengine's default thread count.

* ``Conv2D.time_execute``: one call of the prepared convolution on a fixed input.
* ``Conv2D.peakmem_execute``: the process's peak memory (data, prepared state, one call).
* ``Conv2D.track_gflops``: achieved GFLOP/s (direct-algorithm FLOPs / median call time;
  higher is better, unlike everything else asv tracks).
* ``Conv2DPrepare.time_prepare``: backend preparation (weight re-layout, kernel FFTs, a
  peer's tensor wrapping or ONNX Runtime session), JIT already warm.
* ``Conv2DBatch32.*``: the same as ``Conv2D`` at batch 32 for a few layers.
"""

from .common import BATCH32_LAYERS, CONTENDERS, LAYER_NAMES, Case, LayerSampling


class Conv2D(LayerSampling):
    params = [list(LAYER_NAMES), list(CONTENDERS)]
    param_names = ["layer", "contender"]
    batch = 1

    def setup(self, layer, contender):
        self.case = Case(layer, contender, batch=self.batch)
        self.case.warm()

    def time_execute(self, layer, contender):
        self.case.run()

    def peakmem_execute(self, layer, contender):
        self.case.run()

    def track_gflops(self, layer, contender):
        return self.case.gflops()

    track_gflops.unit = "GFLOP/s"


class Conv2DBatch32(Conv2D):
    params = [list(BATCH32_LAYERS), list(CONTENDERS)]
    batch = 32


class Conv2DPrepare(LayerSampling):
    params = [list(LAYER_NAMES), list(CONTENDERS)]
    param_names = ["layer", "contender"]
    warmup_time = 0.0

    def setup(self, layer, contender):
        self.case = Case(layer, contender)
        self.case.prepare()  # warm: imports, JIT compilation a prepare may do, FFT plans

    def time_prepare(self, layer, contender):
        self.case.prepare()
