"""Passes (one per file, each a pure ``Module -> Module`` function) and pipelines."""

from .pipeline import Pass, PassContext, Pipeline, all_passes, default_pipeline, get_pass, register_pass

__all__ = ["Pass", "PassContext", "Pipeline", "all_passes", "default_pipeline", "get_pass", "register_pass"]
