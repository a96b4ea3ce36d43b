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

With ``parallel`` (targets with an OS, :func:`parallel_for`), the tiles are one ``parallel`` loop (run on the
runtime's thread pool, chunks of its iterations per thread) over pairs of a column tile and a group of row
tiles: one group when there are at least ``PARALLEL_MIN_ITERATIONS`` (16) column tiles, else as many groups
as make 16 iterations (at most one per row tile). Each iteration packs its own panel (on its own stack)
when its group has enough row tiles to reuse it; the last group also takes the tail rows, and iterations of
the tail column tile their own edge loop nest. The streaming form runs its column blocks in parallel.

Every size and threshold above is a field of the ``gemm`` section of a schedule record
(:class:`kiln.targets.schedule.GemmSchedule`: ``mr``, ``nr``, ``pack``, ``pack_min_row_tiles``, ``pack_min_k``,
``stream_min_tiles``, ``stream_columns``, and the loop kinds ``unroll_rows`` and ``vectorize_columns``); the
numbers quoted here are the defaults, which callers get when they pass no schedule. ``NC`` is ``nr``, at most
``N``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ir import tensor as T
from ..targets import Target
from ..targets.schedule import GemmSchedule, default_schedule
from .reduce import vector_reduce

Load2 = Callable[[T.Expr, T.Expr], T.Expr]
Store2 = Callable[[T.Expr, T.Expr, T.Expr], T.Stmt]

#: The parallel loop has at least this many iterations where the tiles allow (for balance over threads).
PARALLEL_MIN_ITERATIONS = 16


def parallel_for(target: Target | None) -> bool:
    """Whether lowerings for ``target`` mark loops ``parallel``: targets with an OS (bare-metal firmware is
    single-threaded and keeps its serial loop nests)."""
    return target is not None and not target.is_bare_metal


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
    parallel: bool = False,
) -> T.Stmt:
    """Loop nest computing ``store(i, j, sum_k a(i, k) * b(k, j) [+ init(i, j)])`` for all i < m, j < n.
    ``pack_b`` is the caller's hint for ``pack = "auto"``; ``schedule`` (default: the generic defaults for
    ``lanes``) gives the tile sizes, thresholds and loop kinds; ``parallel`` marks the outermost tile loop
    ``parallel`` (module docstring)."""
    s = schedule if schedule is not None else default_schedule(32 * lanes).gemm
    mr, nc = tile_sizes(lanes, n, s)
    if n == 1 and k >= 2 * lanes and lanes >= 2 and dtype.startswith("float"):
        return _dots(name, m, k, a, b, store, lanes, dtype, init, parallel)
    if m < mr and n >= s.stream_min_tiles * nc:
        return _streaming(name, m, n, k, a, b, store, dtype, init, s, parallel)
    m_full, m_tail = divmod(m, mr)
    n_full, n_tail = divmod(n, nc)
    # runs of equal tiles along each dimension: (count, size, base); the full tiles first (n_full >= 1)
    m_parts = [p for p in ((m_full, mr, 0), (1 if m_tail else 0, m_tail, m_full * mr)) if p[0]]
    n_parts = [p for p in ((n_full, nc, 0), (1 if n_tail else 0, n_tail, n_full * nc)) if p[0]]

    def tiles(mp: tuple[int, int, int], np_: tuple[int, int, int], **where: Any) -> T.Stmt:
        return _tiles(name, *mp, *np_, k, a, b, store, dtype, init, pack_b, s, **where)

    n_tiles = n_full + len(n_parts) - 1
    groups = 1  # groups of full row tiles: enough that column tiles x groups >= PARALLEL_MIN_ITERATIONS
    if n_tiles < PARALLEL_MIN_ITERATIONS and m_full >= 2:
        groups = min(m_full, -(-PARALLEL_MIN_ITERATIONS // n_tiles))
    per = -(-m_full // groups) if m_full else 0  # row tiles per group
    groups = -(-m_full // per) if m_full else 1
    if parallel and n_tiles * groups >= 2:
        full_rows = m_parts[0] if m_full else None
        tail_rows = m_parts[-1] if m_tail else None

        def item(t: T.LoopVar) -> T.Stmt:  # column tile t // groups, row group t % groups
            no: T.Expr = t // groups if groups > 1 else t
            g: T.Expr = t % groups if groups > 1 else T.IntImm(0)

            def rows_of(np_: tuple[int, int, int], col: T.Expr) -> T.Stmt:
                parts: list[T.Stmt] = []
                if full_rows is not None and groups > 1:
                    first = g * per
                    count = T.minimum(per, m_full - first) if m_full % per else T.IntImm(per)
                    parts.append(tiles(full_rows, np_, rows=(first, count, per), column=col))
                elif full_rows is not None:
                    parts.append(tiles(full_rows, np_, column=col))
                if tail_rows is not None:  # the last group takes the tail rows
                    tail = tiles(tail_rows, np_, column=col)
                    parts.append(T.IfThenElse(g.eq(groups - 1), tail) if groups > 1 else tail)
                return T.seq(*parts)

            full = rows_of(n_parts[0], no)
            if len(n_parts) == 1:
                return full
            return T.IfThenElse(no < n_full, full, rows_of(n_parts[1], T.IntImm(0)))

        return T.loop(n_tiles * groups, item, name=f"{name}_par", kind="parallel")
    return T.seq(*(tiles(mp, np_) for mp in m_parts for np_ in n_parts))


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
    rows: tuple[T.Expr, T.Expr, int] | None = None,
    column: T.Expr | None = None,
) -> T.Stmt:
    """The ``m_count x n_count`` tiles of ``mr x nc`` from ``(m_base, n_base)``; only the row tiles
    ``rows = (first, count, at most)`` of them if given, and only column tile ``column`` if given."""
    acc = T.Buffer(f"{name}_acc", (mr, nc), dtype, scope="local")
    zero = T.const(0.0, dtype)
    reuse = rows[2] if rows is not None else m_count  # row tiles that read each packed panel
    packed = s.pack == "always"
    if s.pack == "auto":
        packed = pack_b and reuse >= s.pack_min_row_tiles and k >= s.pack_min_k
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
        if rows is not None:
            return T.loop(rows[1], lambda mo: tile(mo, no), name=f"{name}_mo", start=rows[0])
        return T.loop_or_once(m_count, lambda mo: tile(mo, no), name=f"{name}_mo")

    def per_column(no: T.Expr) -> T.Stmt:
        return T.seq(pack(no), row_tiles(no)) if packed else row_tiles(no)

    body = (
        per_column(column) if column is not None else T.loop_or_once(n_count, per_column, name=f"{name}_no")
    )
    return T.Allocate(panel, body) if packed else body


def _dots(
    name: str,
    m: int,
    k: int,
    a: Load2,
    b: Load2,
    store: Store2,
    lanes: int,
    dtype: str,
    init: Load2 | None,
    parallel: bool,
) -> T.Stmt:
    """One column (a matrix-vector product, e.g. a 1x1 convolution of a 1x1 map in a squeeze-excitation
    block): each row is a dot product along ``k``, summed in vector registers (rows of ``a`` and the column
    of ``b`` are contiguous in ``k``), instead of a tile loop one column wide."""

    def row(i: T.LoopVar) -> T.Stmt:
        def then(acc: T.Buffer) -> T.Stmt:
            return store(i, T.IntImm(0), acc[0] + init(i, T.IntImm(0)) if init is not None else acc[0])

        return vector_reduce(
            f"{name}_dot",
            k,
            dtype,
            lanes,
            0.0,
            lambda x, y: x + y,
            lambda kk: a(i, kk) * b(kk, T.IntImm(0)),
            then,
        )

    return T.loop(m, row, name=f"{name}_r", kind="parallel" if parallel and m >= 2 else "serial")


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
    parallel: bool = False,
) -> T.Stmt:
    parts = []
    cols = s.stream_columns
    full, tail = divmod(n, cols)
    blocks: list[Callable[[T.Expr], T.Stmt]] = []
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
        blocks.append(block)
    total = full + (1 if tail else 0)
    if parallel and total >= 2:  # one column block per iteration, the tail block last
        if len(blocks) == 1:
            return T.loop(total, blocks[0], name=f"{name}_pb", kind="parallel")
        return T.loop(
            total,
            lambda no: T.IfThenElse(no < full, blocks[0](no), blocks[1](T.IntImm(0))),
            name=f"{name}_pb",
            kind="parallel",
        )
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


def gemm_dynamic(
    name: str,
    m: T.ExprLike,
    n: T.ExprLike,
    k: T.ExprLike,
    a: Load2,
    b: Load2,
    store: Store2,
    lanes: int,
    dtype: str = "float32",
    schedule: GemmSchedule | None = None,
) -> T.Stmt:
    """:func:`gemm` for sizes known only at run time (dynamic shapes: ``m``, ``n``, ``k`` may be int64
    expressions). The same ``mr x nc`` register tiles over the full tiles (their counts computed at run time);
    the rows past the last full tile in tiles of one row, the columns past it in tiles of one column. ``B`` is
    not packed (its panel would have a run-time size)."""
    s = schedule if schedule is not None else default_schedule(32 * lanes).gemm
    mr = s.mr
    nc = s.nr if not isinstance(n, int) else min(s.nr, n)
    no_pack = GemmSchedule(**{**s.__dict__, "pack": "never"}) if s.pack == "always" else s

    def part(
        m_count: T.ExprLike, rows: int, m_base: T.ExprLike, n_count: T.ExprLike, cols: int, n_base: T.ExprLike
    ) -> T.Stmt:
        counts: Any = (m_count, m_base, n_count, n_base, k)  # run-time sizes where _tiles takes ints
        return _tiles(
            name,
            counts[0],
            rows,
            counts[1],
            counts[2],
            cols,
            counts[3],
            counts[4],
            a,
            b,
            store,
            dtype,
            None,
            False,
            no_pack,
        )

    m_full, m_tail = T.const(m) // mr, T.const(m) % mr
    n_full, n_tail = T.const(n) // nc, T.const(n) % nc
    return T.seq(
        part(m_full, mr, 0, n_full, nc, 0),
        part(m_full, mr, 0, n_tail, 1, n_full * nc),
        part(m_tail, 1, m_full * mr, n_full, nc, 0),
        part(m_tail, 1, m_full * mr, n_tail, 1, n_full * nc),
    )
