"""plan-memory: place every intermediate tensor in one static arena (the runtime's workspace).

Expects: a legalized ``main`` (``call_tensor``/``call_extern``/``view`` nodes). Guarantees: module attribute
``memory_plan`` with ``storage`` (var uid -> ``("input", i)``, ``("output", j)``, ``("arena", byte offset)``
or ``("const", constant uid)``), ``arena_bytes`` (all of it, scratch included), ``scratch_offset`` and
``scratch_bytes``. Views share their source's storage. Tensors whose lifetimes do not overlap share bytes:
greedy placement by decreasing size at the lowest offset that does not collide with a live tensor (the
TFLM/TVM greedy-by-size planner). Offsets are aligned to the ABI's
``ALIGNMENT``.
"""

from __future__ import annotations

from ..ir import Constant, Module, Var
from ..ir.tensor import workspace_bytes
from ..runtime_c.abi import align_up
from .pipeline import register_pass


@register_pass("plan-memory", "tensor_opt")
def plan_memory(mod: Module) -> Module:
    main = mod.main
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

    # lifetimes of arena tensors, in node positions; a use through a view is a use of the root
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    size: dict[int, int] = {}
    for pos, n in enumerate(main.nodes):
        for v in n.inputs:
            r = root.get(v.uid, v)
            if r.uid in first:
                last[r.uid] = pos
        if n.op == "view":
            continue
        for o in n.outputs:
            if o.uid not in storage:
                first[o.uid] = last[o.uid] = pos
                size[o.uid] = align_up(o.type.nbytes)
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    arena = 0
    for uid in sorted(size, key=lambda u: (-size[u], first[u])):
        lo, hi = first[uid], last[uid]
        offset = 0
        for off, sz, f, la in sorted(placed):
            if la < lo or f > hi:
                continue  # lifetimes do not overlap
            if offset + size[uid] <= off:
                break
            offset = max(offset, off + sz)
        placed.append((offset, size[uid], lo, hi))
        storage[uid] = ("arena", offset)
        arena = max(arena, offset + size[uid])
    for vid, r in root.items():
        if isinstance(r, Constant):
            storage[vid] = ("const", r.uid)
        elif r.uid in storage:
            storage[vid] = storage[r.uid]
    scratch = max((workspace_bytes(f) for f in mod.tensor_functions().values()), default=0)
    scratch_offset = align_up(arena)
    plan = {
        "storage": storage,
        "arena_bytes": scratch_offset + scratch,
        "scratch_offset": scratch_offset,
        "scratch_bytes": scratch,
        "tensor_bytes": arena,
    }
    return mod.with_attrs(memory_plan=plan)
