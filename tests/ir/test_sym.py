"""Symbolic dimensions (kiln.ir.Sym): arithmetic in a normal form, so a size built two ways compares equal;
evaluation and bounds agree with plain integer arithmetic at every size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.ir import Sym
from kiln.ir.types import TensorType, bound_of, bound_type

seq, h = Sym("seq"), Sym("h")


def test_equal_sizes_built_differently_are_equal() -> None:
    assert seq * 384 == 384 * seq == (seq * 6) * 64
    assert (seq * 384) // 384 == seq  # a reshape's -1 next to a run-time size
    assert (seq * 384) // seq == 384
    assert seq * 4 + 1 - seq * 4 == 1 and isinstance(seq - seq, int)
    assert seq + h == h + seq and hash(seq + h) == hash(h + seq)
    assert str((h - 1) // 2 + 1) == "(h-1)//2+1"


def test_a_tensor_of_dimensions_folds_shape_arithmetic() -> None:
    dims = np.array([1, seq, 6, 64], dtype=object)
    assert np.prod(dims) == seq * 384
    assert list(dims * 2) == [2, seq * 2, 12, 128]


def test_division_that_is_not_exact_by_a_size_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot divide symbolic dimension"):
        _ = (seq + 1) // h


@given(st.integers(1, 600), st.integers(1, 600), st.integers(1, 7), st.integers(0, 3), st.integers(1, 3))
def test_evaluation_matches_integer_arithmetic(s: int, w: int, k: int, p: int, stride: int) -> None:
    conv = (h + 2 * p - k) // stride + 1  # a convolution's output size
    env = {"h": w, "seq": s}
    assert (conv if isinstance(conv, int) else conv.evaluate(env)) == (w + 2 * p - k) // stride + 1
    mixed = (seq * 3 + h) % 5 + seq * h
    assert mixed.evaluate(env) == (s * 3 + w) % 5 + s * w  # type: ignore[union-attr]


def test_bounds_are_the_sizes_at_the_largest_inputs() -> None:
    t = TensorType((1, seq, (seq - 1) // 2 + 1), "float32")
    assert bound_of(seq, {"seq": 512}) == 512
    assert bound_type(t, {"seq": 512}).static_shape == (1, 512, 256)
    assert bound_type(t, {"seq": 512}).nbytes == 512 * 256 * 4
