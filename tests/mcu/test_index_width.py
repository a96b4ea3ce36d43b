"""32-bit targets index with 32-bit arithmetic: no 64-bit add/subtract carry chains in a 3x3 convolution
(before, armv7 code for it carried some 25 adc/sbc pairs from int64 indices)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.codegen import build_llvm_ir, emit_assembly
from kiln.driver import compile_module, load_model
from kiln.targets import get_target


def conv3x3() -> bytes:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype("f4"), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "conv3x3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("target", ["armv7-linux", "mps2-an386", "mps3-an547", "riscv32-virt"])
def test_a_conv_on_a_32_bit_target_has_no_64_bit_index_arithmetic(target: str) -> None:
    t = get_target(target)
    assert t.pointer_bits == 32
    text, _, _ = build_llvm_ir(compile_module(load_model(conv3x3()), t), t)
    assert not re.search(r"phi\s+i64", text) and re.search(r"phi\s+i32", text)
    asm = emit_assembly(text, t)
    carries = re.findall(r"^\s*(adcs?|sbcs?|sltu)\b", asm, flags=re.M)
    assert len(carries) <= 2, carries  # at most a stray compare, no carry chains


def test_64_bit_targets_keep_64_bit_indices() -> None:
    t = get_target("aarch64-linux")
    text, _, _ = build_llvm_ir(compile_module(load_model(conv3x3()), t), t)
    assert t.pointer_bits == 64 and re.search(r"phi\s+i64", text)


def _conv_asm(target: str) -> str:
    t = get_target(target)
    text, _, _ = build_llvm_ir(compile_module(load_model(conv3x3()), t), t)
    return emit_assembly(text, t)


def test_the_cortex_m55_build_uses_mve() -> None:
    """Helium (MVE): float arithmetic and loads/stores on q registers in the M55's conv; none on the M4."""
    asm = _conv_asm("mps3-an547")
    found = set(re.findall(r"^\s*(v[a-z]+\.[a-z0-9.]+)\s+q\d", asm, flags=re.M))
    assert found & {"vfma.f32", "vadd.f32", "vmul.f32"}, sorted(found)
    assert any(f.startswith(("vldrw", "vstrw")) for f in found), sorted(found)
    assert not re.search(r"^\s*v[a-z]+(\.[a-z0-9]+)*\s+q\d", _conv_asm("mps2-an386"), flags=re.M)
