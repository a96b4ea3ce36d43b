"""Passes (one per file, each a pure ``Module -> Module`` function) and pipelines; rewrites that hand
operators to libraries or tensor functions of one's own (:mod:`.dispatch`, :mod:`.patterns`) and
code-generation overrides (:mod:`.codegen_override`)."""

from . import (
    _all,  # noqa: F401  (imports every pass file, which registers itself)
    codegen_override,
    dispatch,
    patterns,
)
from .pipeline import (
    PHASES,
    Pass,
    PassContext,
    Pipeline,
    all_passes,
    default_pipeline,
    get_pass,
    hook,
    register_hook,
    register_pass,
    target_hooks,
)

__all__ = [
    "PHASES",
    "Pass",
    "PassContext",
    "Pipeline",
    "all_passes",
    "codegen_override",
    "default_pipeline",
    "dispatch",
    "get_pass",
    "hook",
    "patterns",
    "register_hook",
    "register_pass",
    "target_hooks",
]
