"""kiln IR: one module holds graph-level functions (dataflow of operator calls) and tensor-level functions
(loop nests over buffers). See :mod:`kiln.ir.graph` and :mod:`kiln.ir.tensor`."""

from .equality import assert_structural_equal, first_difference, structural_equal
from .graph import Constant, GraphFunction, Node, Value, Var
from .module import Function, Module, print_module
from .parser import ParseError, parse_module, register_record
from .printer import constant_table
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
    "ParseError",
    "Sym",
    "TensorFunction",
    "TensorType",
    "TypeRules",
    "Value",
    "Var",
    "VerifyError",
    "assert_structural_equal",
    "constant_table",
    "dtype_of",
    "first_difference",
    "itemsize",
    "np_dtype",
    "parse_module",
    "print_module",
    "register_record",
    "structural_equal",
    "verify",
]
