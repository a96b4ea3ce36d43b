"""ONNX's own per-operator test cases (``onnx.backend.test.case.node``) through ``from_onnx`` + ``interpret``.

Every in-scope case (see ``onnx_node_suite``: what is excluded and why, which inputs become constants) whose
operators kiln imports runs here with the NumPy references; ``test_onnx_node_compiled.py`` runs them
compiled. The expected outputs are the ones ONNX ships with the case (computed by its reference
implementation), compared with the case's own tolerances.
"""

from __future__ import annotations

import onnx_node_suite as suite
import pytest

from kiln.frontend.onnx import CONVERTERS

# the known failures are counted (and expected to fail) in test_onnx_node_compiled.py
SUPPORTED = sorted(
    n
    for n in suite.IN_SCOPE
    if suite._ops(suite.CASES[n]) <= set(CONVERTERS) and n not in suite.KNOWN_FAILURES
)


def test_the_conformance_suite_covers_the_operators_kiln_imports() -> None:
    covered = set().union(*(suite._ops(suite.CASES[n]) for n in SUPPORTED))
    assert len(SUPPORTED) > 1000
    for op in ("Resize", "Slice", "Pad", "Gather", "Softmax", "LRN", "MaxPool", "AveragePool", "Split"):
        assert op in covered
    for op in ("ConvTranspose", "TopK", "Einsum", "ScatterND", "GatherND", "CumSum", "ArgMax", "Trilu"):
        assert op in covered


@pytest.mark.parametrize("name", SUPPORTED)
def test_onnx_node_case(name: str) -> None:
    suite.run_case(name, suite.interpreted_runner)
