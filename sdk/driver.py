"""The compile driver: model -> Module -> pipeline -> object code -> linked package.

``kiln.compile(model, target)`` is the one-call API; each step is also reachable on its own
(:func:`load_model`, :func:`compile_module`) so users can inspect or edit the module and the pipeline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .ir import Module
from .targets import Target, get_target
from .transform import PassContext, Pipeline, default_pipeline

ModelLike = Any  # str | Path | bytes | onnx.ModelProto | Module


def load_model(
    model: ModelLike, shapes: Mapping[str, tuple[int, ...]] | None = None, name: str | None = None
) -> Module:
    """Import a model into a kiln Module: an ONNX file path, ONNX bytes, an ``onnx.ModelProto`` or a Module."""
    if isinstance(model, Module):
        return model
    from .frontend.onnx import from_onnx

    return from_onnx(model, shapes=dict(shapes) if shapes else None, name=name)


def compile_module(
    mod: Module, target: Target | str, pipeline: Pipeline | str | None = None, ctx: PassContext | None = None
) -> Module:
    """Run the pipeline (default: :func:`kiln.transform.default_pipeline` for the target) on ``mod``."""
    t = get_target(target)
    if isinstance(pipeline, str):
        pipeline = Pipeline.parse(pipeline)
    pipe = pipeline if pipeline is not None else default_pipeline(t)
    return pipe(mod.with_attrs(target=t), ctx)


def compile(
    model: ModelLike,
    target: Target | str,
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    pipeline: Pipeline | str | None = None,
    name: str | None = None,
    ctx: PassContext | None = None,
) -> Any:
    """Compile ``model`` for ``target`` into a :class:`kiln.package.kpkg.Package` (run it with ``.run``)."""
    from .codegen import generate
    from .package import link_model
    from .package.kpkg import Package
    from .package.link import ModelInfo

    t = get_target(target)
    mod = load_model(model, shapes, name)
    source_ops = sorted({n.op for n in mod.main.nodes})
    lowered = compile_module(mod, t, pipeline, ctx)
    code = generate(lowered, t)
    main = lowered.main
    info = ModelInfo(
        name=main.attrs.get("model_name", name or "model"),
        inputs=[(p.name, p.type.dtype, p.type.static_shape) for p in main.params],
        outputs=[(v.name, v.type.dtype, v.type.static_shape) for v in main.outputs],
        workspace_bytes=code.workspace_bytes,
        kernel_names=code.kernel_names,
        operators=source_ops,
    )
    artifacts = link_model(t, code.object, code.weights, info)
    return Package.create(
        t,
        info,
        artifacts,
        extra_manifest={
            "pipeline": str(pipeline) if pipeline is not None else str(default_pipeline(t)),
            "weights_sha256": hashlib.sha256(code.weights).hexdigest(),
            "flops": _flops(lowered),
        },
    )


def _flops(mod: Module) -> int:
    """Floating-point operations of one run: each tensor function's count times the calls to it."""
    funcs = mod.tensor_functions()
    calls = [n.attrs["func"] for n in mod.main.nodes if n.op == "call_tensor"]
    return sum(int(funcs[f].attrs.get("flops", 0)) for f in calls)


def load(path: str | Path) -> Any:
    """Load a saved ``.kpkg``."""
    from .package.kpkg import Package

    return Package.load(path)
