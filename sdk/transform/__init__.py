"""Passes (one per file, each a pure ``Module -> Module`` function) and pipelines."""

from . import _all  # noqa: F401  (imports every pass file, which registers itself)
from .pipeline import (
    PHASES,
    Pass,
    PassContext,
    Pipeline,
    all_passes,
    default_pipeline,
    get_pass,
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
    "default_pipeline",
    "get_pass",
    "register_hook",
    "register_pass",
    "target_hooks",
]
