"""Generated code follows each bare-metal Arm board's ABI, EABI with hard float (thumbv*-none-eabihf, like the
runtime zig builds for it): floats in FP registers at calls, and the ``__aeabi_*`` helper names that the Arm
compiler_rt defines (LLVM reads a triple literally: without a vendor part it lost the EABI environment)."""

from __future__ import annotations

import re

import pytest

from kiln.codegen import emit_assembly
from kiln.targets import get_target, list_targets

ARM_BOARDS = sorted(t.name for t in list_targets() if t.triple.startswith("thumb"))

IR = """
define float @add(float %a, float %b) {
  %s = fadd float %a, %b
  ret float %s
}
define float @from_i64(i64 %x) {
  %y = sitofp i64 %x to float
  ret float %y
}
define i64 @to_i64(float %x) {
  %y = fptosi float %x to i64
  ret i64 %y
}
"""


def test_the_arm_boards_are_checked() -> None:
    assert len(ARM_BOARDS) >= 3, ARM_BOARDS


@pytest.mark.parametrize("board", ARM_BOARDS)
def test_bare_metal_arm_code_uses_the_hard_float_eabi(board: str) -> None:
    asm = emit_assembly(IR, get_target(board))
    add = asm.split("add:", 1)[1].split(".Lfunc_end", 1)[0]
    assert re.search(r"vadd\.f32\s+s0,\s*s0,\s*s1", add) and "vmov" not in add, add  # arguments in s0, s1
    calls = set(re.findall(r"\bbl?\s+(__\w+)", asm))
    assert calls == {"__aeabi_l2f", "__aeabi_f2lz"}, calls
