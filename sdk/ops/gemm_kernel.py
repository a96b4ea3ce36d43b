"""The register-tiled GEMM loop nest shared by conv2d and matmul (not an operator itself).

``C[m, n] = epilogue(sum_k A(m, k) * B(k, n))`` over static ``M, N, K``. The output is computed in tiles of
``MR`` (``mr``) rows by ``NC`` columns held in a local accumulator; the column loop is contiguous in ``B`` and ``C`` and
is marked ``vectorized``, the row loop ``unrolled``, so each step of the ``k`` loop is ``MR`` broadcasts and
``MR * NC / lanes`` fused multiply-adds. Edge tiles get their own loop nests with constant extents (``M`` and
``N`` are static), so every loop has a compile-time trip count.

With ``pack_b`` (the default), when a column panel of ``B`` is reused by at least ``pack_min_row_tiles`` (4)
row tiles and ``K`` is at least ``pack_min_k`` (64), the panel (``K x NC``) is first copied into contiguous
workspace scratch, so the tile loop streams it sequentially instead of striding through ``B`` by its row
pitch. Callers whose ``B`` is already compact and cache-resident pass ``pack_b=False``.

Fewer rows than a tile (``M < MR``, a matrix-vector product such as a batch-1 fully connected layer) and a
wide ``B``: there is no reuse of ``B`` to tile for, and the run time is the time to read ``B`` once. The
rows are then computed together over blocks of ``stream_columns`` (512) columns, each ``k`` step reading one
contiguous stretch of a row of ``B`` (the order that memory prefetchers stream at full bandwidth).

Every size and threshold above is a field of the ``gemm`` section of a schedule record
(:class:`kiln.targets.schedule.GemmSchedule`: ``mr``, ``nr``, ``pack``, ``pack_min_row_tiles``, ``pack_min_k``,
``stream_min_tiles``, ``stream_columns``, and the loop kinds ``unroll_rows`` and ``vectorize_columns``); the
numbers quoted here are the defaults, which callers get when they pass no schedule. ``NC`` is ``nr``, at most
``N``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir import tensor as T
from ..targets.schedule import GemmSchedule, default_schedule

Load2 = Callable[[T.Expr, T.Expr], T.Expr]
Store2 = Callable[[T.Expr, T.Expr, T.Expr], T.Stmt]


def tile_sizes(lanes: int, n: int, schedule: GemmSchedule | None = None) -> tuple[int, int]:
    """Rows and columns per tile: the schedule's ``mr`` and ``nr`` (at most ``n`` columns). Without a schedule,
    the generic defaults for ``lanes`` float32 lanes (:func:`kiln.targets.schedule.default_schedule`): 6 x 2
    vectors of accumulators; 4 x 4 scalars on targets without a vector unit."""
    s = schedule if schedule is not None else default_schedule(32 * lanes).gemm
    return s.mr, min(s.nr, n)


def gemm(
    name: str,
    m: int,
    n: int,
    k: int,
    a: Load2,
    b: Load2,
    store: Store2,
    lanes: int,
    dtype: str = "float32",
    init: Load2 | None = None,
    pack_b: bool = True,
    schedule: GemmSchedule | None = None,
) -> T.Stmt:
    """Loop nest computing ``store(i, j, sum_k a(i, k) * b(k, j) [+ init(i, j)])`` for all i < m, j < n.
    ``pack_b`` is the caller's hint for ``pack = "auto"``; ``schedule`` (default: the generic defaults for
    ``lanes``) gives the tile sizes, thresholds and loop kinds."""
    s = schedule if schedule is not None else default_schedule(32 * lanes).gemm
    mr, nc = tile_sizes(lanes, n, s)
    if m < mr and n >= s.stream_min_tiles * nc:
        return _streaming(name, m, n, k, a, b, store, dtype, init, s)
    parts: list[T.Stmt] = []
    m_full, m_tail = divmod(m, mr)
    n_full, n_tail = divmod(n, nc)
    for m_count, m_size, m_base in ((m_full, mr, 0), (1 if m_tail else 0, m_tail, m_full * mr)):
        for n_count, n_size, n_base in ((n_full, nc, 0), (1 if n_tail else 0, n_tail, n_full * nc)):
            if m_count == 0 or n_count == 0:
                continue
            parts.append(
                _tiles(
                    name,
                    m_count,
                    m_size,
                    m_base,
                    n_count,
                    n_size,
                    n_base,
                    k,
                    a,
                    b,
                    store,
                    dtype,
                    init,
                    pack_b,
                    s,
                )
            )
    return T.seq(*parts)


def _tiles(
    name: str,
    m_count: int,
    mr: int,
    m_base: int,
    n_count: int,
    nc: int,
    n_base: int,
    k: int,
    a: Load2,
    b: Load2,
    store: Store2,
    dtype: str,
    init: Load2 | None,
    pack_b: bool,
    s: GemmSchedule,
) -> T.Stmt:
    acc = T.Buffer(f"{name}_acc", (mr, nc), dtype, scope="local")
    zero = T.const(0.0, dtype)
    if s.pack == "auto":
        packed = pack_b and m_count >= s.pack_min_row_tiles and k >= s.pack_min_k
    else:
        packed = s.pack == "always"
    rows_kind = "unrolled" if s.unroll_rows else "serial"
    cols_kind = "vectorized" if s.vectorize_columns else "serial"
    panel = T.Buffer(f"{name}_panel", (k, nc), dtype, scope="workspace")

    # ``mo``/``no`` index the row and column tiles; where there is one tile they are the constant 0
    # (T.loop_or_once), so ``row0``/``col0`` fold to constants.
    def column0(no: T.Expr) -> T.Expr:
        return no * nc + n_base

    def pack(no: T.Expr) -> T.Stmt:
        col0 = column0(no)
        return T.loop(
            k,
            lambda kk: T.loop(
                nc, lambda j: T.Store(panel, (kk, j), b(kk, col0 + j)), name=f"{name}_pj", kind="vectorized"
            ),
            name=f"{name}_pk",
        )

    def tile(mo: T.Expr, no: T.Expr) -> T.Stmt:
        row0 = mo * mr + m_base
        col0 = column0(no)

        def b_tile(kk: T.Expr, j: T.Expr) -> T.Expr:
            return panel[kk, j] if packed else b(kk, col0 + j)

        def init_tile(i: T.LoopVar, j: T.LoopVar) -> T.Stmt:
            v = init(row0 + i, col0 + j) if init is not None else zero
            return T.Store(acc, (i, j), v)

        def update(kk: T.LoopVar) -> T.Stmt:
            return T.loop(
                mr,
                lambda i: T.loop(
                    nc,
                    lambda j: T.Store(acc, (i, j), acc[i, j] + a(row0 + i, kk) * b_tile(kk, j)),
                    name=f"{name}_j",
                    kind=cols_kind,
                ),
                name=f"{name}_i",
                kind=rows_kind,
            )

        def write(i: T.LoopVar, j: T.LoopVar) -> T.Stmt:
            return store(row0 + i, col0 + j, acc[i, j])

        body = T.seq(
            _nest2(mr, nc, init_tile, name, s),
            T.loop(k, update, name=f"{name}_k"),
            _nest2(mr, nc, write, name, s),
        )
        return T.Allocate(acc, body)

    def row_tiles(no: T.Expr) -> T.Stmt:
        return T.loop_or_once(m_count, lambda mo: tile(mo, no), name=f"{name}_mo")

    if packed:
        return T.Allocate(
            panel, T.loop_or_once(n_count, lambda no: T.seq(pack(no), row_tiles(no)), name=f"{name}_no")
        )
    return T.loop_or_once(n_count, row_tiles, name=f"{name}_no")


def _streaming(
    name: str,
    m: int,
    n: int,
    k: int,
    a: Load2,
    b: Load2,
    store: Store2,
    dtype: str,
    init: Load2 | None,
    s: GemmSchedule,
) -> T.Stmt:
    parts = []
    cols = s.stream_columns
    full, tail = divmod(n, cols)
    for count, nb, base in ((full, cols, 0), (1 if tail else 0, tail, full * cols)):
        if count == 0:
            continue
        # up to 10 KiB: too big for the stack of a small device, so in workspace scratch
        acc = T.Buffer(f"{name}_racc", (m, nb), dtype, scope="workspace")

        def block(no: T.Expr, acc: T.Buffer = acc, nb: int = nb, base: int = base) -> T.Stmt:
            col0 = no * nb + base

            def init_row(i: T.LoopVar, j: T.LoopVar) -> T.Stmt:
                return T.Store(acc, (i, j), init(i, col0 + j) if init is not None else T.const(0.0, dtype))

            def update(kk: T.LoopVar) -> T.Stmt:
                return _nest2(
                    m, nb, lambda i, j: T.Store(acc, (i, j), acc[i, j] + a(i, kk) * b(kk, col0 + j)), name, s
                )

            return T.Allocate(
                acc,
                T.seq(
                    _nest2(m, nb, init_row, name, s),
                    T.loop(k, update, name=f"{name}_k"),
                    _nest2(m, nb, lambda i, j: store(i, col0 + j, acc[i, j]), name, s),
                ),
            )

        parts.append(T.loop_or_once(count, block, name=f"{name}_nb"))
    return T.seq(*parts)


def _nest2(
    r: int, c: int, body: Callable[[T.LoopVar, T.LoopVar], T.Stmt], name: str, s: GemmSchedule
) -> T.Stmt:
    return T.loop(
        r,
        lambda i: T.loop(
            c, lambda j: body(i, j), name=f"{name}_j", kind="vectorized" if s.vectorize_columns else "serial"
        ),
        name=f"{name}_i",
        kind="unrolled" if s.unroll_rows else "serial",
    )
