"""kiln IR: one module holds graph-level functions (dataflow of operator calls) and tensor-level functions
(loop nests over buffers). See :mod:`kiln.ir.graph` and :mod:`kiln.ir.tensor`."""

from .graph import Constant, GraphFunction, Node, Value, Var
from .module import Function, Module, print_module
from .tensor import Buffer, TensorFunction
from .types import DTYPES, Dim, Sym, TensorType, dtype_of, itemsize, np_dtype
from .verifier import InferFn, TypeRules, VerifyError, verify

__all__ = [
    "DTYPES",
    "Buffer",
    "Constant",
    "Dim",
    "Function",
    "GraphFunction",
    "InferFn",
    "Module",
    "Node",
    "Sym",
    "TensorFunction",
    "TensorType",
    "TypeRules",
    "Value",
    "Var",
    "VerifyError",
    "dtype_of",
    "itemsize",
    "np_dtype",
    "print_module",
    "verify",
]
