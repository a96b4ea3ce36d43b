"""Imports every operator file so that each registers itself. Add new operator files here."""

from . import conv2d, elementwise, matmul, norm, pool, reduce, shape_ops  # noqa: F401
