"""The register-tiled GEMM loop nest shared by conv2d and matmul (not an operator itself).

``C[m, n] = epilogue(sum_k A(m, k) * B(k, n))`` over static ``M, N, K``. The output is computed in tiles of
``MR`` rows by ``NC`` columns held in a local accumulator; the column loop is contiguous in ``B`` and ``C`` and
is marked ``vectorized``, the row loop ``unrolled``, so each step of the ``k`` loop is ``MR`` broadcasts and
``MR * NC / lanes`` fused multiply-adds. Edge tiles get their own loop nests with constant extents (``M`` and
``N`` are static), so every loop has a compile-time trip count.

With ``pack_b`` (the default), when a column panel of ``B`` is reused by at least :data:`PACK_MIN_ROW_TILES`
row tiles and ``K`` is at least :data:`PACK_MIN_K`, the panel (``K x NC``) is first copied into contiguous
workspace scratch, so the tile loop streams it sequentially instead of striding through ``B`` by its row
pitch. Callers whose ``B`` is already compact and cache-resident pass ``pack_b=False``.

Fewer rows than a tile (``M < MR``, a matrix-vector product such as a batch-1 fully connected layer) and a
wide ``B``: there is no reuse of ``B`` to tile for, and the run time is the time to read ``B`` once. The
rows are then computed together over blocks of :data:`STREAM_COLUMNS` columns, each ``k`` step reading one
contiguous stretch of a row of ``B`` (the order that memory prefetchers stream at full bandwidth).
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir import tensor as T

PACK_MIN_ROW_TILES = 4
PACK_MIN_K = 64
STREAM_MIN_TILES = 4
STREAM_COLUMNS = 512

Load2 = Callable[[T.Expr, T.Expr], T.Expr]
Store2 = Callable[[T.Expr, T.Expr, T.Expr], T.Stmt]


def tile_sizes(lanes: int, n: int) -> tuple[int, int]:
    """Rows and columns per tile for a target with ``lanes`` float32 lanes: 6 x 2 vectors of accumulators
    (12 registers, plus 2 for B and 1 broadcast, fits the 16 vector registers of AVX2 and Armv7 NEON and
    leaves room on 32-register machines); 4 x 4 scalars on targets without a vector unit."""
    mr, nc = (6, 2 * lanes) if lanes > 1 else (4, 4)
    return mr, min(nc, n)


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
) -> T.Stmt:
    """Loop nest computing ``store(i, j, sum_k a(i, k) * b(k, j) [+ init(i, j)])`` for all i < m, j < n."""
    mr, nc = tile_sizes(lanes, n)
    if m < mr and n >= STREAM_MIN_TILES * nc:
        return _streaming(name, m, n, k, a, b, store, dtype, init)
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
) -> T.Stmt:
    acc = T.Buffer(f"{name}_acc", (mr, nc), dtype, scope="local")
    zero = T.const(0.0, dtype)
    packed = pack_b and m_count >= PACK_MIN_ROW_TILES and k >= PACK_MIN_K
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
                    kind="vectorized",
                ),
                name=f"{name}_i",
                kind="unrolled",
            )

        def write(i: T.LoopVar, j: T.LoopVar) -> T.Stmt:
            return store(row0 + i, col0 + j, acc[i, j])

        body = T.seq(
            _nest2(mr, nc, init_tile, name),
            T.loop(k, update, name=f"{name}_k"),
            _nest2(mr, nc, write, name),
        )
        return T.Allocate(acc, body)

    def row_tiles(no: T.Expr) -> T.Stmt:
        return T.loop_or_once(m_count, lambda mo: tile(mo, no), name=f"{name}_mo")

    if packed:  # m_count > 1
        return T.Allocate(
            panel, T.loop_or_once(n_count, lambda no: T.seq(pack(no), row_tiles(no)), name=f"{name}_no")
        )
    return T.loop_or_once(n_count, row_tiles, name=f"{name}_no")


def _streaming(
    name: str, m: int, n: int, k: int, a: Load2, b: Load2, store: Store2, dtype: str, init: Load2 | None
) -> T.Stmt:
    parts = []
    full, tail = divmod(n, STREAM_COLUMNS)
    for count, nb, base in ((full, STREAM_COLUMNS, 0), (1 if tail else 0, tail, full * STREAM_COLUMNS)):
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
                    m, nb, lambda i, j: T.Store(acc, (i, j), acc[i, j] + a(i, kk) * b(kk, col0 + j)), name
                )

            return T.Allocate(
                acc,
                T.seq(
                    _nest2(m, nb, init_row, name),
                    T.loop(k, update, name=f"{name}_k"),
                    _nest2(m, nb, lambda i, j: store(i, col0 + j, acc[i, j]), name),
                ),
            )

        parts.append(T.loop_or_once(count, block, name=f"{name}_nb"))
    return T.seq(*parts)


def _nest2(r: int, c: int, body: Callable[[T.LoopVar, T.LoopVar], T.Stmt], name: str) -> T.Stmt:
    return T.loop(
        r,
        lambda i: T.loop(c, lambda j: body(i, j), name=f"{name}_j", kind="vectorized"),
        name=f"{name}_i",
        kind="unrolled",
    )
