"""kiln.package: toolchain (zig cc), linking (runner, libmodel.a, model.h) and packages (.kpkg).

The compile driver calls ``link_model(target, object, weights, ModelInfo(...))`` and wraps the result with
``Package.create(target, info, linked)``; see docs/topics/runtime.md.
"""

from kiln.package.kpkg import Package, PackageError
from kiln.package.link import LinkedModel, ModelInfo, link_model
from kiln.package.toolchain import ToolchainError

__all__ = ["LinkedModel", "ModelInfo", "Package", "PackageError", "ToolchainError", "link_model"]
