"""Helpers for the board tests: the SDK's boards, user board files, skipping without qemu-system."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from kiln.targets import get_target, list_targets
from kiln.targets.board import board_of

TARGETS_DIR = Path(get_target("mps2-an386").source).parent
BOARDS = [t.name for t in list_targets() if board_of(t) is not None]


def needs_emulator(board: str) -> pytest.MarkDecorator:
    exe = get_target(board).emulator[0]
    return pytest.mark.skipif(shutil.which(exe) is None, reason=f"{exe} is not installed (scripts/setup)")


def on_boards(boards: list[str] | None = None) -> list[object]:
    """pytest.param per board, each skipped when its emulator is missing."""
    return [pytest.param(b, marks=needs_emulator(b), id=b) for b in boards or BOARDS]


def user_board(directory: Path, name: str, base: str = "mps2-an386", **fields: object) -> Path:
    """A board file in ``directory`` (for KILN_TARGET_PATH): a copy of ``base`` renamed ``name`` with
    ``fields`` replaced (values in TOML syntax; None removes the field)."""
    text = (TARGETS_DIR / f"{base}.toml").read_text()
    text = re.sub(r'^name = ".*"$', f'name = "{name}"', text, flags=re.M)
    for key, value in fields.items():
        pattern = rf"^{re.escape(key)} = .*$\n"
        text = re.sub(pattern, "" if value is None else f"{key} = {value}\n", text, flags=re.M)
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path
