"""Generated code uses each target's vector unit for a convolution (checked in the emitted assembly)."""

from __future__ import annotations

import re

import pytest

from graphs import conv_bn_relu
from kiln.codegen import build_llvm_ir, emit_assembly
from kiln.driver import compile_module
from kiln.targets import get_target

# target -> (pattern that proves vector FMA/multiply on the vector registers, description)
VECTOR_PATTERNS = {
    "x86_64-linux": (r"\bvfmadd\d+ps\s+.*%ymm", "AVX2 FMA on ymm registers"),
    "x86_64-linux-avx512": (r"\bvfmadd\d+ps\s+.*%zmm", "AVX-512 FMA on zmm registers"),
    "aarch64-linux": (r"\bfmla\s+v\d+\.4s", "NEON fmla on 4 x f32"),
    "riscv64-linux-rvv": (r"\bvfmacc\.v[fv]|\bvfmadd\.v[fv]", "RVV vector FMA"),
}


@pytest.mark.parametrize("target", sorted(VECTOR_PATTERNS))
def test_convolution_uses_vector_instructions(target: str) -> None:
    t = get_target(target)
    text, _, _ = build_llvm_ir(compile_module(conv_bn_relu(channels=16, size=16), t), t)
    asm = emit_assembly(text, t)
    pattern, what = VECTOR_PATTERNS[target]
    assert re.search(pattern, asm), f"no {what} in the {target} assembly"


def test_scalar_riscv_has_no_vector_instructions() -> None:
    t = get_target("riscv64-linux")
    text, _, _ = build_llvm_ir(compile_module(conv_bn_relu(channels=16, size=16), t), t)
    asm = emit_assembly(text, t)
    assert not re.search(r"\bv(le|se)\d+\.v\b|\bvfmacc", asm)
    assert re.search(r"\bfmadd\.s\b|\bfmul\.s\b", asm)
