"""The ABI table in Python (kiln.runtime_c.abi) against the C headers, checked by the C compiler itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.package import toolchain
from kiln.package.toolchain import ToolchainError
from kiln.runtime_c import abi
from kiln.targets import get_target


def _compile(source: str, tmp_path: Path) -> None:
    src = tmp_path / "abi_check.c"
    src.write_text(source)
    toolchain.compile_c(get_target("x86_64-linux"), src, tmp_path / "abi_check.o")


def test_every_abi_constant_matches_the_headers(tmp_path: Path) -> None:
    _compile(abi.c_assertions(), tmp_path)


def test_a_drifted_constant_fails_to_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(abi, "ALIGNMENT", 32)
    with pytest.raises(ToolchainError, match="KILN_ALIGNMENT != 32"):
        _compile(abi.c_assertions(), tmp_path)


def test_the_assertions_cover_every_table() -> None:
    text = abi.c_assertions()
    reasons = [name for name, _ in abi.ERROR_REASONS.values()]
    for name in [*abi.STATUS, *abi.RUNNER_EXIT, *(f"KILN_MSG_{m.name}" for m in abi.Msg), *reasons]:
        assert f"({name}) ==" in text
    assert "sizeof(kiln_profile_record_t)" in text


def test_dtype_tables_are_inverse() -> None:
    assert {abi.DTYPES[n]: n for n in abi.DTYPES} == abi.DTYPE_NAMES
    assert abi.dtype_bytes("float32") == 4 and abi.dtype_bytes("bfloat16") == 2


def test_every_error_reason_has_a_wording_for_its_numbers_and_text() -> None:
    numbers = (11, 22, 33, 44)
    for reason, (name, wording) in abi.ERROR_REASONS.items():
        text = abi.error_message(reason, numbers, "t{0}")
        assert "{" not in text.replace("t{0}", ""), name  # every placeholder filled, the text taken as is
        for i, n in enumerate(numbers):
            assert (f"{{{i}}}" in wording) == (str(n) in text), (name, i)
    assert abi.error_message(0, (0, 0, 0, 0), "the board faulted") == "the board faulted"
    unknown = abi.error_message(200, (1, 2, 3, 4), "x")
    assert "reason 200" in unknown and "1, 2, 3, 4" in unknown and unknown.endswith(": x")
