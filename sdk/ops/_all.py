"""Imports every operator file so that each registers itself. Add new operator files here."""

from . import conv2d, elementwise, matmul  # noqa: F401
