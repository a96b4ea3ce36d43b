"""kiln: compile machine-learning models through LLVM into self-contained packages for x86-64, AArch64 and
RISC-V, and run, time and profile them natively, under QEMU or on remote devices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .driver import compile, compile_module, load, load_model


def __getattr__(name: str) -> Any:
    # Keep `import kiln` light: the compiler (llvmlite, onnx) loads on first use.
    if name in ("compile", "compile_module", "load", "load_model"):
        from . import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")


__all__ = ["__version__", "compile", "compile_module", "load", "load_model"]
