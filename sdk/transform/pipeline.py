"""Passes, pipelines and instruments.

A pass is a pure ``Module -> Module`` function registered under a name with :func:`register_pass`; the
module's ``target`` attribute tells target-dependent passes what to schedule for. A pipeline is a list of
passes, printable as ``"fold-constants,fuse-ops,legalize"`` and parsed back from that string, so a user can
edit it on the command line (``kiln compile --pipeline ...``) and a package manifest records it. A pass that
is not registered (a target's hook, a library's dispatch rule) prints as ``package.module:function`` and
parses back by importing it, so every pipeline string parses to the same pipeline.

:func:`default_pipeline` builds the standard flow phase by phase (:data:`PHASES`, docs/topics/passes.md) and
splices in the target's hook passes at each phase: those its TOML file names (``Target.hook_specs``, loaded
and checked here; a hooks module may sit next to the TOML file) and those registered from Python with
:func:`register_hook`. A hook runs after its phase's own passes unless it declares ``when="before"``
(:func:`hook`); lowering overrides (:func:`kiln.transform.dispatch.lowering`) declare that, so they take
nodes over before ``legalize`` lowers them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ir import Module, print_module, verify
from ..ops import type_rule
from ..targets import Target, TargetError, get_target

PassFn = Callable[[Module], Module]

#: The phases of the default pipeline, in order; every pass and every target hook belongs to one.
PHASES = ("after_import", "graph_opt", "legalize", "tensor_opt", "before_codegen")
#: Where a hook runs in its phase: before or after the phase's own passes.
WHEN = ("before", "after")


@dataclass(frozen=True, eq=False)
class Pass:
    """A pass in a pipeline. ``spec`` is how it prints: its registered name, or ``module:function`` for a
    pass that can be imported by that path (empty if neither: such a pipeline does not parse back)."""

    name: str
    fn: PassFn
    phase: str = "graph_opt"
    when: str = "after"
    spec: str = ""

    def __call__(self, mod: Module) -> Module:
        return self.fn(mod)

    def __eq__(self, other: object) -> bool:  # what runs; the phase only placed it in a default pipeline
        return isinstance(other, Pass) and (self.name, self.fn) == (other.name, other.fn)

    def __hash__(self) -> int:
        return hash((self.name, id(self.fn)))

    @property
    def text(self) -> str:
        """The pass in pipeline text: its spec, else its name."""
        return self.spec or self.name

    @property
    def doc(self) -> str:
        """One line saying what the pass does (its docstring's, or its file's, first line)."""
        doc = getattr(self.fn, "__doc__", None) if not isinstance(self.fn, type) else None
        if not doc or doc == type(self.fn).__doc__ and not callable(getattr(self.fn, "__wrapped__", None)):
            mod = sys.modules.get(getattr(self.fn, "__module__", "") or "")
            doc = getattr(mod, "__doc__", None) or doc or ""
        line = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
        prefix = f"{self.name}: "
        return line[len(prefix) :] if line.startswith(prefix) else line


_PASSES: dict[str, Pass] = {}


def register_pass(name: str, phase: str) -> Callable[[PassFn], PassFn]:
    """Decorator: register a ``Module -> Module`` function as a named pass of ``phase``."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")

    def deco(fn: PassFn) -> PassFn:
        if name in _PASSES:
            raise ValueError(f"pass {name!r} registered twice")
        _PASSES[name] = Pass(name, fn, phase, spec=name)
        return fn

    return deco


def get_pass(name: str) -> Pass:
    if name not in _PASSES:
        raise ValueError(
            f"unknown pass {name!r}; known passes: {', '.join(sorted(_PASSES))} "
            "(or name a pass by 'package.module:function')"
        )
    return _PASSES[name]


def all_passes() -> dict[str, Pass]:
    return dict(_PASSES)


def hook(when: str = "after", phase: str | None = None) -> Callable[[PassFn], PassFn]:
    """Decorator for a hook pass: where it runs in its phase (``before`` or ``after`` the phase's own
    passes) and, optionally, the one phase it belongs to (naming it under another phase is then an error)."""
    if when not in WHEN:
        raise ValueError(f"when must be 'before' or 'after', got {when!r}")
    if phase is not None and phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")

    def deco(fn: PassFn) -> PassFn:
        fn.kiln_when = when  # type: ignore[attr-defined]
        if phase is not None:
            fn.kiln_phase = phase  # type: ignore[attr-defined]
        return fn

    return deco


def spec_of(obj: Any) -> str:
    """``module:qualname`` if importing that gives back ``obj`` itself, else ``""``."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not qual or "<" in qual or mod == "__main__":
        return ""
    try:
        found = _resolve(importlib.import_module(mod), qual)
    except (ImportError, AttributeError):
        return ""
    return f"{mod}:{qual}" if found is obj else ""


def _resolve(root: Any, qual: str) -> Any:
    for part in qual.split("."):
        root = getattr(root, part)
    return root


def as_pass(p: Pass | PassFn | str, phase: str | None = None, when: str | None = None) -> Pass:
    """A :class:`Pass` from a pass, a registered name, a ``module:function`` spec or a function (whose
    declared phase and place, :func:`hook`, are used unless given)."""
    if isinstance(p, Pass):
        return p
    if isinstance(p, str):
        return load_pass(p) if ":" in p else get_pass(p)
    spec = spec_of(p)
    name = getattr(p, "__name__", None) or type(p).__name__
    ph = phase or getattr(p, "kiln_phase", None) or "graph_opt"
    return Pass(name, p, ph, str(when or getattr(p, "kiln_when", "after")), spec)


def load_pass(spec: str, search: Sequence[Path] = ()) -> Pass:
    """The pass named ``package.module:function`` (a function, or an object with the pass's interface),
    importing the module; ``search`` holds extra directories to find the module in (a target's)."""
    mod_name, _, qual = spec.partition(":")
    if not mod_name or not qual:
        raise ValueError(f"pass {spec!r} must look like 'package.module:function'")
    try:
        obj = _resolve(_import(mod_name, search), qual)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load pass {spec!r}: {e}") from e
    if isinstance(obj, Pass):
        return obj
    if not callable(obj):
        raise ValueError(f"pass {spec!r} is a {type(obj).__name__}, not a Module -> Module function")
    p = as_pass(obj)
    return Pass(p.name, p.fn, p.phase, p.when, spec)


def _import(mod_name: str, search: Sequence[Path]) -> Any:
    """Import ``mod_name``; if it is not importable as is but sits in one of ``search``, that directory
    joins ``sys.path`` (at the end, so it never shadows an installed module) and the import is retried."""
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        top = mod_name.split(".")[0]
        if e.name != top:
            raise
        for d in search:
            if (d / f"{top}.py").is_file() or (d / top / "__init__.py").is_file():
                if str(d) not in sys.path:
                    sys.path.append(str(d))
                importlib.invalidate_caches()
                return importlib.import_module(mod_name)
        raise


def _verify_default() -> bool:
    return os.environ.get("KILN_VERIFY_EACH", "") not in ("", "0")


@dataclass
class PassContext:
    """How to run a pipeline.

    ``verify_each``: run the IR verifier (with the operators' type rules) after every pass; on by default
    when the environment sets ``KILN_VERIFY_EACH=1`` (the test suite does). ``print_ir_after``: pass names
    (or specs) after which to print the module, or ``"all"``. ``print_after_change``: print it after every
    pass that changed it. ``timings`` collects (pass, seconds) for every pass run; :meth:`timing_report`
    formats them (``kiln compile --time-passes``).
    """

    verify_each: bool = field(default_factory=_verify_default)
    print_after_change: bool = False
    print_ir_after: Collection[str] | str = ()
    timings: list[tuple[str, float]] = field(default_factory=list)
    printer: Callable[[str], None] = print

    def wants_ir_after(self, p: Pass) -> bool:
        sel = self.print_ir_after
        if sel == "all":
            return True
        names = {sel} if isinstance(sel, str) else set(sel)
        return p.name in names or p.spec in names

    def timing_report(self) -> str:
        total = sum(t for _, t in self.timings) or 1e-12
        width = max((len(n) for n, _ in self.timings), default=4)
        lines = [f"{'pass':<{width}}  {'ms':>9}  {'%':>5}"]
        lines += [f"{n:<{width}}  {t * 1e3:9.2f}  {100 * t / total:5.1f}" for n, t in self.timings]
        lines.append(f"{'total':<{width}}  {total * 1e3:9.2f}  100.0")
        return "\n".join(lines)


class Pipeline:
    def __init__(self, passes: Iterable[Pass | PassFn | str] = ()) -> None:
        self.passes: list[Pass] = [as_pass(p) for p in passes]

    @classmethod
    def parse(cls, text: str, target: Target | str | None = None) -> Pipeline:
        """The pipeline that ``text`` (as printed by ``str(pipeline)``) names. Registered passes go by name,
        others by ``package.module:function``; with ``target``, modules next to the target's file are found
        too (a user target's hooks module)."""
        search = _target_dirs(get_target(target)) if target is not None else []
        return cls(
            [load_pass(s, search) if ":" in s else s for s in (x.strip() for x in text.split(",")) if s]
        )

    def __str__(self) -> str:
        return ",".join(p.text for p in self.passes)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.passes == other.passes

    def __len__(self) -> int:
        return len(self.passes)

    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def _index(self, name: str) -> int:
        for i, p in enumerate(self.passes):
            if name in (p.name, p.spec):
                return i
        raise ValueError(f"pass {name!r} is not in pipeline {self}")

    def insert_after(self, name: str, *passes: Pass | PassFn | str) -> Pipeline:
        i = self._index(name) + 1
        return Pipeline([*self.passes[:i], *passes, *self.passes[i:]])

    def insert_before(self, name: str, *passes: Pass | PassFn | str) -> Pipeline:
        i = self._index(name)
        return Pipeline([*self.passes[:i], *passes, *self.passes[i:]])

    def remove(self, name: str) -> Pipeline:
        return Pipeline([p for p in self.passes if name not in (p.name, p.spec)])

    def replace(self, name: str, new: Pass | PassFn | str) -> Pipeline:
        return Pipeline([as_pass(new) if name in (p.name, p.spec) else p for p in self.passes])

    def __call__(self, mod: Module, ctx: PassContext | None = None) -> Module:
        ctx = ctx or PassContext()
        for p in self.passes:
            before = print_module(mod) if ctx.print_after_change else ""
            t0 = time.perf_counter()
            try:
                new = p(mod)
            except Exception as e:
                e.add_note(f"in pass {p.text!r} of pipeline {self}")
                raise
            ctx.timings.append((p.text, time.perf_counter() - t0))
            if not isinstance(new, Module):
                raise TypeError(f"pass {p.text!r} returned {type(new).__name__}, not a Module")
            if ctx.verify_each:
                try:
                    verify(new, infer=type_rule)
                except Exception as e:
                    e.add_note(f"after pass {p.text!r}")
                    raise
            if ctx.wants_ir_after(p):
                ctx.printer(f"// ----- IR after {p.text}\n{print_module(new)}")
            elif ctx.print_after_change:
                after = print_module(new)
                if after != before:
                    ctx.printer(f"// ----- after {p.text}\n{after}")
            mod = new
        return mod


# The standard flow, phase by phase. Target hooks run before or after a phase's own passes, as they declare;
# in tensor_opt, memory planning must see the final tensor code and so runs after the hooks.
DEFAULT_PHASES: dict[str, Sequence[str]] = {
    "after_import": ("fuse-qdq", "widen-float16", "fold-constants", "simplify"),
    "graph_opt": ("fold-batch-norm", "fold-constants", "eliminate-dead-code", "fuse-ops"),
    "legalize": ("legalize",),
    "tensor_opt": (),
    "before_codegen": (),
}
LAST_IN_PHASE = {"tensor_opt": ("plan-memory",)}


def default_pipeline(
    target: Target | str | None = None, extra: Sequence[Pass | PassFn | str] = ()
) -> Pipeline:
    """The standard flow for ``target`` with its hooks, plus ``extra`` passes (for example a library's
    dispatch rewrites), each placed at the phase and side it declares (:func:`hook`, a rewrite's phase)."""
    hooks = target_hooks(get_target(target)) if target is not None else {p: [] for p in PHASES}
    for x in extra:
        p = as_pass(x)
        hooks[p.phase] = [*hooks[p.phase], p]
    passes: list[Pass | str] = []
    for phase in PHASES:
        mine = hooks.get(phase, [])
        passes.extend(h for h in mine if h.when == "before")
        passes.extend(DEFAULT_PHASES[phase])
        passes.extend(h for h in mine if h.when == "after")
        passes.extend(LAST_IN_PHASE.get(phase, ()))
    return Pipeline(passes)


# ---------------------------------------------------------------------------------------------- target hooks
_REGISTERED_HOOKS: dict[str, dict[str, list[Pass]]] = {}


def register_hook(target: str, phase: str, pass_: PassFn | Pass | str, when: str | None = None) -> None:
    """Make ``pass_`` run at ``phase`` whenever the default pipeline is built for ``target``: after the
    phase's own passes, or before them with ``when="before"`` (default: what the pass declares)."""
    if phase not in PHASES:
        raise TargetError(f"unknown phase {phase!r}; phases are {', '.join(PHASES)}")
    if when is not None and when not in WHEN:
        raise TargetError(f"when must be 'before' or 'after', got {when!r}")
    p = _placed(as_pass(pass_), phase, when, f"register_hook({target!r}, {phase!r}, ...)")
    _REGISTERED_HOOKS.setdefault(target, {}).setdefault(phase, []).append(p)


def target_hooks(t: Target) -> dict[str, list[Pass]]:
    """The passes ``t`` adds per phase: those its file names (``hooks = {phase = ["module:function"]}``;
    the module may sit in the directory of the target's file), then those registered with
    :func:`register_hook`. Each knows whether it runs before or after the phase's own passes."""
    out: dict[str, list[Pass]] = {p: [] for p in PHASES}
    for phase, specs in t.hook_specs:
        if phase not in PHASES:
            raise TargetError(f"{t.source}: unknown hook phase {phase!r}; phases are {', '.join(PHASES)}")
        out[phase] += [_placed(_load_hook(spec, t), phase, None, t.source) for spec in specs]
    for phase, ps in _REGISTERED_HOOKS.get(t.name, {}).items():
        out[phase] += ps
    return out


def _placed(p: Pass, phase: str, when: str | None, where: str) -> Pass:
    """``p`` as a hook of ``phase``; a pass that declares another phase is an error naming ``where``."""
    declared = getattr(p.fn, "kiln_phase", None)
    if declared is not None and declared != phase:
        raise TargetError(f"{where}: hook {p.text!r} belongs to phase {declared!r}, not {phase!r}")
    return Pass(p.name, p.fn, phase, when or p.when, p.spec)


def _target_dirs(t: Target) -> list[Path]:
    src = Path(t.source) if t.source and not t.source.startswith("<") else None
    return [src.parent] if src is not None and src.is_file() else []


def _load_hook(spec: str, t: Target) -> Pass:
    mod, _, attr = spec.partition(":")
    if not attr:
        raise TargetError(f"{t.source}: hook {spec!r} must look like 'package.module:function'")
    try:
        return load_pass(spec, _target_dirs(t))
    except ValueError as e:
        raise TargetError(f"{t.source}: cannot load hook {spec!r}: {e.__cause__ or e}") from e
