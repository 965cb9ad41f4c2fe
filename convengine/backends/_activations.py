"""The epilogue's activations for fusing kernels, written once as LLVM IR.

Why IR: a fused SiLU or sigmoid needs ``exp``, and Numba compiles ``math.exp`` to a call of
the C library's scalar ``expf``, which LLVM cannot vectorise here (no vector math library):
measured ~100x the cost of the convolution's own store on a 1x1 layer. So ``exp`` is a
polynomial (Cody-Waite range reduction, ``exp(x) = 2**k * exp(r)`` with ``|r| <= ln2/2``, a
degree-7 Taylor polynomial for ``exp(r)``: under 2 ulp in float32) built from plain
arithmetic and bit casts, which LLVM vectorises like any other loop body.

The same emitters serve two kinds of caller: the ``direct`` backend's register-tile store
(:mod:`.direct._simd`) applies them to 16-lane vectors, and Numba kernels call the scalar
intrinsic :func:`finish` inside their loops (LLVM hoists the switch on the activation code
out of the loop and vectorises each case). The codes and parameters are
:meth:`convengine.core.epilogue.Epilogue.kernel_activation`'s.

NaN stays NaN in every activation: comparisons are ordered (NaN compares false, so a clamp
leaves it), and the exponent is taken from the float's bits, never converted from a NaN.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..core.epilogue import (
    GELU_SCALE,
    KERNEL_CLIP,
    KERNEL_GELU,
    KERNEL_HARDSIGMOID,
    KERNEL_HARDSWISH,
    KERNEL_NONE,
    KERNEL_SIGMOID,
    KERNEL_SILU,
)

#: Every code a kernel may receive.
CODES = (KERNEL_NONE, KERNEL_CLIP, KERNEL_SIGMOID, KERNEL_SILU, KERNEL_HARDSIGMOID, KERNEL_HARDSWISH, KERNEL_GELU)

_LOG2E = 1.4426950408889634
#: ln 2 in two parts: ``k * _LN2_HI`` is exact for the ``|k| <= 128`` of float32's range.
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
#: 1.5 * 2**23: adding it rounds a float32 below 2**22 in magnitude to an integer, which then
#: sits in the low mantissa bits (the bit pattern minus the constant's is that integer).
_ROUND_F32 = 12582912.0
#: exp's argument is clamped to keep ``2**k`` a normal float32: exp(88) = 1.65e38, exp(-87) = 1.6e-38.
_EXP_MIN, _EXP_MAX = -87.0, 88.0
#: Below -_SIGMOID_FLOOR the sigmoid is 0 in float32 (true value < 6e-39): exactly 0 there, so
#: that silu(-inf) = -inf * 0 = NaN, as Sigmoid followed by Mul gives.
_SIGMOID_FLOOR = 88.0


def _element(ty):
    return ty.element if isinstance(ty, ir.VectorType) else ty


def _const(ty, value):
    """``value`` as a constant of ``ty`` (a scalar type, or a vector of one: every lane)."""
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [ir.Constant(ty.element, value)] * ty.count)
    return ir.Constant(ty, value)


def _like(builder, ty, scalar):
    """A scalar LLVM value spread to ``ty`` (itself when ``ty`` is not a vector)."""
    if not isinstance(ty, ir.VectorType):
        return scalar
    lanes = builder.insert_element(ir.Constant(ty, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lanes, ir.Constant(ty, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), ty.count), [0] * ty.count))


def _suffix(ty) -> str:
    element = "f32" if isinstance(_element(ty), ir.FloatType) else "f64"
    return f"v{ty.count}{element}" if isinstance(ty, ir.VectorType) else element


def _fma(builder, a, b, c):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(a.type, [a.type] * 3), f"llvm.fma.{_suffix(a.type)}")
    return builder.call(fn, [a, b, c])


def clamp(builder, v, low, high):
    """``min(max(v, low), high)`` with NaN kept (``low``/``high`` of ``v``'s type)."""
    v = builder.select(builder.fcmp_ordered("<", v, low), low, v)
    return builder.select(builder.fcmp_ordered(">", v, high), high, v)


def exp(builder, x):
    """``exp(x)`` of a float32 or float64 value or vector (float64: the ``llvm.exp`` intrinsic)."""
    ty = x.type
    if not isinstance(_element(ty), ir.FloatType):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty]), f"llvm.exp.{_suffix(ty)}")
        return builder.call(fn, [x])
    ity = ir.VectorType(ir.IntType(32), ty.count) if isinstance(ty, ir.VectorType) else ir.IntType(32)
    x = clamp(builder, x, _const(ty, _EXP_MIN), _const(ty, _EXP_MAX))
    shifted = builder.fadd(builder.fmul(x, _const(ty, _LOG2E)), _const(ty, _ROUND_F32))
    k = builder.fsub(shifted, _const(ty, _ROUND_F32))  # round(x / ln 2), as a float
    r = _fma(builder, k, _const(ty, -_LN2_HI), x)
    r = _fma(builder, k, _const(ty, -_LN2_LO), r)
    p = _const(ty, 1.0 / 5040.0)
    for coefficient in (1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0):
        p = _fma(builder, p, r, _const(ty, coefficient))
    k_int = builder.sub(builder.bitcast(shifted, ity), _const(ity, 0x4B400000))  # 0x4B400000: _ROUND_F32's bits
    scale = builder.bitcast(builder.shl(builder.add(k_int, _const(ity, 127)), _const(ity, 23)), ty)  # 2**k
    return builder.fmul(p, scale)


def reciprocal(builder, d):
    """``1 / d``. For 16 float32 lanes on AVX-512: the 14-bit estimate ``vrcp14ps`` and one Newton
    step (within 1 ulp more than a division, here of ``1 + exp(-x)``, never 0 or negative), about
    a fifth of ``vdivps``'s cost, which was most of a fused SiLU's; elsewhere a division."""
    ty = d.type
    if not (isinstance(ty, ir.VectorType) and ty.count == 16 and isinstance(ty.element, ir.FloatType) and _has_avx512()):
        return builder.fdiv(_const(ty, 1.0), d)
    estimate = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty, ir.IntType(16)]),
                                              "llvm.x86.avx512.rcp14.ps.512")
    r = builder.call(estimate, [d, _const(ty, 0.0), ir.Constant(ir.IntType(16), -1)])
    error = _fma(builder, builder.fneg(d), r, _const(ty, 1.0))  # 1 - d*r
    return _fma(builder, r, error, r)


def _has_avx512() -> bool:
    from llvmlite import binding

    return bool(binding.get_host_cpu_features().get("avx512f"))


def sigmoid(builder, v):
    """``1 / (1 + exp(-v))``, exactly 0 below -88 (see :data:`_SIGMOID_FLOOR`)."""
    ty = v.type
    s = reciprocal(builder, builder.fadd(_const(ty, 1.0), exp(builder, builder.fneg(v))))
    return builder.select(builder.fcmp_ordered("<", v, _const(ty, -_SIGMOID_FLOOR)), _const(ty, 0.0), s)


#: float32 ``erf``'s pieces (weighted minimax fits, float64 error below 2e-9): ``x * P(x^2)`` below
#: ``ERF_SMALL``; ``1 - exp(S(|x| - ERF_MID) - x^2)`` up to ``ERF_LARGE``; ``+-1`` beyond, where the
#: float32 ``erf`` rounds to 1. The graph's element-wise GELU (``graph._pointwise_kernels``) uses them too.
ERF_SMALL, ERF_LARGE, ERF_MID = 0.921875, 3.925, 2.4234375
ERF_P = (1.1283791, -0.37612626, 0.11283621, -0.026856443, 0.0051953085, -8.089357e-04, 8.178547e-05)
ERF_S = (-1.5294816, -0.36148176, 0.05867467, -0.01143239, 0.002602196, -2.0004333e-04, 1.9473376e-04)


def _polynomial(builder, x, coefficients):
    """``sum(c_i * x**i)`` by Horner's rule with FMAs."""
    ty = x.type
    p = _const(ty, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        p = _fma(builder, p, x, _const(ty, c))
    return p


def erf(builder, x):
    """``erf(x)`` of a float32 value or vector (within ~2e-7 of the true value; NaN stays NaN), or of a
    float64 scalar (the C library's ``erf``, as Numba's ``math.erf``)."""
    ty = x.type
    if not isinstance(_element(ty), ir.FloatType):
        if isinstance(ty, ir.VectorType):
            raise TypeError("float64 erf on vectors is not emitted")
        return builder.call(cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty]), "erf"), [x])
    fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty]), f"llvm.fabs.{_suffix(ty)}")
    a = builder.call(fabs, [x])
    small = builder.fmul(x, _polynomial(builder, builder.fmul(x, x), ERF_P))
    b = builder.select(builder.fcmp_ordered("<", a, _const(ty, ERF_LARGE)), a, _const(ty, ERF_LARGE))
    q = builder.fsub(_polynomial(builder, builder.fsub(b, _const(ty, ERF_MID)), ERF_S), builder.fmul(b, b))
    large = builder.fsub(_const(ty, 1.0), exp(builder, q))
    signed = builder.select(builder.fcmp_ordered(">", x, _const(ty, 0.0)), large, builder.fneg(large))
    y = builder.select(builder.fcmp_ordered("<", a, _const(ty, ERF_SMALL)), small, signed)
    return builder.select(builder.fcmp_ordered("==", x, x), y, x)


def gelu(builder, v):
    """``((erf(v / sqrt(2)) + 1) * v) * 0.5``, in the exported graph's order of operations."""
    ty = v.type
    e = erf(builder, builder.fmul(v, _const(ty, GELU_SCALE)))
    return builder.fmul(builder.fmul(builder.fadd(e, _const(ty, 1.0)), v), _const(ty, 0.5))


def activate(builder, v, code: int, p0, p1):
    """The activation ``code`` (a ``KERNEL_*`` constant) applied to ``v``; ``p0``, ``p1`` of ``v``'s type."""
    ty = v.type
    if code == KERNEL_NONE:
        return v
    if code == KERNEL_CLIP:
        return clamp(builder, v, p0, p1)
    if code == KERNEL_SIGMOID:
        return sigmoid(builder, v)
    if code == KERNEL_SILU:
        return builder.fmul(v, sigmoid(builder, v))
    if code == KERNEL_GELU:
        return gelu(builder, v)
    hard = clamp(builder, _fma(builder, v, p0, p1), _const(ty, 0.0), _const(ty, 1.0))
    if code == KERNEL_HARDSIGMOID:
        return hard
    if code == KERNEL_HARDSWISH:
        return builder.fmul(v, hard)
    raise ValueError(f"unknown activation code {code}")


#: The activations :func:`for_each_activation` emits a loop of their own for: none, and clip (ReLU, ReLU6), the
#: common ones; the others share one loop that switches per value (they cost more than the switch).
UNSWITCHED = (KERNEL_NONE, KERNEL_CLIP)


def for_each_activation(builder, code, emit) -> None:
    """Emit ``emit(c)`` for each ``c`` of :data:`UNSWITCHED`, and ``emit(None)`` (the activation then to
    be chosen per value, :func:`activate_any`) for the other codes, under one switch on the run-time
    ``code`` (an integer LLVM value); ``emit`` may add blocks and leaves the builder where its code ends.

    Why: a loop over a tile's stored vectors that calls :func:`activate_any` switches on the code
    once per vector, an indirect jump and a merge each time; emitting the loop once per common
    code, the switch taken once before it, leaves each loop its activation's few instructions.
    A loop for every code grew ``direct``'s 1x1 kernel's compile time by 60% (8.7 -> 14.1 s); for
    these two, with the residual's test hoisted too, 35% (11.8 s; ``tiled_conv`` 14.9 -> 16.0 s).
    """
    done = builder.append_basic_block("acts.done")
    cases = {c: builder.append_basic_block(f"acts.{c}") for c in UNSWITCHED}
    other = builder.append_basic_block("acts.other")
    switch = builder.switch(code, other)
    for c, block in cases.items():
        switch.add_case(ir.Constant(code.type, c), block)
    for c, block in list(cases.items()) + [(None, other)]:
        builder.position_at_end(block)
        emit(c)
        builder.branch(done)
    builder.position_at_end(done)


def activate_any(builder, v, code, p0, p1):
    """:func:`activate` for a run-time ``code`` (an integer LLVM value): a switch over :data:`CODES`.

    An unknown code leaves ``v`` as it is (kernels are given codes by ``kernel_activation``).
    """
    done = builder.append_basic_block("act.done")
    switch = builder.switch(code, done)
    results = [(v, builder.block)]
    for c in CODES:
        case = builder.append_basic_block(f"act.{c}")
        switch.add_case(ir.Constant(code.type, c), case)
        builder.position_at_end(case)
        results.append((activate(builder, v, c, p0, p1), builder.block))
        builder.branch(done)
    builder.position_at_end(done)
    merged = builder.phi(v.type)
    for value, block in results:
        merged.add_incoming(value, block)
    return merged


@intrinsic
def finish(typingctx, v, code, p0, p1):
    """``activation(v)`` for a float32 or float64 scalar ``v``, activation ``code`` with parameters ``p0``, ``p1``.

    For Numba loops: the IR is inlined at the call, and with ``code`` fixed for the loop LLVM
    unswitches the loop on it and vectorises each case.
    """
    if not (isinstance(v, types.Float) and isinstance(code, types.Integer)
            and isinstance(p0, (types.Float, types.Integer)) and isinstance(p1, (types.Float, types.Integer))):
        return None
    sig = v(v, code, p0, p1)

    def codegen(context, builder, sig, args):
        value, code_value = args[0], context.cast(builder, args[1], sig.args[1], types.int64)
        q0, q1 = (context.cast(builder, args[i], sig.args[i], sig.args[0]) for i in (2, 3))
        return activate_any(builder, value, code_value, q0, q1)

    return sig, codegen
