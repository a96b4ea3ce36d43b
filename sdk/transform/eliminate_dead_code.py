"""eliminate-dead-code: drop nodes whose results are never used (every operator is pure).

Expects: a graph function ``main``. Guarantees: every remaining node contributes to an output.
"""

from __future__ import annotations

from ..ir import Module, Var
from .pipeline import register_pass


@register_pass("eliminate-dead-code", "graph_opt")
def eliminate_dead_code(mod: Module) -> Module:
    main = mod.main
    live: set[int] = {v.uid for v in main.outputs if isinstance(v, Var)}
    kept = []
    for n in reversed(main.nodes):
        if any(o.uid in live for o in n.outputs):
            kept.append(n)
            live.update(v.uid for v in n.inputs if isinstance(v, Var))
    if len(kept) == len(main.nodes):
        return mod
    return mod.with_function(main.with_(nodes=tuple(reversed(kept))))
