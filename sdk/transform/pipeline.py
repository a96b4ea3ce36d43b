"""Passes, pipelines and instruments.

A pass is a pure ``Module -> Module`` function registered under a name with :func:`register_pass`; the
module's ``target`` attribute tells target-dependent passes what to schedule for. A pipeline is a list of
passes, printable as ``"fold-constants,fuse-ops,legalize"`` and parsed back from that string, so a user can
edit it on the command line (``kiln compile --pipeline ...``) and a crash report can record it.

:func:`default_pipeline` builds the standard flow phase by phase (:data:`PHASES`, docs/topics/passes.md) and
splices in the target's hook passes at each phase: those its TOML file names (``Target.hook_specs``, loaded
and checked here) and those registered from Python with :func:`register_hook`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..ir import Module, print_module, verify
from ..ops import type_rule
from ..targets import Target, TargetError, get_target

PassFn = Callable[[Module], Module]

#: The phases of the default pipeline, in order; every pass and every target hook belongs to one.
PHASES = ("after_import", "graph_opt", "legalize", "tensor_opt", "before_codegen")


@dataclass(frozen=True)
class Pass:
    name: str
    fn: PassFn
    phase: str = "graph_opt"

    def __call__(self, mod: Module) -> Module:
        return self.fn(mod)


_PASSES: dict[str, Pass] = {}


def register_pass(name: str, phase: str) -> Callable[[PassFn], PassFn]:
    """Decorator: register a ``Module -> Module`` function as a named pass of ``phase``."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")

    def deco(fn: PassFn) -> PassFn:
        if name in _PASSES:
            raise ValueError(f"pass {name!r} registered twice")
        _PASSES[name] = Pass(name, fn, phase)
        return fn

    return deco


def get_pass(name: str) -> Pass:
    if name not in _PASSES:
        raise ValueError(f"unknown pass {name!r}; known passes: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


def all_passes() -> dict[str, Pass]:
    return dict(_PASSES)


def as_pass(p: Pass | PassFn | str) -> Pass:
    if isinstance(p, Pass):
        return p
    if isinstance(p, str):
        return get_pass(p)
    return Pass(getattr(p, "__name__", "custom"), p, "graph_opt")


@dataclass
class PassContext:
    """How to run a pipeline: verify the IR after each pass, time passes, print IR after changes."""

    verify_each: bool = False
    print_after_change: bool = False
    timings: list[tuple[str, float]] = field(default_factory=list)
    printer: Callable[[str], None] = print


class Pipeline:
    def __init__(self, passes: Iterable[Pass | PassFn | str] = ()) -> None:
        self.passes: list[Pass] = [as_pass(p) for p in passes]

    @classmethod
    def parse(cls, text: str) -> Pipeline:
        names = [s.strip() for s in text.split(",") if s.strip()]
        return cls(names)

    def __str__(self) -> str:
        return ",".join(p.name for p in self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def insert_after(self, name: str, *passes: Pass | PassFn | str) -> Pipeline:
        i = self.names().index(name) + 1
        return Pipeline([*self.passes[:i], *passes, *self.passes[i:]])

    def insert_before(self, name: str, *passes: Pass | PassFn | str) -> Pipeline:
        i = self.names().index(name)
        return Pipeline([*self.passes[:i], *passes, *self.passes[i:]])

    def remove(self, name: str) -> Pipeline:
        return Pipeline([p for p in self.passes if p.name != name])

    def replace(self, name: str, new: Pass | PassFn | str) -> Pipeline:
        return Pipeline([as_pass(new) if p.name == name else p for p in self.passes])

    def __call__(self, mod: Module, ctx: PassContext | None = None) -> Module:
        ctx = ctx or PassContext()
        for p in self.passes:
            t0 = time.perf_counter()
            before = print_module(mod) if ctx.print_after_change else ""
            try:
                new = p(mod)
            except Exception as e:
                e.add_note(f"in pass {p.name!r} of pipeline {self}")
                raise
            ctx.timings.append((p.name, time.perf_counter() - t0))
            if ctx.verify_each:
                try:
                    verify(new, infer=type_rule)
                except Exception as e:
                    e.add_note(f"after pass {p.name!r}")
                    raise
            if ctx.print_after_change:
                after = print_module(new)
                if after != before:
                    ctx.printer(f"// ----- after {p.name}\n{after}")
            mod = new
        return mod


# The standard flow, phase by phase. Target hooks run after a phase's own passes, except in tensor_opt, where
# memory planning must see the final tensor code and so runs after the hooks.
DEFAULT_PHASES: dict[str, Sequence[str]] = {
    "after_import": ("fold-constants", "simplify"),
    "graph_opt": ("fold-batch-norm", "fold-constants", "eliminate-dead-code", "fuse-ops"),
    "legalize": ("legalize",),
    "tensor_opt": (),
    "before_codegen": (),
}
LAST_IN_PHASE = {"tensor_opt": ("plan-memory",)}


def default_pipeline(target: Target | str | None = None) -> Pipeline:
    hooks = target_hooks(get_target(target)) if target is not None else {}
    passes: list[Pass | PassFn | str] = []
    for phase in PHASES:
        passes.extend(DEFAULT_PHASES[phase])
        passes.extend(hooks.get(phase, []))
        passes.extend(LAST_IN_PHASE.get(phase, ()))
    return Pipeline(passes)


# ---------------------------------------------------------------------------------------------- target hooks
_REGISTERED_HOOKS: dict[str, dict[str, list[PassFn]]] = {}


def register_hook(target: str, phase: str, pass_: PassFn) -> None:
    """Make ``pass_`` run at ``phase`` whenever the default pipeline is built for ``target``."""
    if phase not in PHASES:
        raise TargetError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")
    _REGISTERED_HOOKS.setdefault(target, {}).setdefault(phase, []).append(pass_)


def target_hooks(t: Target) -> dict[str, list[PassFn]]:
    """The passes ``t`` adds per phase: those its file names (``hooks = {phase = ["module:function"]}``),
    then those registered with :func:`register_hook`."""
    out: dict[str, list[PassFn]] = {p: [] for p in PHASES}
    for phase, specs in t.hook_specs:
        if phase not in PHASES:
            raise TargetError(f"{t.source}: unknown hook phase {phase!r}; phases are {', '.join(PHASES)}")
        out[phase] += [_load_hook(spec, t) for spec in specs]
    for phase, fns in _REGISTERED_HOOKS.get(t.name, {}).items():
        out[phase] += fns
    return out


def _load_hook(spec: str, t: Target) -> PassFn:
    mod, _, attr = spec.partition(":")
    if not attr:
        raise TargetError(f"{t.source}: hook {spec!r} must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise TargetError(f"{t.source}: cannot load hook {spec!r}: {e}") from e
    return fn  # type: ignore[no-any-return]
