"""Frontends: ONNX (:func:`from_onnx`) and kiln's own graph-building API (:mod:`kiln.frontend.nn`)."""

from .nn import GraphBuilder
from .onnx import ModelLoadError, UnsupportedOperatorError, from_onnx

__all__ = ["GraphBuilder", "ModelLoadError", "UnsupportedOperatorError", "from_onnx"]
