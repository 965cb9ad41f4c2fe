"""The ``direct`` backend on ResNet-50's convolutions in each memory layout it takes.

Inside a network the layout between convolutions matters as much as the kernel (see
:mod:`convengine.core.layouts` and :mod:`convengine.graph.blocking`): this tracks each of
ResNet-50's distinct convolutions with NCHW in and out (as ``Conv2D`` does) and with NCHW16c in
and out (as the graph executor runs them between convolutions), at batch 1 and 32. Parameters:
``layer`` (a ``resnet50.*`` name of :mod:`convengine.bench.catalogue`), ``layout``.

* ``Conv2DLayouts.time_execute``: one call of the prepared convolution on a fixed input in that layout.
* ``Conv2DLayoutsBatch32.time_execute``: the same at batch 32 on a few layers.
"""

import convengine as ce
from convengine.core.layouts import NCHW, NCHW16C, to_layout

from .common import BATCH32_LAYERS, LAYER_NAMES, Case, LayerSampling

RESNET50_LAYERS = tuple(name for name in LAYER_NAMES if name.startswith("resnet50."))


class Conv2DLayouts(LayerSampling):
    params = [list(RESNET50_LAYERS), [NCHW, NCHW16C]]
    param_names = ["layer", "layout"]
    batch = 1

    def setup(self, layer, layout):
        case = Case(layer, "direct", batch=self.batch)  # raises NotImplementedError (skipped) where direct declines
        prepared = ce.Engine(policy="direct").prepare(case.w, case.b, input_shape=case.problem.input_shape,
                                                      input_layout=layout, output_layout=layout,
                                                      **case.spec.conv_kwargs())
        x = to_layout(case.x, layout)
        self.run = lambda: prepared(x)
        self.run()  # JIT (or its cache), packing, thread pools

    def time_execute(self, layer, layout):
        self.run()


class Conv2DLayoutsBatch32(Conv2DLayouts):
    params = [[name for name in BATCH32_LAYERS if name.startswith("resnet50.")], [NCHW, NCHW16C]]
    batch = 32
