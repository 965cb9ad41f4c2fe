"""A register tile of float32 vectors for Numba kernels, written as LLVM IR intrinsics.

Why: a direct convolution reaches the FMA units' rate only when a block of outputs (here
up to :data:`MAX_WIDTH` pixels x :data:`MAX_VECTORS` vectors of :data:`LANES` output
channels) stays in vector registers while the whole reduction streams past it, each weight
vector reused for every pixel and each input value broadcast to every vector of channels.
Numba has no vector type and LLVM does not keep a heap array of accumulators in registers,
so :class:`Tile` is an LLVM value ``[vectors * MAX_WIDTH x <LANES x float>]`` and
:func:`tile_conv` emits the reduction loops over it: the accumulators live in registers as
loop phis.

``LANES`` is 16 floats, one AVX-512 register. LLVM splits wider-than-native vectors, so the
same code runs (more slowly, with spills) on AVX2 or NEON; callers choose a narrower width
there (:func:`preferred_width`).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .._activations import activate, activate_any, for_each_activation
from ._tiles import LANES, MAX_VECTORS, MAX_WIDTH, PAIRED_WIDTH, TILE_WIDTHS  # the tile's shape (shared with the cost model)

#: Products one register sum takes before it is added to the tile's running total (whole kernel
#: rows at a time, at least one row): float32 rounding of long reductions stays within the
#: exact class's bound, as in blocked BLAS products (and :data:`POINT_CHUNK`).
SUM_STEPS = 256
#: Floats per cache line: what weight prefetches step by.
LINE_FLOATS = 16

#: Added to :func:`tile_conv`'s shape key for the paired-row nests.
_PAIRED_KEY = 1 << 16
#: ... times 1 + i for the nests whose pixels are :data:`FIXED_STEPS`\ ``[i]`` floats apart.
_FIXED_KEY = 1 << 17
#: The pixel steps that the widest tiles get nests of their own for: strides 1 and 2 on the
#: blocked input (16 channels a pixel), and the RGB stems' strides 2 and 4 (3 channels a pixel). A
#: step known when the nest is compiled puts the 14 pixels at immediate offsets from one
#: pointer; a run-time step needs 14 pointers, more than the general registers, and the inner
#: loop reloaded them from the stack (71 instructions a step against 54, later 104 against 54
#: at 13 pixels). 3x3 layers hot, one thread: 256 channels at 14x14 8-15% faster; whole models
#: 3-10%; stride 2's nests ResNet-50 another 0-5% (hot alone, no faster: in the model); the
#: stems' step (3x3 and 7x7 at stride 2 on 224x224 RGB, two threads) 8-14%; AlexNet's 11x11
#: stride-4 stem in the model (per node, batch 1) 0.60 -> 0.52 ms, ONNX Runtime's 0.43-0.45.
FIXED_STEPS = (16, 32, 6, 12)
#: The tile widths with fixed-step nests: 14, and 13 (AlexNet's and SqueezeNet's 13x13 layers,
#: Inception's 17-pixel rows as 13 + 4: those layers 6-11% faster, Inception-v3 1.8%, AlexNet 3%
#: in the model; measured no faster in an earlier kernel) and 8 (Inception's 8x8 layers 4-7%,
#: the model 1.2%), for about 1.5 s of compile time each; not 12 (the package's AlexNet's 12x12
#: layers: 2.93-3.00 ms with such nests, 2.86-3.14 without, for 3 s more compile time).
FIXED_WIDTHS = (MAX_WIDTH, 13, 8)

_FLOAT = ir.FloatType()
_VEC = ir.VectorType(_FLOAT, LANES)
_I64 = ir.IntType(64)


class Tile(types.Type):
    """``vectors`` x LANES channels x MAX_WIDTH pixels of float32 accumulators (an SSA value, not
    memory); vector ``v``'s pixel ``p`` is element ``v * MAX_WIDTH + p``."""

    def __init__(self, vectors: int = 1):
        self.vectors = vectors
        super().__init__(name=f"Tile[{vectors}x{LANES}x{MAX_WIDTH}xf32]")


@register_model(Tile)
class _TileModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.ArrayType(_VEC, fe_type.vectors * MAX_WIDTH))


def preferred_width() -> int:
    """Widest tile that fits the vector registers Numba compiles for: 14 of AVX-512's 32, and 7
    (each 16-lane vector two of AVX2's 16 registers) elsewhere."""
    from llvmlite import binding

    return MAX_WIDTH if binding.get_host_cpu_features().get("avx512f") else 7


def preferred_vectors() -> int:
    """Most output-channel vectors per tile for the vector registers Numba compiles for:
    :data:`MAX_VECTORS` on AVX-512 (2 x 14 accumulators), 1 elsewhere (AVX2's 16 registers
    hold one vector of 7 pixels)."""
    from llvmlite import binding

    return MAX_VECTORS if binding.get_host_cpu_features().get("avx512f") else 1


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
    """``scalar`` (a float, an int or an i1 flag) in all LANES lanes."""
    vec = ir.VectorType(scalar.type, LANES)
    lanes = builder.insert_element(ir.Constant(vec, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lanes, ir.Constant(vec, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


def _lanes_below(builder, n, first=0):
    """The mask of lanes ``i`` with ``first + i < n`` (``n`` an i64): the lanes a run of ``n`` values fills."""
    i32 = ir.IntType(32)
    return builder.icmp_signed("<", ir.Constant(ir.VectorType(i32, LANES), [first + i for i in range(LANES)]),
                               _splat(builder, builder.trunc(n, i32)))


def _activate_rows(builder, yp, y_start, row_step, n_rows, first, last, act, p0, p1):
    """Apply the activation ``act`` in place to ``y[y_start + r*row_step + p]``, ``r < n_rows``, ``first <= p < last``.

    A second pass over what a store just wrote (still in the first-level cache; skipped when
    ``act`` is none): one copy of the activations' code per kernel, where applying them in
    each unrolled store had one per stored vector (pointwise_conv's compile time: 1.7 s -> 4.5 s).
    """
    i32 = ir.IntType(32)
    load, store = _masked_load_store(builder)
    lanes = ir.Constant(ir.VectorType(i32, LANES), list(range(LANES)))
    low, high = _splat(builder, builder.trunc(first, i32)), _splat(builder, builder.trunc(last, i32))
    n_vectors = builder.sdiv(builder.add(last, ir.Constant(_I64, LANES - 1)), ir.Constant(_I64, LANES))
    with builder.if_then(builder.icmp_signed("!=", act, ir.Constant(_I64, 0))):
        def row(r, _):
            base = builder.add(y_start, builder.mul(r, row_step))

            def vector(v, _):
                start = builder.mul(v, ir.Constant(_I64, LANES))
                index = builder.add(lanes, _splat(builder, builder.trunc(start, i32)))
                mask = builder.and_(builder.icmp_signed(">=", index, low), builder.icmp_signed("<", index, high))
                ptr = builder.bitcast(builder.gep(yp, [builder.add(base, start)]), _VEC.as_pointer())
                value = builder.call(load, [ptr, ir.Constant(i32, 4), mask, ir.Constant(_VEC, [0.0] * LANES)])
                builder.call(store, [activate_any(builder, value, act, p0, p1), ptr, ir.Constant(i32, 4), mask])
                return []

            _counted_loop(builder, n_vectors, [], vector)
            return []

        _counted_loop(builder, n_rows, [], row)


def _activated(builder, v, code, act, p0, p1):
    """``v`` activated by ``code`` (:func:`for_each_activation`'s), or by the run-time ``act`` where ``code`` is ``None``."""
    return activate_any(builder, v, act, p0, p1) if code is None else activate(builder, v, code, p0, p1)


def _activation_args(context, builder, sig, args, at):
    """The activation code (i64) and its two parameters spread over LANES float32 lanes, from ``args[at:at + 3]``."""
    act = _as_i64(context, builder, args[at], sig.args[at])
    p0, p1 = (_splat(builder, context.cast(builder, args[i], sig.args[i], types.float32)) for i in (at + 1, at + 2))
    return act, p0, p1


def _zero_tile(vectors: int):
    tile = Tile(vectors)

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.ArrayType(_VEC, vectors * MAX_WIDTH), [ir.Constant(_VEC, [0.0] * LANES)] * (vectors * MAX_WIDTH))

    return tile(), codegen


@intrinsic
def tile_zero(typingctx):
    """A one-vector tile of zeros (16 channels)."""
    return _zero_tile(1)


@intrinsic
def wide_tile_zero(typingctx):
    """A tile of zeros of :data:`MAX_VECTORS` vectors (:func:`tile_conv` then computes 1 to MAX_VECTORS of them)."""
    return _zero_tile(MAX_VECTORS)


#: Floats one saved tile of :data:`MAX_VECTORS` vectors takes (:func:`tile_save`, :func:`tile_load`).
TILE_FLOATS = MAX_VECTORS * MAX_WIDTH * LANES


@intrinsic
def tile_save(typingctx, tile, buf, start):
    """Write the tile's accumulators, as they are, to ``buf[start:start + TILE_FLOATS]`` (a partial sum put aside)."""
    if not (isinstance(tile, Tile) and tile.vectors == MAX_VECTORS and _is_f32_array(buf) and isinstance(start, types.Integer)):
        return None
    sig = types.void(tile, buf, start)

    def codegen(context, builder, sig, args):
        base = builder.gep(_data(context, builder, sig.args[1], args[1]), [_as_i64(context, builder, args[2], sig.args[2])])
        vectors = builder.bitcast(base, _VEC.as_pointer())
        for i in range(MAX_VECTORS * MAX_WIDTH):
            builder.store(builder.extract_value(args[0], i), builder.gep(vectors, [ir.Constant(_I64, i)])).align = 4
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def tile_load(typingctx, buf, start):
    """A tile of :data:`MAX_VECTORS` vectors read back from what :func:`tile_save` wrote at ``buf[start]``."""
    if not (_is_f32_array(buf) and isinstance(start, types.Integer)):
        return None
    sig = Tile(MAX_VECTORS)(buf, start)

    def codegen(context, builder, sig, args):
        base = builder.gep(_data(context, builder, sig.args[0], args[0]), [_as_i64(context, builder, args[1], sig.args[1])])
        vectors = builder.bitcast(base, _VEC.as_pointer())
        tile = ir.Constant(ir.ArrayType(_VEC, MAX_VECTORS * MAX_WIDTH), ir.Undefined)
        for i in range(MAX_VECTORS * MAX_WIDTH):
            value = builder.load(builder.gep(vectors, [ir.Constant(_I64, i)]))
            value.align = 4
            tile = builder.insert_value(tile, value, i)
        return tile

    return sig, codegen


#: Reduction steps ahead that :func:`tile_conv` prefetches weights read from rows far apart (a
#: ``w_step``: a channels-last matrix read in place) into the first-level cache. Hot, two
#: threads, batch 1, ConvNeXt-T's Linear layers on rows padded off the cache-set aliasing
#: (:mod:`convengine.runtime.strides`): 768 -> 3072 at 7x7 1.24 ms without against 1.00
#: packed; 4 steps 1.02-1.03, 8 1.00-1.03, 12 0.98-1.01, 16 1.00-1.03.
STRIDED_WEIGHTS_AHEAD = 12
#: ...and, further on, into the second-level cache: inside a model those rows come from memory
#: (the model's other layers ran since), at a latency 12 steps do not cover. In-process A/B on
#: ConvNeXt-T at batch 1, both orders: 0.963x and 0.960x the whole model (its 3072 -> 768 layers at
#: 7x7 1.60 -> 1.32-1.39 ms, the 1536 -> 384 ones at 14x14 ~15% faster; the 96 <-> 384 ones at 56x56,
#: whose weights stay cached, 4-6% slower). One line a step instead of the step's two: 0.992x.
STRIDED_WEIGHTS_FAR = 64


@intrinsic
def tile_conv(typingctx, tile, x, x_start, x_block_step, x_row_step, x_k_step, x_step, w, w_start, w_block_step,
              blocks, rows, count, width, vectors, prefetch, w_prefetch, w_lines, x_jump, w_step, fixed_steps):
    """Return ``tile`` plus, in its vector ``v`` < vectors at pixel ``p`` < width, the sum over
    b < blocks, r < rows, k < count of ``x[x_start + b*x_block_step + r*x_row_step + k*x_k_step + p*x_step]
    * w[w_start + b*w_block_step + (r*count + k)*w_step + 16*v : +16]``, ``w_step`` ``16*vectors``
    where it is ``None`` (weights packed step after step) and the floats between two steps' weights
    otherwise (a channels-last ``(C, O)`` matrix read in place: its row stride; each step then
    prefetches the weights :data:`STRIDED_WEIGHTS_AHEAD` steps on, and :data:`STRIDED_WEIGHTS_FAR` into L2).

    A convolution's whole reduction for one output tile: ``blocks`` channel blocks of
    ``rows`` kernel rows, each one contiguous run of ``count`` (kw, channel) steps; pixel
    ``p``'s inputs are ``x_step`` apart (the steps of a run ``x_k_step``: 1 in the blocked
    layout, a plane in NCHW), and each step reads ``vectors`` adjacent vectors of LANES
    output channels' weights, so that each broadcast input value feeds ``vectors`` FMAs (one
    load per FMA at one vector, ~0.6 at two). Whole rows, up to :data:`SUM_STEPS` products
    (at least one row), are summed in their own registers and then added to the running
    total, which keeps float32 rounding of long reductions (4608 products on ResNet's
    512-channel layers) within the exact class's bound, as blocked BLAS products do; a 3x3
    layer's 16-channel block (3 rows of 48) is one such sum, the RGB stem's 7 rows of 21
    another. ``x_jump``: pixels from :data:`PAIRED_WIDTH` on read ``x_jump`` floats further (two
    7-pixel output rows in one 14-pixel tile, a loop nest of its own: see ``_kernels.tiled_conv``;
    0 otherwise, and only with ``width`` 14).
    ``width`` must be one of :data:`TILE_WIDTHS` and ``vectors`` at most the
    tile's (any other leaves the tile untouched); the other pixels and vectors are left
    untouched. ``prefetch``: ``None``, or a distance in floats: each step then also prefetches
    the input that far past its own (a later tile's, where many planes are read at once and
    the hardware prefetcher does not follow them all). ``w_prefetch`` (``None``: no such code)
    and ``w_lines``: reduction row ``i`` (``b * rows + r``) also prefetches ``w_lines`` (at most
    ``count``) cache lines of ``w`` into the second-level cache, from float
    ``w_prefetch + i * w_lines * LINE_FLOATS`` on, one per step (the steps past them, and all
    with 0 lines, prefetch the weights they have just read: a first-level hit, no traffic);
    ``w_prefetch`` a pair of such starts: two lines a step, one from each (weights two lines a
    step, as ``tiled_winograd``'s positions read them).
    A burst of them before the row's steps, a loop in every row of every nest, measured
    Inception-v3 2-3% faster but grew the compiled kernel from 0.5 to 1.3 MB, 11 MiB more
    resident memory in every model; as a call, the accumulators were spilled around it
    (ResNet-50 10% slower).
    Why: a layer's weights are cold when it starts (the model's other layers ran since), and
    the first tile of an output block reads that block's weights at the rate memory gives
    them, FMA units idle; a kernel that prefetches the *next* block's weights over this
    block's rows overlaps the two (ResNet-50 6-7% faster; its 512-channel 3x3 layers' first
    call -20%). No bounds checks: the caller guarantees them (a prefetch does not fault). All
    loops are emitted here, in one call per tile, because a call passes the tile through
    memory (about 150 cycles measured). ``fixed_steps`` (``None``: no such nests): a run-time
    ``x_step`` that is one of :data:`FIXED_STEPS` runs nests of its own at the :data:`FIXED_WIDTHS`
    (the step a constant there; a call site whose steps are never those leaves them out: seconds
    of compile time each); a step the caller passes as a constant is folded into every nest anyway.
    """
    if not (isinstance(tile, Tile) and _is_f32_array(x) and _is_f32_array(w)):
        return None
    ints = (x_start, x_block_step, x_row_step, x_k_step, x_step, w_start, w_block_step, blocks, rows, count, width, vectors,
            w_lines, x_jump)
    two_ahead = isinstance(w_prefetch, types.UniTuple) and w_prefetch.count == 2 and isinstance(w_prefetch.dtype, types.Integer)
    if not (all(isinstance(t, types.Integer) for t in ints)
            and all(isinstance(t, (types.Integer, types.NoneType)) for t in (prefetch, w_step, fixed_steps))
            and (two_ahead or isinstance(w_prefetch, (types.Integer, types.NoneType)))):
        return None
    prefetching = isinstance(prefetch, types.Integer)
    weights_ahead = two_ahead or isinstance(w_prefetch, types.Integer)
    strided_weights = isinstance(w_step, types.Integer)
    sig = tile(tile, x, x_start, x_block_step, x_row_step, x_k_step, x_step, w, w_start, w_block_step, blocks, rows,
               count, width, vectors, prefetch, w_prefetch, w_lines, x_jump, w_step, fixed_steps)
    fixing = isinstance(fixed_steps, types.Integer)

    def codegen(context, builder, sig, args):
        acc, xa, wa = args[0], args[1], args[7]
        (x_start, x_block_step, x_row_step, x_k_step, x_step, w_start, w_block_step, blocks, rows, count, width,
         vectors) = (_as_i64(context, builder, args[i], sig.args[i]) for i in (2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14))
        prefetch = _as_i64(context, builder, args[15], sig.args[15]) if prefetching else None
        w_prefetch = w_prefetch2 = None
        if two_ahead:
            w_prefetch, w_prefetch2 = (_as_i64(context, builder, builder.extract_value(args[16], i), sig.args[16].dtype)
                                       for i in (0, 1))
        elif weights_ahead:
            w_prefetch = _as_i64(context, builder, args[16], sig.args[16])
        w_lines, x_jump = (_as_i64(context, builder, args[i], sig.args[i]) for i in (17, 18))
        w_steps = _as_i64(context, builder, args[19], sig.args[19]) if strided_weights else None
        xp = _data(context, builder, sig.args[1], xa)
        wp = _data(context, builder, sig.args[7], wa)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), f"llvm.fma.v{LANES}f32")
        zero = ir.Constant(_VEC, [0.0] * LANES)

        one = ir.Constant(_I64, 1)
        # rows summed in the same registers: as many as keep a sum within SUM_STEPS products (at least one)
        per_sum = builder.sdiv(ir.Constant(_I64, SUM_STEPS), builder.select(builder.icmp_signed("<", count, one), one, count))
        per_sum = builder.select(builder.icmp_signed("<", per_sum, one), one, per_sum)
        groups = builder.sdiv(builder.sub(builder.add(rows, per_sum), one), per_sum)

        def nest(n, v, paired, fixed):  # n pixels x v vectors; accumulators in vector-major order
            w_step = ir.Constant(_I64, LANES * v) if w_steps is None else w_steps  # from one step's weights to the next
            # pixel p's input, from the step's own: x_step apart, and x_jump further from pixel PAIRED_WIDTH on
            step = ir.Constant(_I64, fixed) if fixed else x_step
            x_pixel = [builder.mul(step, ir.Constant(_I64, p)) if p < PAIRED_WIDTH or not paired
                       else builder.add(builder.mul(step, ir.Constant(_I64, p)), x_jump) for p in range(n)]

            def block(b, totals):
                x_block = builder.add(x_start, builder.mul(b, x_block_step))
                w_block = builder.add(w_start, builder.mul(b, w_block_step))
                return _counted_loop(builder, groups, totals, lambda g, totals: group(b, x_block, w_block, g, totals))

            def group(b, x_block, w_block, g, totals):
                first = builder.mul(g, per_sum)
                left = builder.sub(rows, first)
                n_rows = builder.select(builder.icmp_signed("<", left, per_sum), left, per_sum)

                def row(r, sums):
                    r = builder.add(first, r)
                    # reduction row b * rows + r's share of the weights to prefetch: w_lines lines from pf_row
                    pf_row = pf_row2 = None
                    if w_prefetch is not None:
                        share = builder.mul(builder.mul(builder.add(builder.mul(b, rows), r), w_lines),
                                            ir.Constant(_I64, LINE_FLOATS))
                        pf_row = builder.add(w_prefetch, share)
                        if w_prefetch2 is not None:
                            pf_row2 = builder.add(w_prefetch2, share)
                    x_row = builder.add(x_block, builder.mul(r, x_row_step))
                    w_row = builder.add(w_block, builder.mul(builder.mul(r, count), w_step))

                    def step(k, regs):
                        w_at = builder.add(w_row, builder.mul(k, w_step))
                        wvs = [builder.load(builder.bitcast(builder.gep(wp, [builder.add(w_at, ir.Constant(_I64, LANES * j))]),
                                                            _VEC.as_pointer()), align=4) for j in range(v)]
                        x_at = builder.add(x_row, builder.mul(k, x_k_step))
                        # step k prefetches line k of the row's share; the steps past it, the weights they
                        # have just read (an L1 hit, dropped at once: no branch in this loop, no traffic)
                        if pf_row is not None:
                            pf_at = builder.select(builder.icmp_signed("<", k, w_lines),
                                                   builder.add(pf_row, builder.mul(k, ir.Constant(_I64, LINE_FLOATS))), w_at)
                            _prefetch(builder, wp, pf_at, False, 2)
                            if pf_row2 is not None:
                                pf_at = builder.select(builder.icmp_signed("<", k, w_lines),
                                                       builder.add(pf_row2, builder.mul(k, ir.Constant(_I64, LINE_FLOATS))), w_at)
                                _prefetch(builder, wp, pf_at, False, 2)
                        if w_steps is not None:  # rows far apart: the hardware prefetchers do not follow them
                            for steps, locality in ((STRIDED_WEIGHTS_AHEAD, 3), (STRIDED_WEIGHTS_FAR, 2)):  # L1, L2
                                ahead = builder.add(w_at, builder.mul(w_steps, ir.Constant(_I64, steps)))
                                for j in range(v):
                                    _prefetch(builder, wp, builder.add(ahead, ir.Constant(_I64, LANES * j)), False,
                                              locality)
                        if prefetching:  # this step's input, ``prefetch`` floats on: a later tile's
                            _prefetch(builder, xp, builder.add(x_at, prefetch), write=False)
                        out = list(regs)
                        for p in range(n):
                            xv = _splat(builder, builder.load(builder.gep(xp, [builder.add(x_at, x_pixel[p])])))
                            for j in range(v):
                                out[j * n + p] = builder.call(fma, [xv, wvs[j], regs[j * n + p]])
                        return out

                    return _counted_loop(builder, count, sums, step)

                sums = _counted_loop(builder, n_rows, [zero] * (n * v), row)
                return [builder.fadd(total, s) for total, s in zip(totals, sums)]

            return block

        done = builder.append_basic_block("tile.done")
        # two rows in one tile (x_jump != 0) run a loop nest of their own: the others' addresses stay as they were
        paired_key = builder.select(builder.icmp_signed("!=", x_jump, ir.Constant(_I64, 0)),
                                    ir.Constant(_I64, _PAIRED_KEY), ir.Constant(_I64, 0))
        shape = builder.add(builder.add(builder.mul(vectors, ir.Constant(_I64, 256)), width), paired_key)
        # a step the caller passes as a constant is folded into every nest already: no nests of their own
        steps = list(enumerate(FIXED_STEPS, 1)) if fixing and not isinstance(x_step, ir.Constant) else []  # (key multiple, step)
        if steps:  # a fixed step's key only at the widths that have its nest: the others run the general one
            fixed_width = builder.icmp_signed("==", width, ir.Constant(_I64, FIXED_WIDTHS[0]))
            for w in FIXED_WIDTHS[1:]:
                fixed_width = builder.or_(fixed_width, builder.icmp_signed("==", width, ir.Constant(_I64, w)))
            for i, fixed in steps:
                hit = builder.and_(fixed_width, builder.icmp_signed("==", x_step, ir.Constant(_I64, fixed)))
                shape = builder.add(shape, builder.select(hit, ir.Constant(_I64, _FIXED_KEY * i), ir.Constant(_I64, 0)))
        switch = builder.switch(shape, done)
        results = [(acc, builder.block)]
        for v in range(1, sig.args[0].vectors + 1):
            for n in TILE_WIDTHS:  # one loop nest per compiled shape, its accumulators in registers
                for paired in (False, True) if n == 2 * PAIRED_WIDTH else (False,):
                    key = 256 * v + n + (_PAIRED_KEY if paired else 0)
                    index = [j * MAX_WIDTH + p for j in range(v) for p in range(n)]  # the nest's accumulators
                    for i, fixed in [(0, 0)] + (steps if n in FIXED_WIDTHS else []):
                        case = builder.append_basic_block(f"tile.v{v}w{n}" + ("paired" if paired else "")
                                                          + (f"step{fixed}" if fixed else ""))
                        switch.add_case(ir.Constant(_I64, key + _FIXED_KEY * i), case)
                        builder.position_at_end(case)
                        totals = _counted_loop(builder, blocks, [builder.extract_value(acc, i) for i in index],
                                               nest(n, v, paired, fixed))
                        out = acc
                        for at, total in zip(index, totals):
                            out = builder.insert_value(out, total, at)
                        results.append((out, builder.block))
                        builder.branch(done)
        builder.position_at_end(done)
        merged = builder.phi(acc.type)
        for value, block in results:
            merged.add_incoming(value, block)
        return merged

    return sig, codegen


#: Floats past each channel row it stores that :func:`tile_store_nchw` prefetches for writing:
#: the next tile's part of the row (14 pixels on). A tile writes one short run into each of
#: 16-32 planes, more streams than the hardware follows, and each store that misses holds up
#: the ones after it. Hot loop, one thread, CPU time, three alternating runs: 16 -> 96 1x1 at
#: 112x112 0.638 -> 0.600 ms, 64 -> 256 1x1 at 56x56 0.925 -> 0.892, 256 -> 64 0.918 -> 0.887,
#: 3x3 layers unchanged.
STORE_PREFETCH = 32


def _prefetch(builder, base, index, write: bool, locality: int = 3) -> None:
    """Prefetch the float ``base[index]`` into the first-level cache (``locality`` 3; 2: the
    second-level one), for reading or writing (``llvm.prefetch``; its pointer type is mangled
    like the masked operations')."""
    from llvmlite import binding

    pointer = "p0" if binding.llvm_version_info >= (15,) else "p0i8"
    i32, byte_pointer = ir.IntType(32), ir.IntType(8).as_pointer()
    fetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
                                           f"llvm.prefetch.{pointer}")
    address = builder.bitcast(builder.gep(base, [index]), byte_pointer)
    builder.call(fetch, [address, ir.Constant(i32, int(write)), ir.Constant(i32, locality), ir.Constant(i32, 1)])


def _transpose(builder, rows):
    """Transpose 16 vectors of 16 lanes: swap the off-diagonal blocks of 8, then 4, 2, 1 (64 shuffles)."""
    rows = list(rows)
    for b in (8, 4, 2, 1):
        low = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [c if not c & b else LANES + c - b for c in range(LANES)])
        high = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [c + b if not c & b else LANES + c for c in range(LANES)])
        for i in range(LANES):
            if not i & b:
                rows[i], rows[i + b] = (builder.shuffle_vector(rows[i], rows[i + b], low),
                                        builder.shuffle_vector(rows[i], rows[i + b], high))
    return rows


def _masked_load_store(builder):
    """``llvm.masked.load`` and ``llvm.masked.store`` of LANES floats: ``load(ptr, align, mask, passthru)``,
    ``store(value, ptr, align, mask)``."""
    i32, mask_ty = ir.IntType(32), ir.VectorType(ir.IntType(1), LANES)
    return (_masked(builder, "load", ir.FunctionType(_VEC, [_VEC.as_pointer(), i32, mask_ty, _VEC])),
            _masked(builder, "store", ir.FunctionType(ir.VoidType(), [_VEC, _VEC.as_pointer(), i32, mask_ty])))


def _masked(builder, name, fnty):
    """``llvm.masked.load``/``store`` on LANES floats; the name mangles the pointer type, which
    is opaque (``p0``) from LLVM 15 on and typed (``p0v16f32``) before."""
    from llvmlite import binding

    pointer = "p0" if binding.llvm_version_info >= (15,) else f"p0v{LANES}f32"
    return cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.{name}.v{LANES}f32.{pointer}")


@intrinsic
def tile_store_nchw(typingctx, tile, y, y_start, plane, channels, first, width, bias, b_start, residual, has_residual,
                    act, p0, p1):
    """Write the tile to NCHW: ``y[y_start + j*plane + p] = act(tile[p][j] + bias[b_start + j] (+ residual))``.

    For j < channels (channel ``j`` is lane ``j % 16`` of the tile's vector ``j // 16``), first
    <= p < width (a tile that starts early, so as not to read past its input, leaves its first
    pixels to the tile before it); ``y`` and ``residual`` are flat NCHW arrays of one layout
    (pass ``y`` as ``residual`` when there is none). The tile is transposed in registers so
    that each channel's pixels leave as one masked vector store (the scalar loop measured
    about 6 cycles per element: more than a 1x1 layer's arithmetic). ``act``, ``p0``, ``p1``: the
    activation (``Epilogue.kernel_activation()``, see :mod:`convengine.backends._activations`), which keeps NaN.
    """
    if not (isinstance(tile, Tile) and all(_is_f32_array(a) for a in (y, bias, residual))):
        return None
    ints = (y_start, plane, channels, first, width, b_start, act)
    if not (all(isinstance(t, types.Integer) for t in ints) and isinstance(has_residual, types.Boolean)
            and isinstance(p0, types.Float) and isinstance(p1, types.Float)):
        return None
    sig = types.void(tile, y, y_start, plane, channels, first, width, bias, b_start, residual, has_residual, act, p0, p1)

    def codegen(context, builder, sig, args):
        acc = args[0]
        y_start, plane, channels, first, width, b_start = (
            _as_i64(context, builder, args[i], sig.args[i]) for i in (2, 3, 4, 5, 6, 8))
        yp = _data(context, builder, sig.args[1], args[1])
        bp = _data(context, builder, sig.args[7], args[7])
        rp = _data(context, builder, sig.args[9], args[9])
        has_residual = args[10]
        act, p0, p1 = _activation_args(context, builder, sig, args, 11)
        i32 = ir.IntType(32)
        load, store = _masked_load_store(builder)
        zero = ir.Constant(_VEC, [0.0] * LANES)
        mask = builder.and_(_lanes_below(builder, width), builder.not_(_lanes_below(builder, first)))
        r_mask = builder.and_(mask, _splat(builder, has_residual))
        n_vectors = sig.args[0].vectors
        # The channels' rows, bias and residual added, wait in a stack buffer (whole aligned
        # vectors: a load of one is forwarded from its store) for a loop that activates and
        # stores them (one per common activation: for_each_activation), not one copy of the
        # activation's code per unrolled store, and no re-read of the masked stores
        # (a second pass over y, _activate_rows, made ReLU cost 0.43 ms on a 0.91 ms 16->96
        # layer at 112x112, SiLU 1.0 ms: each masked load waited for the masked store before it).
        rows = cgutils.alloca_once(builder, _VEC, size=ir.Constant(_I64, n_vectors * LANES), name="tile.rows")

        def add_vector(vector):
            columns = _transpose(builder, [builder.extract_value(acc, vector * MAX_WIDTH + p) for p in range(MAX_WIDTH)]
                                 + [zero] * (LANES - MAX_WIDTH))
            for j, column in enumerate(columns):
                c = ir.Constant(_I64, vector * LANES + j)
                with builder.if_then(builder.icmp_signed("<", c, channels)):
                    at = builder.add(y_start, builder.mul(plane, c))
                    v = builder.fadd(column, _splat(builder, builder.load(builder.gep(bp, [builder.add(b_start, c)]))))
                    r = builder.call(load, [builder.bitcast(builder.gep(rp, [at]), _VEC.as_pointer()), ir.Constant(i32, 4),
                                            r_mask, zero])
                    builder.store(builder.select(has_residual, builder.fadd(v, r), v), builder.gep(rows, [c]))

        for vector in range(n_vectors):  # a vector past ``channels`` is not even transposed
            with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, vector * LANES), channels)):
                add_vector(vector)
        limit = ir.Constant(_I64, n_vectors * LANES)
        stored = builder.select(builder.icmp_signed("<", channels, limit), channels, limit)

        def store_rows(code):  # the loop for one activation (see for_each_activation)
            def store_row(c, _):
                v = _activated(builder, builder.load(builder.gep(rows, [c])), code, act, p0, p1)
                at = builder.add(y_start, builder.mul(plane, c))
                if STORE_PREFETCH:
                    _prefetch(builder, yp, builder.add(at, ir.Constant(_I64, STORE_PREFETCH)), write=True)
                builder.call(store, [v, builder.bitcast(builder.gep(yp, [at]), _VEC.as_pointer()), ir.Constant(i32, 4),
                                     mask])
                return []

            _counted_loop(builder, stored, [], store_row)

        for_each_activation(builder, act, store_rows)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def tile_store_rows(typingctx, tile, y, y_start, block_step, pixel_step, channels, first, width, bias, b_start, residual,
                    has_residual, act, p0, p1, zero_rest):
    """Write the tile where each pixel's channels are contiguous: channel-blocked (NCHW16c) or channels-last (NHWC).

    ``y[y_start + v*block_step + p*pixel_step + j] = act(tile[v][p][j] + bias[b_start + 16*v + j] (+ residual))``
    for the tile's vectors ``v`` with ``16*v < channels``, pixels ``first <= p < width`` and
    lanes ``16*v + j < channels``. The other lanes of a stored vector are written as 0 when
    ``zero_rest`` (a channel block's padding, which the next layer sums over, whatever the
    activation makes of 0), and left alone otherwise (channels-last: they belong to other
    output channels). Each stored vector is one pixel's 16 channels as they sit in the
    registers: no transpose. NCHW16c: ``pixel_step`` 16, ``block_step`` a plane of blocks;
    NHWC: ``pixel_step`` the row's channels, ``block_step`` 16. ``residual`` shares ``y``'s
    layout (pass ``y`` when there is none).
    """
    if not (isinstance(tile, Tile) and all(_is_f32_array(a) for a in (y, bias, residual))):
        return None
    ints = (y_start, block_step, pixel_step, channels, first, width, b_start, act)
    if not (all(isinstance(t, types.Integer) for t in ints) and isinstance(has_residual, types.Boolean)
            and isinstance(zero_rest, types.Boolean) and isinstance(p0, types.Float) and isinstance(p1, types.Float)):
        return None
    sig = types.void(tile, y, y_start, block_step, pixel_step, channels, first, width, bias, b_start, residual,
                     has_residual, act, p0, p1, zero_rest)

    def codegen(context, builder, sig, args):
        acc = args[0]
        y_start, block_step, pixel_step, channels, first, width, b_start = (
            _as_i64(context, builder, args[i], sig.args[i]) for i in (2, 3, 4, 5, 6, 7, 9))
        yp = _data(context, builder, sig.args[1], args[1])
        bp = _data(context, builder, sig.args[8], args[8])
        rp = _data(context, builder, sig.args[10], args[10])
        has_residual, zero_rest = args[11], args[15]
        act, p0, p1 = _activation_args(context, builder, sig, args, 12)
        i32 = ir.IntType(32)
        load, store = _masked_load_store(builder)
        zero = ir.Constant(_VEC, [0.0] * LANES)
        align = ir.Constant(i32, 4)
        n_vectors = sig.args[0].vectors
        # The sums, bias added, wait in a stack buffer for a loop that adds the residual,
        # activates and stores (one per common activation, with and without the residual:
        # for_each_activation), not one copy of the activation's code per unrolled store.
        rows = cgutils.alloca_once(builder, _VEC, size=ir.Constant(_I64, n_vectors * MAX_WIDTH), name="tile.pixels")
        for v in range(n_vectors):
            lanes = _lanes_below(builder, channels, v * LANES)
            b = builder.call(load, [builder.bitcast(builder.gep(bp, [builder.add(b_start, ir.Constant(_I64, v * LANES))]),
                                                    _VEC.as_pointer()), align, lanes, zero])
            for p in range(MAX_WIDTH):
                builder.store(builder.fadd(builder.extract_value(acc, v * MAX_WIDTH + p), b),
                              builder.gep(rows, [ir.Constant(_I64, v * MAX_WIDTH + p)]))
        limit = ir.Constant(_I64, n_vectors)
        used = builder.sdiv(builder.add(channels, ir.Constant(_I64, LANES - 1)), ir.Constant(_I64, LANES))
        used = builder.select(builder.icmp_signed("<", used, limit), used, limit)
        pixels = builder.sub(width, first)
        rest = _splat(builder, zero_rest)

        def vectors(code, with_residual):  # the loops for one activation, with or without a residual
            def vector(v, _):
                lanes = _lanes_below(builder, builder.sub(channels, builder.mul(v, ir.Constant(_I64, LANES))))
                written = builder.or_(lanes, rest)
                base = builder.add(y_start, builder.mul(v, block_step))

                def pixel(i, _):
                    p = builder.add(first, i)
                    at = builder.add(base, builder.mul(p, pixel_step))
                    value = builder.load(builder.gep(rows, [builder.add(builder.mul(v, ir.Constant(_I64, MAX_WIDTH)), p)]))
                    if with_residual:
                        value = builder.fadd(value, builder.call(load, [builder.bitcast(builder.gep(rp, [at]), _VEC.as_pointer()),
                                                                        align, lanes, zero]))
                    value = builder.select(lanes, _activated(builder, value, code, act, p0, p1), zero)
                    builder.call(store, [value, builder.bitcast(builder.gep(yp, [at]), _VEC.as_pointer()), align, written])
                    _prefetch(builder, yp, builder.add(at, builder.mul(pixels, pixel_step)), write=True)
                    return []

                _counted_loop(builder, pixels, [], pixel)
                return []

            _counted_loop(builder, used, [], vector)

        def both(code):  # the residual's test taken once too (ResNet-50: 1% of the gain)
            with builder.if_else(has_residual) as (added, alone):
                with added:
                    vectors(code, True)
                with alone:
                    vectors(code, False)

        for_each_activation(builder, act, both)
        return context.get_dummy_value()

    return sig, codegen


#: The pointwise (1x1) block: POINT_CHANNELS output channels x POINT_VECTORS vectors of
#: LANES pixels, 24 accumulators: a GEMM micro-kernel over NCHW planes, with no input copy
#: and no transpose (each output channel's pixels are contiguous).
POINT_CHANNELS = 6
POINT_VECTORS = 4
POINT_PIXELS = POINT_VECTORS * LANES
#: Products summed in registers before the running total (kept in the output) is updated.
POINT_CHUNK = 256


@intrinsic
def pointwise_block(typingctx, x, x_start, plane, channels, w, w_start, y, y_start, n_out, n_px,
                    bias, b_start, residual, has_residual, act, p0, p1):
    """One block of a 1x1 convolution on NCHW planes, epilogue applied.

    For r < n_out (<= POINT_CHANNELS), p < n_px (<= POINT_PIXELS):
    ``y[y_start + r*plane + p] = act(sum_c w[w_start + c*POINT_CHANNELS + r] * x[x_start + c*plane + p]
    + bias[b_start + r] (+ residual[same index]))``. ``w`` holds POINT_CHANNELS weights per
    input channel (zero-padded); ``y`` and ``residual`` share one layout. Sums of more than
    POINT_CHUNK products go through the output in partial sums (float32 rounding). A block
    of fewer pixels computes only the vectors that hold some (14x14 images: 94% of the lanes
    used instead of 77%).
    """
    arrays = (x, w, y, bias, residual)
    ints = (x_start, plane, channels, w_start, y_start, n_out, n_px, b_start, act)
    if not (all(_is_f32_array(a) for a in arrays) and all(isinstance(t, types.Integer) for t in ints)
            and isinstance(has_residual, types.Boolean) and isinstance(p0, types.Float) and isinstance(p1, types.Float)):
        return None
    sig = types.void(x, x_start, plane, channels, w, w_start, y, y_start, n_out, n_px,
                     bias, b_start, residual, has_residual, act, p0, p1)

    def codegen(context, builder, sig, args):
        xp, wp, yp, bp, rp = (_data(context, builder, sig.args[i], args[i]) for i in (0, 4, 6, 10, 12))
        x_start, plane, channels, w_start, y_start, n_out, n_px, b_start = (
            _as_i64(context, builder, args[i], sig.args[i]) for i in (1, 2, 3, 5, 7, 8, 9, 11))
        has_residual = args[13]
        act, p0, p1 = _activation_args(context, builder, sig, args, 14)
        i32 = ir.IntType(32)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), f"llvm.fma.v{LANES}f32")
        load, store = _masked_load_store(builder)
        zero = ir.Constant(_VEC, [0.0] * LANES)
        align = ir.Constant(i32, 4)

        masks = [_lanes_below(builder, n_px, v * LANES) for v in range(POINT_VECTORS)]
        res_on = _splat(builder, has_residual)

        def vptr(base, index):
            return builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer())

        chunk = ir.Constant(_I64, POINT_CHUNK)
        n_chunks = builder.sdiv(builder.add(channels, ir.Constant(_I64, POINT_CHUNK - 1)), chunk)

        def emit(vectors):  # the chunk loop for blocks of `vectors` vectors (a tail block needs fewer)
            def one_chunk(k, _):
                c0 = builder.mul(k, chunk)
                count = builder.sub(channels, c0)
                count = builder.select(builder.icmp_signed("<", count, chunk), count, chunk)

                def step(c, regs):
                    ch = builder.add(c0, c)
                    x_at = builder.add(x_start, builder.mul(ch, plane))
                    xs = [builder.call(load, [vptr(xp, builder.add(x_at, ir.Constant(_I64, v * LANES))), align, masks[v], zero])
                          for v in range(vectors)]
                    w_at = builder.add(w_start, builder.mul(ch, ir.Constant(_I64, POINT_CHANNELS)))
                    out = []
                    for r in range(POINT_CHANNELS):
                        wr = _splat(builder, builder.load(builder.gep(wp, [builder.add(w_at, ir.Constant(_I64, r))])))
                        out.extend(builder.call(fma, [wr, xs[v], regs[r * vectors + v]]) for v in range(vectors))
                    return out

                sums = _counted_loop(builder, count, [zero] * (POINT_CHANNELS * vectors), step)
                first = builder.icmp_signed("==", k, ir.Constant(_I64, 0))
                last = builder.icmp_signed("==", builder.add(k, ir.Constant(_I64, 1)), n_chunks)
                # the first chunk reads no earlier partial sum: an all-false mask touches no memory
                later = _splat(builder, builder.not_(first))
                for r in range(POINT_CHANNELS):
                    with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, r), n_out)):
                        row = builder.add(y_start, builder.mul(plane, ir.Constant(_I64, r)))
                        b = _splat(builder, builder.load(builder.gep(bp, [builder.add(b_start, ir.Constant(_I64, r))])))
                        for v in range(vectors):
                            at = builder.add(row, ir.Constant(_I64, v * LANES))
                            value = sums[r * vectors + v]
                            earlier = builder.call(load, [vptr(yp, at), align, builder.and_(masks[v], later), zero])
                            value = builder.select(first, value, builder.fadd(value, earlier))
                            res = builder.call(load, [vptr(rp, at), align, builder.and_(masks[v], res_on), zero])
                            final = builder.fadd(value, b)
                            final = builder.select(has_residual, builder.fadd(final, res), final)
                            builder.call(store, [builder.select(last, final, value), vptr(yp, at), align, masks[v]])
                return []

            _counted_loop(builder, n_chunks, [], one_chunk)

        done = builder.append_basic_block("point.done")
        n_vectors = builder.sdiv(builder.add(n_px, ir.Constant(_I64, LANES - 1)), ir.Constant(_I64, LANES))
        switch = builder.switch(n_vectors, done)
        for vectors in range(1, POINT_VECTORS + 1):
            case = builder.append_basic_block(f"point.v{vectors}")
            switch.add_case(ir.Constant(_I64, vectors), case)
            builder.position_at_end(case)
            emit(vectors)
            builder.branch(done)
        builder.position_at_end(done)
        _activate_rows(builder, yp, y_start, plane, n_out, ir.Constant(_I64, 0), n_px, act, p0, p1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pack_block(typingctx, x, x_start, plane, channels, pixels, xb, xb_start):
    """Copy up to 16 pixels of up to 16 channel planes into the blocked layout, transposed in registers.

    ``xb[xb_start + p*LANES + j] = x[x_start + j*plane + p]`` for p < pixels (<= LANES), and 0
    for the channels j >= ``channels`` (a partly filled channel block stays zero-padded). The
    blocked input copy moves every activation once per 3x3 layer; element by element it ran
    at ~6 GB/s, as long as the 64->64 3x3 layer's own arithmetic took on 56x56 / 7.
    """
    if not (all(_is_f32_array(a) for a in (x, xb))
            and all(isinstance(t, types.Integer) for t in (x_start, plane, channels, pixels, xb_start))):
        return None
    sig = types.void(x, x_start, plane, channels, pixels, xb, xb_start)

    def codegen(context, builder, sig, args):
        xp = _data(context, builder, sig.args[0], args[0])
        bp = _data(context, builder, sig.args[5], args[5])
        x_start, plane, channels, pixels, xb_start = (
            _as_i64(context, builder, args[i], sig.args[i]) for i in (1, 2, 3, 4, 6))
        i32 = ir.IntType(32)
        load, _ = _masked_load_store(builder)
        zero = ir.Constant(_VEC, [0.0] * LANES)
        in_row = _lanes_below(builder, pixels)
        c = builder.trunc(channels, i32)
        rows = []
        for j in range(LANES):
            # a channel past the end loads nothing (all-false mask) and leaves zeros
            present = builder.icmp_signed("<", ir.Constant(i32, j), c)
            mask = builder.and_(in_row, _splat(builder, present))
            at = builder.add(x_start, builder.mul(plane, ir.Constant(_I64, j)))
            rows.append(builder.call(load, [builder.bitcast(builder.gep(xp, [at]), _VEC.as_pointer()),
                                            ir.Constant(i32, 4), mask, zero]))
        for p, column in enumerate(_transpose(builder, rows)):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, p), pixels)):
                at = builder.add(xb_start, ir.Constant(_I64, p * LANES))
                store = builder.store(column, builder.bitcast(builder.gep(bp, [at]), _VEC.as_pointer()))
                store.align = 4
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def copy_floats(typingctx, dst, d_start, src, s_start, count):
    """``dst[d_start:d_start + count] = src[s_start:s_start + count]`` as one ``memcpy`` (the runs must not overlap).

    Why: the blocked input copy moves each padded row's pixels as one run, and Numba's own
    slice assignments and loops of it ran at 9-14 GB/s on cached data where ``memcpy`` runs
    at 36-45 (800 KiB, one thread): the copy was 6-11% of a 3x3 layer's time. No bounds checks.
    """
    if not (_is_f32_array(dst) and _is_f32_array(src)
            and all(isinstance(t, types.Integer) for t in (d_start, s_start, count))):
        return None
    sig = types.void(dst, d_start, src, s_start, count)

    def codegen(context, builder, sig, args):
        d_start, s_start, count = (_as_i64(context, builder, args[i], sig.args[i]) for i in (1, 3, 4))
        to = builder.gep(_data(context, builder, sig.args[0], args[0]), [d_start])
        start = builder.gep(_data(context, builder, sig.args[2], args[2]), [s_start])
        cgutils.raw_memcpy(builder, to, start, count, 4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def zero_floats(typingctx, dst, start, count):
    """``dst[start:start + count] = 0`` as one ``memset`` (the padding beside :func:`copy_floats`' runs). No bounds checks."""
    if not (_is_f32_array(dst) and all(isinstance(t, types.Integer) for t in (start, count))):
        return None
    sig = types.void(dst, start, count)

    def codegen(context, builder, sig, args):
        start, count = (_as_i64(context, builder, args[i], sig.args[i]) for i in (1, 2))
        at = builder.gep(_data(context, builder, sig.args[0], args[0]), [start])
        cgutils.memset(builder, at, builder.mul(count, ir.Constant(_I64, 4)), 0)
        return context.get_dummy_value()

    return sig, codegen
