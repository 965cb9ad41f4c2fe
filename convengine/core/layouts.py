"""Memory layouts a convolution's input and output may have, besides PyTorch's NCHW.

Why: the problem is the same convolution whatever order its numbers sit in memory, but the
cost is not. Inside a network a layer reads what the previous one wrote, and ONNX Runtime
and oneDNN keep activations channel-blocked between their convolutions (``NCHW16c``): a
register tile then reads 16 channels of a pixel as one contiguous vector and stores its
results the same way, with no transpose and no copy into a blocked buffer. Transformer-style
blocks (ConvNeXt's) run their pointwise layers on channels-last rows (``NHWC``), where a 1x1
convolution is the ``MatMul`` the exporter wrote.

A layout is a name (:data:`LAYOUTS`); shapes stay logical everywhere (a problem's
``input_shape`` is ``(N, C, H, W)`` in every layout), and :func:`array_shape` gives the
array's. ``NCHW16c`` pads the channels to a multiple of 16 with zeros, which every writer
keeps zero, so that a reader may sum over them. :func:`to_layout` and :func:`to_nchw` are
the plain numpy conversions: the reference for tests, and the boundary copies where a
network leaves a blocked stretch.
"""

from __future__ import annotations

import numpy as np

NCHW = "NCHW"
#: Channel blocks of 16: array ``(N, ceil(C / 16), H, W, 16)``, channel ``c`` at ``[:, c // 16, :, :, c % 16]``.
NCHW16C = "NCHW16c"
#: Channels last: array ``(N, H, W, C)``.
NHWC = "NHWC"
LAYOUTS = (NCHW, NCHW16C, NHWC)
#: Channels per block of :data:`NCHW16C`.
BLOCK = 16


def check_layout(layout, name: str) -> str:
    """``layout`` if it is one of :data:`LAYOUTS`, else a ``ValueError`` naming the parameter."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    return layout


def layout_note(layout: str) -> str:
    """``" (NCHW16c)"`` after an array shape in a message, for any layout but NCHW (``""``)."""
    return "" if layout == NCHW else f" ({layout})"


def array_shape(shape, layout: str) -> tuple:
    """The array shape of a tensor whose logical (NCHW) shape is ``shape``, in ``layout``."""
    n, c, h, w = shape
    if layout == NCHW16C:
        return (n, -(-c // BLOCK), h, w, BLOCK)
    if layout == NHWC:
        return (n, h, w, c)
    return (n, c, h, w)


def whole_blocks(start: int, channels: int, step: int) -> bool:
    """Whether channels ``start``, ``start + step``, ... (``channels`` of them) are whole :data:`NCHW16C` blocks:
    the only channel slices a blocked buffer has."""
    return step == 1 and start % BLOCK == 0 and channels % BLOCK == 0


def channel_slice(buffer: np.ndarray, start: int, channels: int, step: int, layout: str) -> np.ndarray:
    """Channels ``start``, ``start + step``, ... (``channels`` of them) of ``buffer`` as a view: ``(N, channels, H, W)``
    of an NCHW buffer, the ``(N, channels / 16, H, W, 16)`` blocks of an :data:`NCHW16C` one (:func:`whole_blocks`)."""
    if layout == NCHW16C:
        return buffer[:, start // BLOCK:(start + channels) // BLOCK]
    return buffer[:, start:start + step * (channels - 1) + 1:step]


def kernel_view(a: np.ndarray, layout: str) -> np.ndarray:
    """What the compiled kernels take: NCHW and NHWC arrays as they are, a blocked (N, C/16, H, W, 16) one as
    (N, C/16, H, W * 16), so that one compiled signature (4-D arrays) serves every layout."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], a.shape[1], a.shape[2], -1) if layout == NCHW16C else a


def to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """A new C-contiguous copy of the NCHW array ``x`` in ``layout`` (padding channels zero)."""
    if layout == NHWC:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if layout == NCHW16C:
        n, c, h, w = x.shape
        blocked = np.zeros(array_shape(x.shape, layout), x.dtype)
        for b in range(blocked.shape[1]):
            channels = x[:, b * BLOCK:(b + 1) * BLOCK]
            blocked[:, b, :, :, :channels.shape[1]] = channels.transpose(0, 2, 3, 1)
        return blocked
    return np.array(x, order="C")


def to_nchw(y: np.ndarray, layout: str, channels: int) -> np.ndarray:
    """A new C-contiguous NCHW copy of ``y``, held in ``layout``, of ``channels`` channels."""
    if layout == NHWC:
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))
    if layout == NCHW16C:
        n, blocks, h, w, _ = y.shape
        return np.ascontiguousarray(y.transpose(0, 1, 4, 2, 3).reshape(n, blocks * BLOCK, h, w)[:, :channels])
    return np.array(y, order="C")


def clear_padding(y: np.ndarray, layout: str, channels: int) -> np.ndarray:
    """Zero ``y``'s padding channels in place (an activation may have made 0.5 of them) and return it."""
    if layout == NCHW16C and channels % BLOCK:
        y[:, -1, :, :, channels % BLOCK:] = 0
    return y
