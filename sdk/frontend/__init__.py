"""Frontends: ONNX (:func:`from_onnx`), PyTorch through torch.export (:func:`from_torch`,
:func:`from_exported_program`; torch is an optional extra, imported only when one of them is first used) and
kiln's own graph-building API (:mod:`kiln.frontend.nn`)."""

from typing import Any

from .nn import GraphBuilder
from .onnx import ModelLoadError, UnsupportedOperatorError, from_onnx

_TORCH = ("from_torch", "from_exported_program", "load_exported_program")

# not _TORCH: `from kiln.frontend import *` stays torch-free
__all__ = ["GraphBuilder", "ModelLoadError", "UnsupportedOperatorError", "from_onnx"]


def __getattr__(name: str) -> Any:
    if name in _TORCH:  # imports torch: only on first use
        from . import torch as _torch_frontend

        return getattr(_torch_frontend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
