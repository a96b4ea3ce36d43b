"""plan-memory: place every intermediate tensor, and every kernel call's scratch, in one static arena (the
runtime's workspace).

Expects: a legalized ``main`` (``call_tensor``/``call_extern``/``view`` nodes). Guarantees: module attribute
``memory_plan`` with ``storage`` (var uid -> ``("input", i)``, ``("output", j)``, ``("arena", byte offset)``
or ``("const", constant uid)``), ``scratch`` (position in ``main.nodes`` of each call whose tensor function
needs scratch memory -> its byte offset), ``arena_bytes`` (all of it), ``scratch_bytes`` (the largest
scratch), ``tensor_bytes`` (the tensors' extent alone, without scratch) and ``lower_bound`` (the bytes live
at once at the busiest call, each buffer aligned: no plan can use less).

Views share their source's storage. A tensor is live from the call that writes it to the last call that
reads it (through views too); a call's scratch is live during that call only, so it shares bytes with
tensors that are dead by then (the largest kernel scratch need not sit after every tensor). Buffers whose
lifetimes do not overlap share bytes: each is placed at the lowest offset that does not collide with a live
buffer already placed, in decreasing size (the TFLM/TVM greedy-by-size planner); when that misses the lower
bound, other orders (by first use, by size times lifetime) are tried and the smallest plan kept. Offsets
and sizes are aligned to the ABI's ``ALIGNMENT``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir import Constant, Module, Var
from ..ir.tensor import workspace_bytes
from ..ir.types import bound_type
from ..runtime_c.abi import align_up
from .pipeline import register_pass

# a buffer: key -> (size, first node position, last node position)
Buffers = dict[object, tuple[int, int, int]]


def _place(buffers: Buffers, order: Callable[[object], tuple[int, ...]]) -> tuple[int, dict[object, int]]:
    """Greedy placement in ``order``: (arena bytes, key -> offset)."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last), kept sorted by offset
    offsets: dict[object, int] = {}
    arena = 0
    for key in sorted(buffers, key=order):
        size, lo, hi = buffers[key]
        offset = 0
        for off, sz, f, la in placed:
            if la < lo or f > hi:
                continue  # lifetimes do not overlap
            if offset + size <= off:
                break
            offset = max(offset, off + sz)
        placed.append((offset, size, lo, hi))
        placed.sort()
        offsets[key] = offset
        arena = max(arena, offset + size)
    return arena, offsets


def lower_bound(buffers: Buffers) -> int:
    """The most bytes live at once (at any node position)."""
    events: dict[int, int] = {}
    for size, lo, hi in buffers.values():
        events[lo] = events.get(lo, 0) + size
        events[hi + 1] = events.get(hi + 1, 0) - size
    live = best = 0
    for pos in sorted(events):
        live += events[pos]
        best = max(best, live)
    return best


@register_pass("plan-memory", "tensor_opt")
def plan_memory(mod: Module) -> Module:
    main = mod.main
    bounds = mod.attrs.get("dim_bounds") or {}  # run-time dimensions: space for their largest sizes
    storage: dict[int, tuple[str, int]] = {}
    for i, p in enumerate(main.params):
        storage[p.uid] = ("input", i)
    root: dict[int, Var | Constant] = {}
    for n in main.nodes:
        if n.op == "view":
            src = n.inputs[0]
            root[n.outputs[0].uid] = root.get(src.uid, src)  # type: ignore[arg-type]
    for j, v in enumerate(main.outputs):
        r = root.get(v.uid, v)
        storage[r.uid] = ("output", j)

    # lifetimes of arena tensors and call scratch, in node positions; a use through a view is a use of the root
    buffers: Buffers = {}
    funcs = mod.tensor_functions()
    for pos, n in enumerate(main.nodes):
        for v in n.inputs:
            r = root.get(v.uid, v)
            if r.uid in buffers:
                size, first, _ = buffers[r.uid]
                buffers[r.uid] = (size, first, pos)
        if n.op == "view":
            continue
        for o in n.outputs:
            if o.uid not in storage:
                buffers[o.uid] = (align_up(bound_type(o.type, bounds).nbytes), pos, pos)
        if n.op == "call_tensor":
            ws = workspace_bytes(funcs[n.attrs["func"]])
            if ws:
                buffers[("scratch", pos)] = (align_up(ws), pos, pos)

    bound = lower_bound(buffers)
    orders: list[Callable[[object], tuple[int, ...]]] = [
        lambda k: (-buffers[k][0], buffers[k][1]),
        lambda k: (buffers[k][1], -buffers[k][0]),
        lambda k: (-buffers[k][0] * (buffers[k][2] - buffers[k][1] + 1), buffers[k][1]),
    ]
    arena, offsets = _place(buffers, orders[0])
    for order in orders[1:]:
        if arena <= bound:
            break
        other = _place(buffers, order)
        if other[0] < arena:
            arena, offsets = other

    scratch: dict[int, int] = {}
    tensor_bytes = 0
    for key, offset in offsets.items():
        if isinstance(key, tuple):
            scratch[key[1]] = offset
        else:
            storage[key] = ("arena", offset)  # type: ignore[index]
            tensor_bytes = max(tensor_bytes, offset + buffers[key][0])
    for vid, r in root.items():
        if isinstance(r, Constant):
            storage[vid] = ("const", r.uid)
        elif r.uid in storage:
            storage[vid] = storage[r.uid]
    plan = {
        "storage": storage,
        "scratch": scratch,
        "arena_bytes": arena,
        "scratch_bytes": max((buffers[("scratch", p)][0] for p in scratch), default=0),
        "tensor_bytes": tensor_bytes,
        "lower_bound": bound,
    }
    return mod.with_attrs(memory_plan=plan)
