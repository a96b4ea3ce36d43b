"""Shape inference with a symbolic batch dimension: it passes through every operator that does not need it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kiln.ir import Sym, TensorType
from kiln.ops import get_op

N = Sym("N")
X4 = TensorType((N, 3, 8, 8))
X3 = TensorType((N, 5, 6))
C3 = TensorType((3,))

CASES = [
    ("relu", [X4], {}, (N, 3, 8, 8)),
    ("add", [X4, TensorType((3, 1, 1))], {}, (N, 3, 8, 8)),
    ("batch_norm", [X4, C3, C3, C3, C3], {}, (N, 3, 8, 8)),
    ("conv2d", [X4, TensorType((4, 3, 3, 3))], {"pads": (1, 1, 1, 1)}, (N, 4, 8, 8)),
    ("max_pool2d", [X4], {"kernel": (2, 2), "strides": (2, 2)}, (N, 3, 4, 4)),
    ("avg_pool2d", [X4], {"kernel": (3, 3), "pads": (1, 1, 1, 1)}, (N, 3, 8, 8)),
    ("global_avg_pool2d", [X4], {}, (N, 3, 1, 1)),
    ("lrn", [X4], {"size": 3}, (N, 3, 8, 8)),
    ("softmax", [X3], {"axis": -1}, (N, 5, 6)),
    ("log_softmax", [X3], {"axis": 1}, (N, 5, 6)),
    ("layer_norm", [X3, TensorType((6,))], {"axis": -1}, (N, 5, 6)),
    ("reduce_mean", [X3], {"axes": (1,), "keepdims": 0}, (N, 6)),
    ("reduce_sum", [X3], {"axes": (-1,), "keepdims": 1}, (N, 5, 1)),
    ("reduce_max", [X3], {"axes": (1, 2), "keepdims": 1}, (N, 1, 1)),
    ("reshape", [X3], {"shape": (N, 30)}, (N, 30)),
    ("transpose", [X3], {"perm": (0, 2, 1)}, (N, 6, 5)),
    ("concat", [X3, TensorType((N, 2, 6))], {"axis": 1}, (N, 7, 6)),
    ("slice", [X3], {"starts": (1,), "ends": (4,), "axes": (1,)}, (N, 3, 6)),
    ("split", [X3], {"axis": 2, "sizes": (2, 4)}, (N, 5, 2)),
    ("gather", [X3, TensorType((2,), "int64")], {"axis": 2}, (N, 5, 2)),
    ("pad", [X3], {"pads": (0, 1, 0, 0, 1, 2)}, (N, 7, 8)),
    ("expand", [TensorType((N, 1, 6))], {"shape": (1, 5, 6)}, (N, 5, 6)),
    ("tile", [X3], {"repeats": (1, 2, 1)}, (N, 10, 6)),
    ("resize", [X4], {"scales": (2.0, 2.0)}, (N, 3, 16, 16)),
    ("matmul", [X3, TensorType((6, 4))], {}, (N, 5, 4)),
    ("shape", [X3], {}, (3,)),
]


@pytest.mark.parametrize(("op", "inputs", "attrs", "shape"), CASES, ids=[c[0] for c in CASES])
def test_symbolic_batch_passes_through(op: str, inputs: list, attrs: dict, shape: tuple) -> None:
    assert get_op(op).infer(inputs, attrs)[0].shape == shape


def test_every_operator_is_covered_by_a_reference_case() -> None:
    from op_cases import CASES as NODE_CASES

    from kiln.frontend import from_onnx
    from kiln.ops import all_ops

    # kiln's own operators, from a fresh interpreter: tests and examples register custom operators (kiln.ops.script)
    # in this process's registry
    code = "from kiln.ops import all_ops; print('\\n'.join(sorted(all_ops())))"
    builtin = set(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    assert builtin <= set(all_ops())
    seen = {n.op for c in NODE_CASES.values() for n in from_onnx(c.model).main.nodes}
    # fold at import; tested in tests/frontend
    import_only = {"constant_of_shape", "range", "shape", "mel_weight_matrix"}
    assert builtin - seen - import_only == set()
