"""Import ONNX models into the graph IR: ``load_onnx(path | bytes | ModelProto) -> Graph``.

The IR already speaks ONNX's vocabulary, so most nodes map one to one. What needs converting
is converted here, once, at load time:

* attributes that later opsets pass as inputs (``Clip`` min/max, ``Pad`` pads, ``Squeeze`` /
  ``Unsqueeze`` axes, ``Reshape`` shape) must be constants and become attributes;
* ``auto_pad`` becomes explicit ``pads``; ``Softmax`` before opset 13 (coerce-to-2-D) becomes
  ``Flatten -> Softmax -> Reshape`` when it is not already a last-axis softmax;
* ``Constant``, ``ConstantOfShape`` and the shape arithmetic exporters emit
  (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``Div``, ``Cast``, ``Slice``...)
  are folded to constants using the known (non-batch) dimensions.

Batch freedom. Graph inputs get a free batch dimension whatever the file says. To tell what
depends on the batch size, the importer evaluates shapes in two "worlds" at once: one with
the batch size the file was exported with (its literal first dimension, or 1) and one with
another batch size. A value equal in both is a constant; one that differs depends on the
batch. A ``Reshape`` target is rewritten so that it works for any batch: an entry equal to
the batch becomes ``0`` (copy the input's dimension), another batch-dependent entry becomes
``-1``, and a literal export batch size (``[1, 9216]`` from a batch-1 export) becomes ``0``.

Anything that cannot be imported (an unknown operator, an unsupported attribute value, a
"constant" input computed from the graph's inputs) is collected over the whole model and
reported in one :class:`GraphError` naming every node (name and index) and operator.

The package: :mod:`.reader` parses and checks the file, :mod:`.driver` walks the nodes,
:mod:`.converters` turns data nodes into IR nodes, :mod:`.folding` evaluates constant ones;
:mod:`.context` holds what they share (the node being converted, the registries that
``@converter``, ``@folder`` and ``@special`` fill).

``onnx`` is an optional dependency (``pip install convengine[onnx]``), imported on first use.
"""

from .context import Unsupported, converter, folder, special
from .driver import SUPPORTED_OPS, load_onnx

__all__ = ["load_onnx", "SUPPORTED_OPS", "Unsupported", "converter", "folder", "special"]
