"""Element types: the IR's table is the part of the ABI's that the compiler handles, and cannot drift from it;
tile loops with a single iteration bind their index to the constant 0."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.ir import DTYPES, TensorType, dtype_of, itemsize
from kiln.ir import tensor as T
from kiln.ir.types import _abi_dtypes
from kiln.runtime_c import abi


def test_every_ir_dtype_is_an_abi_dtype_of_the_same_size() -> None:
    for name, npdt in DTYPES.items():
        assert name in abi.DTYPES
        assert abi.dtype_bytes(name) == npdt.itemsize == itemsize(name)
        assert dtype_of(npdt) == name


def test_a_dtype_the_abi_does_not_have_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="'complex64' is not an element type of kiln.runtime_c.abi.DTYPES"):
        _abi_dtypes("float32", "complex64")


def test_types_outside_the_table_are_refused_with_the_known_ones() -> None:
    with pytest.raises(TypeError, match="unknown dtype 'bfloat16'; kiln supports float32, float64"):
        TensorType((2,), "bfloat16")
    with pytest.raises(TypeError, match="unsupported element type complex64"):
        dtype_of(np.zeros(2, np.complex64))


def test_loop_or_once() -> None:
    out = T.Buffer("out", (8,))
    many = T.loop_or_once(2, lambda t: T.Store(out, (t * 4,), T.FloatImm(0.0)), name="t")
    assert isinstance(many, T.For) and many.var.name == "t" and many.extent.value == 2  # type: ignore[attr-defined]
    once = T.loop_or_once(1, lambda t: T.Store(out, (t * 4 + 3,), T.FloatImm(0.0)), name="t")
    assert isinstance(once, T.Store) and isinstance(once.indices[0], T.IntImm) and once.indices[0].value == 3
