"""Imports every operator file so that each registers itself. Add new operator files here."""

from . import (  # noqa: F401
    conv2d,
    conv_transpose,
    einsum,
    elementwise,
    grid_sample,
    indexing,
    math_fns,
    matmul,
    norm,
    ordering,
    pool,
    reduce,
    reduce_more,
    resize,
    shape_compute,
    shape_ops,
    tile,
)
