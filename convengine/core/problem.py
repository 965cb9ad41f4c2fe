"""The convolution problem: every parameter normalised, validated and frozen.

A :class:`ConvProblem` is what dispatch reasons about and what backends are
asked to support, prepare and execute. It is built once per call from either
arrays or shapes, so that every backend sees the same, already-checked,
canonical form (stride pair, 4-tuple padding, dilation pair) and none of them
has to re-parse ``"same"`` or an int-or-pair argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence, Union

import numpy as np

from .layouts import NCHW, array_shape, check_layout

IntOrPair = Union[int, Sequence[int]]
Padding = Union[int, str, Sequence[int]]

SUPPORTED_DTYPES = ("float32", "float64")


def _positive_pair(value: IntOrPair, name: str) -> tuple[int, int]:
    pair = _int_pair(value, name)
    if min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair


def _int_pair(value: IntOrPair, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")


def normalize_padding(
    padding: Padding, kernel: tuple[int, int], dilation: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Return padding as ``(top, bottom, left, right)``.

    Accepted forms: int, pair ``(h, w)``, 4-tuple ``(top, bottom, left, right)``,
    ``"valid"`` (no padding) or ``"same"`` (stride 1 only; for an even effective
    kernel the extra row/column goes to the bottom/right, as PyTorch does).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' requires stride 1, got stride={stride}")
            total_h = dilation[0] * (kernel[0] - 1)
            total_w = dilation[1] * (kernel[1] - 1)
            return (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        raise ValueError(f"padding must be 'same', 'valid', an int, a pair or a 4-tuple, got {padding!r}")
    if isinstance(padding, Sequence) and len(padding) == 4:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in padding):
            raise TypeError(f"padding 4-tuple must hold ints (top, bottom, left, right), got {padding!r}")
        pads = tuple(int(v) for v in padding)
    else:
        try:
            ph, pw = _int_pair(padding, "padding")
        except TypeError:
            raise TypeError(
                "padding must be an int, a pair (h, w), a 4-tuple (top, bottom, left, right), "
                f"'same' or 'valid', got {padding!r}"
            ) from None
        pads = (ph, ph, pw, pw)
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pads  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvProblem:
    """One 2-D convolution, fully specified: shapes, hyper-parameters and dtype.

    Shapes follow PyTorch: input ``(batch, in_channels, height, width)``,
    weight ``(out_channels, in_channels // groups, kernel_h, kernel_w)``.
    ``padding`` is always ``(top, bottom, left, right)``.
    """

    #: Images per call, ``N`` (0 is allowed: an empty batch).
    batch: int
    #: Input channels, ``C_in`` (all groups together).
    in_channels: int
    #: Input height ``H``, before padding.
    height: int
    #: Input width ``W``, before padding.
    width: int
    #: Output channels, ``C_out`` (all groups together).
    out_channels: int
    #: Kernel height ``kH``.
    kernel_h: int
    #: Kernel width ``kW``.
    kernel_w: int
    #: ``(sh, sw)``, always a pair.
    stride: tuple[int, int] = (1, 1)
    #: ``(top, bottom, left, right)``, always four ints (``"same"`` and pairs are resolved).
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    #: ``(dh, dw)``, always a pair.
    dilation: tuple[int, int] = (1, 1)
    #: Channel groups; ``groups == in_channels`` is a depthwise convolution.
    groups: int = 1
    #: ``"float32"`` or ``"float64"``: input, weight, bias and output all have it.
    dtype: str = "float32"
    #: Whether a bias of shape ``(out_channels,)`` is passed to ``prepare``.
    has_bias: bool = False
    #: How the input array holds the ``input_shape`` tensor (:mod:`.layouts`): ``"NCHW"``, ``"NCHW16c"`` or ``"NHWC"``.
    input_layout: str = NCHW
    #: How the output array holds the ``output_shape`` tensor; a residual comes in the same layout.
    output_layout: str = NCHW

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_shapes(
        cls,
        input_shape: Sequence[int],
        weight_shape: Sequence[int],
        *,
        bias: bool = False,
        stride: IntOrPair = 1,
        padding: Padding = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        dtype: str | np.dtype | type = "float32",
        input_layout: str = NCHW,
        output_layout: str = NCHW,
    ) -> "ConvProblem":
        """Validate shapes and hyper-parameters; raise ``ValueError``/``TypeError`` naming the culprit.

        Shapes are logical, ``(N, C, H, W)``, whatever the layouts (see :mod:`.layouts`)."""
        input_shape = _shape(input_shape, "input")
        weight_shape = _shape(weight_shape, "weight")
        dtype_name = np.dtype(dtype).name
        if dtype_name not in SUPPORTED_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype_name}")
        if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        groups = int(groups)
        stride_ = _positive_pair(stride, "stride")
        dilation_ = _positive_pair(dilation, "dilation")
        n, c_in, h, w = input_shape
        c_out, c_per_group, kh, kw = weight_shape
        if kh < 1 or kw < 1:
            raise ValueError(f"weight kernel size must be at least 1x1, got {kh}x{kw}")
        if c_in % groups:
            raise ValueError(f"input channels ({c_in}) must be divisible by groups ({groups})")
        if c_out % groups:
            raise ValueError(f"weight out_channels ({c_out}) must be divisible by groups ({groups})")
        if c_per_group * groups != c_in:
            raise ValueError(
                f"weight expects {c_per_group} input channels per group x {groups} groups = "
                f"{c_per_group * groups} input channels, but input has {c_in}: weight must be "
                f"(out_channels, in_channels/groups, kH, kW) = ({c_out}, {c_in // groups}, {kh}, {kw})"
            )
        pads = normalize_padding(padding, (kh, kw), dilation_, stride_)
        problem = cls(
            batch=n, in_channels=c_in, height=h, width=w, out_channels=c_out, kernel_h=kh, kernel_w=kw,
            stride=stride_, padding=pads, dilation=dilation_, groups=groups, dtype=dtype_name,
            has_bias=bool(bias), input_layout=check_layout(input_layout, "input_layout"),
            output_layout=check_layout(output_layout, "output_layout"),
        )
        eff_h, eff_w = problem.effective_kernel
        if eff_h > problem.padded_height or eff_w > problem.padded_width:
            raise ValueError(
                f"kernel (effective size {eff_h}x{eff_w} with dilation {dilation_}) is larger than the "
                f"padded input ({problem.padded_height}x{problem.padded_width})"
            )
        return problem

    # -- derived sizes ------------------------------------------------------------------
    @property
    def effective_kernel(self) -> tuple[int, int]:
        """Kernel extent once dilation spreads its taps."""
        return (self.dilation[0] * (self.kernel_h - 1) + 1, self.dilation[1] * (self.kernel_w - 1) + 1)

    @property
    def padded_height(self) -> int:
        """``height + top + bottom``."""
        return self.height + self.padding[0] + self.padding[1]

    @property
    def padded_width(self) -> int:
        """``width + left + right``."""
        return self.width + self.padding[2] + self.padding[3]

    @property
    def out_height(self) -> int:
        """Output rows: ``(padded_height - effective kernel height) // sh + 1``."""
        return (self.padded_height - self.effective_kernel[0]) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        """Output columns: ``(padded_width - effective kernel width) // sw + 1``."""
        return (self.padded_width - self.effective_kernel[1]) // self.stride[1] + 1

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(batch, in_channels, height, width)``: the shape ``execute`` receives."""
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """``(out_channels, in_channels // groups, kernel_h, kernel_w)``: the shape ``prepare`` receives."""
        return (self.out_channels, self.in_channels // self.groups, self.kernel_h, self.kernel_w)

    @cached_property  # checked on every call of a prepared convolution (frozen: computed once)
    def output_shape(self) -> tuple[int, int, int, int]:
        """``(batch, out_channels, out_height, out_width)``: the shape ``execute`` must return."""
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @cached_property
    def input_array_shape(self) -> tuple:
        """The shape of the input array ``execute`` receives: ``input_shape`` in ``input_layout``."""
        return array_shape(self.input_shape, self.input_layout)

    @cached_property
    def output_array_shape(self) -> tuple:
        """The shape of the array ``execute`` must return: ``output_shape`` in ``output_layout``."""
        return array_shape(self.output_shape, self.output_layout)

    @property
    def layouts(self) -> tuple[str, str]:
        """``(input_layout, output_layout)``."""
        return self.input_layout, self.output_layout

    @cached_property
    def numpy_dtype(self) -> np.dtype:
        """``dtype`` as a ``numpy.dtype``: compared with every output's dtype, so computed once (the problem is frozen)."""
        return np.dtype(self.dtype)

    @property
    def is_pointwise(self) -> bool:
        """1x1, stride 1, no padding: a plain matrix product, no unfolding needed."""
        return (self.kernel_h, self.kernel_w, self.stride, self.padding) == (1, 1, (1, 1), (0, 0, 0, 0))

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the direct algorithm (the figure FLOP rates are quoted against)."""
        per_output = (self.in_channels // self.groups) * self.kernel_h * self.kernel_w
        return self.batch * self.out_channels * self.out_height * self.out_width * per_output

    @property
    def flops(self) -> int:
        """``2 * macs``: floating-point operations of the direct algorithm."""
        return 2 * self.macs

    def with_batch(self, batch: int) -> "ConvProblem":
        """The same problem for ``batch`` images (the engine prepares once per batch size)."""
        from dataclasses import replace

        return replace(self, batch=batch)

    def key(self) -> str:
        """A stable, human-readable identity for caches and reports."""
        return (
            f"n{self.batch}_c{self.in_channels}_h{self.height}_w{self.width}_o{self.out_channels}"
            f"_k{self.kernel_h}x{self.kernel_w}_s{self.stride[0]}x{self.stride[1]}"
            f"_p{'-'.join(map(str, self.padding))}_d{self.dilation[0]}x{self.dilation[1]}"
            f"_g{self.groups}_{self.dtype}{'_b' if self.has_bias else ''}"
            + ("" if self.layouts == (NCHW, NCHW) else f"_{self.input_layout}-{self.output_layout}")
        )

    def __str__(self) -> str:
        s = "x".join(map(str, self.stride))
        d = "x".join(map(str, self.dilation))
        return (
            f"{self.dtype} input {self.input_shape} * weight {self.weight_shape} -> {self.output_shape}, "
            f"stride {s}, padding {self.padding}, dilation {d}, groups {self.groups}"
            f"{', bias' if self.has_bias else ''}"
            + ("" if self.layouts == (NCHW, NCHW) else f", layouts {self.input_layout} -> {self.output_layout}")
        )


def _shape(shape: Sequence[int], name: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"{name} shape must be a sequence of 4 ints, got {shape!r}") from None
    if len(dims) != 4:
        layout = "(N, C_in, H, W)" if name == "input" else "(C_out, C_in/groups, kH, kW)"
        raise ValueError(f"{name} must be 4-D {layout}, got {len(dims)}-D shape {dims}")
    if min(dims) < 0:
        raise ValueError(f"{name} shape must be non-negative, got {dims}")
    if name == "weight" and min(dims) == 0:
        raise ValueError(f"weight shape must be positive in every dimension, got {dims}")
    if name == "input" and min(dims[1:]) == 0:
        raise ValueError(f"input channels and spatial size must be positive, got {dims}")
    return dims  # type: ignore[return-value]
