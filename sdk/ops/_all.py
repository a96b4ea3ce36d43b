"""Imports every operator file so that each registers itself. Add new operator files here."""

from . import conv2d, elementwise, matmul, norm, pool, reduce, resize, shape_compute, shape_ops, tile  # noqa: F401
