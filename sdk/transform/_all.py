"""Imports every pass file so that each registers itself. Add new pass files here."""

from . import (  # noqa: F401
    eliminate_dead_code,
    fold_batch_norm,
    fold_constants,
    fuse_ops,
    fuse_qdq,
    legalize,
    plan_memory,
    simplify,
    widen_float16,
)
