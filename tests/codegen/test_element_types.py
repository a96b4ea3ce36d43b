"""Codegen has an LLVM type for every element type of the IR, of the ABI's size in memory."""

from __future__ import annotations

import llvmlite.binding as llvm
import pytest

from kiln.codegen.scalar import ScalarCodegen, ll_type
from kiln.ir import DTYPES
from kiln.runtime_c import abi


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_ir_dtype_has_an_llvm_type_of_its_abi_size(dtype: str) -> None:
    ll_type(dtype)  # a value type (bool is i1 in values)
    target_data = llvm.create_target_data("e-m:e-i64:64-f80:128-n8:16:32:64-S128")
    assert ScalarCodegen.mem_type(dtype).get_abi_size(target_data) == abi.dtype_bytes(dtype)
