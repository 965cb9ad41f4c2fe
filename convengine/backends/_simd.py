"""A register tile of float32 vectors for Numba kernels, written as LLVM IR intrinsics.

Why: a direct convolution reaches the FMA units' rate only when a block of outputs (here
up to :data:`MAX_WIDTH` pixels x :data:`LANES` output channels) stays in vector registers
while the whole reduction streams past it, each weight vector reused for every pixel and
each input value broadcast to every channel. Numba has no vector type and LLVM does not
keep a heap array of accumulators in registers, so :class:`Tile` is an LLVM value
``[MAX_WIDTH x <LANES x float>]`` and :func:`tile_fma_rows` emits the reduction loops
over it: the accumulators live in registers as loop phis.

``LANES`` is 16 floats, one AVX-512 register. LLVM splits wider-than-native vectors, so the
same code runs (more slowly, with spills) on AVX2 or NEON; callers choose a narrower width
there (:func:`preferred_width`).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16
#: Pixels per tile: 14 accumulators + weights + broadcasts fit AVX-512's 32 registers.
MAX_WIDTH = 14

_FLOAT = ir.FloatType()
_VEC = ir.VectorType(_FLOAT, LANES)
_TILE = ir.ArrayType(_VEC, MAX_WIDTH)
_I64 = ir.IntType(64)


class Tile(types.Type):
    """MAX_WIDTH pixels x LANES channels of float32 accumulators (an SSA value, not memory)."""

    def __init__(self):
        super().__init__(name=f"Tile[{MAX_WIDTH}x{LANES}xf32]")


tile_type = Tile()


@register_model(Tile)
class _TileModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _TILE)


def preferred_width() -> int:
    """Widest tile that fits the vector registers Numba compiles for (AVX-512 has 32, AVX2 16)."""
    from llvmlite import binding

    return MAX_WIDTH if binding.get_host_cpu_features().get("avx512f") else 6


def _is_f32_array(t) -> bool:
    return isinstance(t, types.Array) and t.dtype == types.float32 and t.ndim == 1 and t.layout == "C"


def _data(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr).data


def _as_i64(context, builder, value, ty):
    return context.cast(builder, value, ty, types.int64)


def _counted_loop(builder, n, carried, body):
    """Emit ``for i < n: carried = body(i, carried)`` with ``carried`` as phis; return the final values."""
    pre = builder.block
    head = builder.append_basic_block("tile.head")
    block = builder.append_basic_block("tile.body")
    tail = builder.append_basic_block("tile.tail")
    builder.branch(head)
    builder.position_at_end(head)
    i = builder.phi(_I64)
    phis = [builder.phi(v.type) for v in carried]
    i.add_incoming(ir.Constant(_I64, 0), pre)
    for phi, value in zip(phis, carried):
        phi.add_incoming(value, pre)
    builder.cbranch(builder.icmp_signed("<", i, n), block, tail)
    builder.position_at_end(block)
    updated = body(i, phis)
    end = builder.block  # body may have added blocks
    i.add_incoming(builder.add(i, ir.Constant(_I64, 1)), end)
    for phi, value in zip(phis, updated):
        phi.add_incoming(value, end)
    builder.branch(head)
    builder.position_at_end(tail)
    return phis


def _splat(builder, scalar):
    lanes = builder.insert_element(ir.Constant(_VEC, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lanes, ir.Constant(_VEC, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


@intrinsic
def tile_zero(typingctx):
    """A tile of zeros."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_TILE, [ir.Constant(_VEC, [0.0] * LANES)] * MAX_WIDTH)

    return tile_type(), codegen


@intrinsic
def tile_fma_rows(typingctx, tile, x, x_start, x_row_step, x_step, w, w_start, rows, count, width):
    """For r < rows, k < count, p < width:
    ``tile[p] += x[x_start + r*x_row_step + k + p*x_step] * w[w_start + 16*(r*count + k) : +16]``.

    ``rows`` contiguous runs of the reduction (one per kernel row): ``x`` holds the inputs of
    pixel ``p`` at stride ``x_step``, ``w`` one vector of LANES output channels per step.
    Pixels at or beyond ``width`` are left untouched. No bounds checks: the caller
    guarantees them. The loops are emitted here, not in Numba, because every call passes
    the tile through memory (about 150 cycles measured), so a call must cover many steps.
    """
    if not (isinstance(tile, Tile) and _is_f32_array(x) and _is_f32_array(w)):
        return None
    ints = (x_start, x_row_step, x_step, w_start, rows, count, width)
    if not all(isinstance(t, types.Integer) for t in ints):
        return None
    sig = tile_type(tile, x, x_start, x_row_step, x_step, w, w_start, rows, count, width)

    def codegen(context, builder, sig, args):
        acc, xa, wa = args[0], args[1], args[5]
        x_start, x_row_step, x_step, w_start, rows, count, width = (
            _as_i64(context, builder, args[i], sig.args[i]) for i in (2, 3, 4, 6, 7, 8, 9))
        xp = _data(context, builder, sig.args[1], xa)
        wp = _data(context, builder, sig.args[5], wa)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), f"llvm.fma.v{LANES}f32")
        lanes = ir.Constant(_I64, LANES)

        def row(r, regs):
            x_row = builder.add(x_start, builder.mul(r, x_row_step))
            w_row = builder.add(w_start, builder.mul(builder.mul(r, count), lanes))

            def step(k, regs):
                wv = builder.load(builder.bitcast(builder.gep(wp, [builder.add(w_row, builder.mul(k, lanes))]),
                                                  _VEC.as_pointer()), align=4)
                x_at = builder.add(x_row, k)
                return [builder.call(fma, [_splat(builder, builder.load(builder.gep(
                            xp, [builder.add(x_at, builder.mul(x_step, ir.Constant(_I64, p)))]))), wv, reg])
                        for p, reg in enumerate(regs)]

            return _counted_loop(builder, count, regs, step)

        done = builder.append_basic_block("tile.done")
        switch = builder.switch(width, done)
        results = [(acc, builder.block)]
        for n in range(1, MAX_WIDTH + 1):  # one loop nest per tile width, its accumulators in registers
            case = builder.append_basic_block(f"tile.w{n}")
            switch.add_case(ir.Constant(_I64, n), case)
            builder.position_at_end(case)
            regs = _counted_loop(builder, rows, [builder.extract_value(acc, p) for p in range(n)], row)
            out = acc
            for p, reg in enumerate(regs):
                out = builder.insert_value(out, reg, p)
            results.append((out, builder.block))
            builder.branch(done)
        builder.position_at_end(done)
        merged = builder.phi(_TILE)
        for value, block in results:
            merged.add_incoming(value, block)
        return merged

    return sig, codegen


@intrinsic
def tile_add_to(typingctx, tile, buf, overwrite):
    """``buf[16p : 16p + 16] (+)= tile[p]`` for every pixel p (``buf`` holds MAX_WIDTH * LANES floats).

    Summing partial tiles in memory keeps each register sum short: the rounding error of a
    long reduction (4608 terms on ResNet's 512-channel layers) then stays within float32's
    exact-class bound, as blocked BLAS products do.
    """
    if not (isinstance(tile, Tile) and _is_f32_array(buf) and isinstance(overwrite, types.Boolean)):
        return None

    def codegen(context, builder, sig, args):
        acc, ba, overwrite = args
        bp = _data(context, builder, sig.args[1], ba)
        for p in range(MAX_WIDTH):
            slot = builder.bitcast(builder.gep(bp, [ir.Constant(_I64, p * LANES)]), _VEC.as_pointer())
            value = builder.extract_value(acc, p)
            summed = builder.fadd(builder.load(slot, align=4), value)
            builder.store(builder.select(overwrite, value, summed), slot, align=4)
        return context.get_dummy_value()

    return types.void(tile, buf, overwrite), codegen
