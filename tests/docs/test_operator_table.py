"""docs/reference/operators.md is what ``scripts/gen-operator-table`` writes from the operator registry, the
ONNX converter table and the operator test catalogue: a new operator or converter without regenerating the
page fails here (run ``scripts/gen-operator-table``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # imports every operator test case and a sample of ONNX's node cases (~30 s)
def test_operator_table_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-operator-table"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"{proc.stderr}\n{proc.stdout[-4000:]}"


def test_every_kiln_operator_and_converter_is_on_the_page() -> None:
    """Cheap structural check of the committed page (the fast tier): every registered kiln operator and
    every ONNX operator with a converter has a row."""
    from kiln.frontend.onnx import CONVERTERS

    # kiln's own operators, from a fresh interpreter: other tests register custom operators in this process
    code = "import kiln.ops._all; from kiln.ops import all_ops; print('\\n'.join(sorted(all_ops())))"
    own = set(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    page = (ROOT / "docs" / "reference" / "operators.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in page.splitlines() if line.startswith("| ")}
    assert own and own <= rows, sorted(own - rows)
    import onnx

    standard = {s.name for s in onnx.defs.get_all_schemas() if s.domain in ("", "ai.onnx")}
    assert set(CONVERTERS) & standard <= rows, sorted(set(CONVERTERS) & standard - rows)
