"""The compile driver: model -> Module -> pipeline -> object code -> linked package.

``kiln.compile(model, target)`` is the one-call API; each step is also reachable on its own
(:func:`load_model`, :func:`compile_module`) so users can inspect or edit the module and the pipeline.

Foreign code that passes attached to the module (library kernels behind ``call_extern``, code-generation
overrides; :mod:`kiln.ir.extern`) is compiled for the target here (C with the target's zig toolchain, LLVM IR
by codegen), linked into the package next to the generated object, and listed in the manifest (``externs``).

``schedule=`` (``kiln compile --schedule file.json``) lays a schedule file (:mod:`kiln.ops.schedule`: records
per operator instance, e.g. written by ``kiln tune``) over the target's default schedules; the manifest's
``schedule`` entry says how many of its instances the model has, and names those it does not.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .ir import Module
from .ir.extern import ExternSource
from .ir.types import bound_of, bound_type
from .runtime_c import abi
from .targets import Target, get_target
from .transform import PassContext, Pipeline, default_pipeline

ModelLike = Any  # str | Path | bytes | onnx.ModelProto | Module


def load_model(
    model: ModelLike,
    shapes: Mapping[str, tuple[int | str, ...]] | None = None,
    name: str | None = None,
    custom_ops: Mapping[str, Any] | None = None,
) -> Module:
    """Import a model into a kiln Module: an ONNX file path, ONNX bytes, an ``onnx.ModelProto``, a ``.pt2`` file
    saved with ``torch.export.save`` or a ``torch.export.ExportedProgram`` (:mod:`kiln.frontend.torch`), or a
    Module. ``custom_ops`` maps ONNX custom-domain operators (``"domain:Name"``) to kiln operators
    (:func:`kiln.frontend.onnx.from_onnx`)."""
    if isinstance(model, Module):
        return model
    pt2 = isinstance(model, (str, Path)) and str(model).endswith(".pt2")
    if pt2 or type(model).__name__ == "ExportedProgram":
        try:
            from .frontend.torch import from_exported_program
        except ImportError as e:
            raise ValueError(f"{model}: PyTorch programs need torch (pip install 'kiln[torch]'): {e}") from e
        return from_exported_program(model, shapes=dict(shapes) if shapes else None, name=name)  # type: ignore[arg-type]
    from .frontend.onnx import from_onnx

    return from_onnx(
        model, shapes=dict(shapes) if shapes else None, name=name, custom_ops=dict(custom_ops or {}) or None
    )


def compile_module(
    mod: Module, target: Target | str, pipeline: Pipeline | str | None = None, ctx: PassContext | None = None
) -> Module:
    """Run the pipeline (default: :func:`kiln.transform.default_pipeline` for the target) on ``mod``."""
    t = get_target(target)
    if isinstance(pipeline, str):
        pipeline = Pipeline.parse(pipeline, t)
    pipe = pipeline if pipeline is not None else default_pipeline(t)
    return pipe(mod.with_attrs(target=t), ctx)


def compile(
    model: ModelLike,
    target: Target | str,
    *,
    shapes: Mapping[str, tuple[int | str, ...]] | None = None,
    pipeline: Pipeline | str | None = None,
    name: str | None = None,
    ctx: PassContext | None = None,
    custom_ops: Mapping[str, Any] | None = None,
    prefix: str | None = None,
    schedule: Any = None,
    threads: int | None = None,
) -> Any:
    """Compile ``model`` for ``target`` into a :class:`kiln.package.kpkg.Package` (run it with ``.run``).
    ``pipeline`` is a :class:`Pipeline` or its text (default: the target's default pipeline, hooks
    included); ``custom_ops`` maps ONNX custom-domain operators to kiln operators; ``prefix`` starts the
    model's global symbols (default ``kiln_model``; distinct prefixes let several models share a firmware or
    program, :mod:`kiln.runtime_c.abi`); ``schedule`` is a schedule file (path, decoded JSON or
    :class:`kiln.ops.schedule.ScheduleFile`) whose records replace the target's default schedules for the
    operator instances it names; ``threads`` is the package's default size of the thread pool that runs
    its ``parallel`` loops (default 1; 0: one thread per online CPU; a session may ask for another,
    :meth:`kiln.package.kpkg.Package.open_session`), stored in the manifest; bare-metal packages are
    single-threaded."""
    from .codegen import generate
    from .ops.schedule import ScheduleFile, apply_schedule_file, record_instances
    from .package import link_model
    from .package.kpkg import Package
    from .package.link import ModelInfo

    t = get_target(target)
    sched: ScheduleFile | None = None
    if schedule is not None:
        sched = schedule if isinstance(schedule, ScheduleFile) else _load_schedule(schedule)
        t = apply_schedule_file(t, sched)
    mod = load_model(model, shapes, name, custom_ops)
    if prefix is not None:
        mod = mod.with_attrs(symbol_prefix=abi.check_prefix(prefix))
    if threads is not None:
        if t.is_bare_metal and threads != 1:
            raise ValueError(
                f"target {t.name} is bare metal: its firmware runs on one thread (threads={threads!r}); "
                "leave threads unset"
            )
        mod = mod.with_attrs(threads=abi.check_threads(threads))
    source_ops = sorted({n.op for n in mod.main.nodes})
    if isinstance(pipeline, str):
        pipeline = Pipeline.parse(pipeline, t)
    pipe = pipeline if pipeline is not None else default_pipeline(t)
    with record_instances() as instances:
        lowered = compile_module(mod, t, pipe, ctx)
    code = generate(lowered, t)
    main = lowered.main
    bounds = lowered.attrs.get("dim_bounds") or {}
    table = (lowered.attrs.get("dims") or {}).get("table", [])
    if table and t.is_bare_metal:
        raise ValueError(
            f"target {t.name} is bare metal: its firmware runs fixed shapes; give every dimension a size "
            f"(run-time dimensions: {', '.join(map(str, table))})"
        )

    def spec(v: Any) -> tuple[str, str, tuple[int, ...]]:
        return (v.name, v.type.dtype, bound_type(v.type, bounds).static_shape)

    def dims_of(v: Any) -> tuple[int, ...]:
        return (
            ()
            if v.type.is_static
            else tuple(-1 if isinstance(d, int) else table.index(d) for d in v.type.shape)
        )

    info = ModelInfo(
        name=main.attrs.get("model_name", name or "model"),
        inputs=[spec(p) for p in main.params],
        outputs=[spec(v) for v in main.outputs],
        workspace_bytes=code.workspace_bytes,
        kernel_names=code.kernel_names,
        operators=source_ops,
        prefix=prefix or abi.DEFAULT_PREFIX,
        dim_bounds=[bound_of(d, bounds) for d in table],
        named_dims=(lowered.attrs.get("dims") or {}).get("named", 0),
        input_dims=[dims_of(p) for p in main.params],
        output_dims=[dims_of(v) for v in main.outputs],
    )
    extra_objects = [*code.extra_objects, *compile_externs(t, code.externs)]
    artifacts = link_model(t, code.object, code.weights, info, extra_objects=extra_objects)
    manifest: dict[str, Any] = {
        "pipeline": str(pipe),
        "weights_sha256": hashlib.sha256(code.weights).hexdigest(),
        "flops": _flops(lowered),
    }
    if not t.is_bare_metal:
        manifest["threads"] = int(lowered.attrs.get("threads", 1))
    if table:  # dynamic shapes: what each run-time dimension is, and its bound
        manifest["dims"] = [{"name": str(d), "bound": bound_of(d, bounds)} for d in table]
    if code.externs:
        manifest["externs"] = [e.describe() for e in code.externs]
    if sched is not None:
        manifest["schedule"] = _schedule_report(sched, set(instances.values()))
    return Package.create(t, info, artifacts, extra_manifest=manifest)


def compile_externs(target: Target, sources: Sequence[ExternSource]) -> list[bytes]:
    """Objects for the C externs among ``sources`` (one per ``.c`` file), compiled for ``target`` with the
    same toolchain and flags as the runtime, warnings not fatal, plus each extern's own flags."""
    from .package import toolchain

    objects: list[bytes] = []
    for src in sources:
        if src.kind != "c":
            continue
        with tempfile.TemporaryDirectory(prefix="kiln-extern-") as tmp_name:
            tmp = Path(tmp_name)
            for fname, text in src.files:
                (tmp / fname).write_text(text)
            for fname, _ in src.sources:
                try:
                    obj = toolchain.compile_c(
                        target,
                        tmp / fname,
                        tmp / f"{Path(fname).stem}.o",
                        include_dirs=[tmp, *(Path(d) for d in src.include_dirs)],
                        flags=["-Wno-error", *src.flags],
                    )
                except toolchain.ToolchainError as e:
                    raise toolchain.ToolchainError(f"extern {src.name!r}, file {fname}: {e}") from e
                objects.append(obj.read_bytes())
    return objects


def _load_schedule(schedule: Any) -> Any:
    from .ops.schedule import ScheduleFile

    if isinstance(schedule, Mapping):
        return ScheduleFile.from_json(schedule)
    return ScheduleFile.load(schedule)


def _schedule_report(sched: Any, seen: set[str]) -> dict[str, Any]:
    """The manifest's ``schedule`` entry; warns about instances of the file that the model does not have."""
    unmatched = sorted(k for k in sched.instances if k not in seen)
    if unmatched:
        warnings.warn(
            f"schedule file {sched.source}: {len(unmatched)} of {len(sched.instances)} instance(s) match no "
            f"operator of this model, e.g. {unmatched[0]}",
            stacklevel=3,
        )
    return {
        "source": Path(sched.source).name,
        "instances": len(sched.instances),
        "applied": len(sched.instances) - len(unmatched),
        "unmatched": unmatched,
    }


def _flops(mod: Module) -> int:
    """Floating-point operations of one run: each tensor function's count times the calls to it."""
    funcs = mod.tensor_functions()
    calls = [n.attrs["func"] for n in mod.main.nodes if n.op == "call_tensor"]
    return sum(int(funcs[f].attrs.get("flops", 0)) for f in calls)


def load(path: str | Path) -> Any:
    """Load a saved ``.kpkg``."""
    from .package.kpkg import Package

    return Package.load(path)
