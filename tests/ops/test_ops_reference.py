"""Every operator's NumPy reference against onnxruntime, on single-node ONNX models (tests/op_cases.py).

Each case imports the node with ``from_onnx`` (which must produce exactly the expected kiln operators),
runs it with the references while checking that every result has the shape and dtype ``infer`` promised,
and compares the outputs with onnxruntime's.
"""

from __future__ import annotations

import numpy as np
import pytest
from op_cases import CASES, interpret_checked, ort_outputs

from kiln.frontend import from_onnx


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_reference_matches_onnxruntime(case_id: str) -> None:
    case = CASES[case_id]
    model = case.model
    want = ort_outputs(model, case.feed)
    mod = from_onnx(model)
    assert {n.op for n in mod.main.nodes} == case.kiln_ops
    got = interpret_checked(mod, case.feed)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape and g.dtype == w.dtype, (
            f"{name}: {g.dtype}{g.shape} vs onnxruntime {w.dtype}{w.shape}"
        )
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g, w, rtol=case.rtol, atol=case.atol, err_msg=name)
