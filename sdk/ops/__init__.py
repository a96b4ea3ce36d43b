"""Operator registry: per operator one place with shape inference, a NumPy reference, its fusion kind and its
lowering to a tensor function. See :mod:`kiln.ops.base`."""

from . import _all  # noqa: F401  (imports every operator file, which registers itself)
from .base import Elementwise, LowerContext, OpDef, OpError, all_ops, get_op, has_op, register, type_rule

__all__ = [
    "Elementwise",
    "LowerContext",
    "OpDef",
    "OpError",
    "all_ops",
    "get_op",
    "has_op",
    "register",
    "type_rule",
]
