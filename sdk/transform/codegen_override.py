"""Code-generation overrides: a target emits the object code of chosen tensor functions itself.

    from kiln.transform.codegen_override import CCode, codegen_override

    @codegen_override
    def relu_in_c(req):
        if req.func.attrs.get("ops") != ["relu"]:
            return None                      # kiln generates this one
        n = req.func.params[0].numel
        return CCode(f"{req.c_signature} {{ for (long i = 0; i < {n}; i++) out0[i] = in0[i] > 0 ? in0[i] : 0; }}")

The decorated function becomes a pass of phase ``before_codegen`` (so it sees the final tensor functions,
after memory planning). It is asked once per tensor function with a :class:`CodegenRequest` and returns
:class:`CCode` (compiled with the target's C toolchain, like the runtime), :class:`LLVMCode` (LLVM IR text that
code generation optimizes and compiles for the target) or None. The code must define ``req.symbol`` with
kiln's convention for tensor functions: ``void symbol(T0 *p0, ..., T *pN)`` over the function's buffers
(inputs, then outputs; dense row-major), plus a trailing ``uint8_t *scratch`` when the function's own lowering
uses workspace (``req.scratch``). kiln keeps the call (and its profile entry, under the function's name) and
links the object into the package; the tensor function's body stays in the IR, for reading and for tests.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..ir import Module, TensorFunction
from ..ir.extern import ExternSource, add_extern
from ..ir.tensor import workspace_bytes

#: the C type of a buffer element of each dtype in foreign code (code-generation overrides, library adapters)
C_TYPES = {
    "float32": "float",
    "float64": "double",
    "int8": "int8_t",
    "uint8": "uint8_t",
    "int16": "int16_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "bool": "uint8_t",
    "float16": "uint16_t",
}


@dataclass(frozen=True)
class CodegenRequest:
    """What an override is asked: emit ``symbol`` computing tensor function ``func`` for ``target``."""

    func: TensorFunction
    symbol: str
    target: Any
    scratch: bool

    @property
    def c_signature(self) -> str:
        """The C declarator of ``symbol``: ``void symbol(const float *restrict in0, ..., float *restrict out0)``,
        parameters named ``in<i>``/``out<j>`` (and ``scratch``)."""
        f = self.func
        params = [f"const {C_TYPES[b.dtype]} *restrict in{i}" for i, b in enumerate(f.inputs)]
        params += [f"{C_TYPES[b.dtype]} *restrict out{j}" for j, b in enumerate(f.outputs)]
        if self.scratch:
            params.append("uint8_t *restrict scratch")
        return f"void {self.symbol}({', '.join(params)})"


@dataclass(frozen=True)
class CCode:
    """C source defining the requested symbol; ``headers`` are ``(file name, text)`` pairs it includes."""

    source: str
    headers: tuple[tuple[str, str], ...] = ()
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class LLVMCode:
    """LLVM IR text defining the requested symbol (any triple and data layout: the target's replace them)."""

    text: str


Emitter = Callable[[CodegenRequest], CCode | LLVMCode | None]


class CodegenOverride:
    """A ``before_codegen`` pass asking ``fn`` for each tensor function's code (see the module doc)."""

    kiln_phase = "before_codegen"
    kiln_when = "after"

    def __init__(self, fn: Emitter) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, mod: Module) -> Module:
        attrs = dict(mod.attrs)
        funcs = dict(mod.functions)
        target = mod.attrs.get("target")
        for name, f in mod.tensor_functions().items():
            if "extern_symbol" in f.attrs:
                continue  # an earlier override took it
            symbol = f"kiln_cg_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
            req = CodegenRequest(f, symbol, target, workspace_bytes(f) > 0)
            code = self.fn(req)
            if code is None:
                continue
            if isinstance(code, CCode):
                src = ExternSource(
                    symbol,
                    "c",
                    ((f"{symbol}.c", _c_prelude(code.source)), *code.headers),
                    (symbol,),
                    (),
                    code.flags,
                )
            elif isinstance(code, LLVMCode):
                src = ExternSource(symbol, "llvm", ((f"{symbol}.ll", code.text),), (symbol,))
            else:
                raise TypeError(
                    f"codegen override {self!r} returned {type(code).__name__}; expected CCode, LLVMCode or None"
                )
            attrs = add_extern(attrs, src)
            by = f"{self.__module__}:{self.__qualname__}"  # type: ignore[attr-defined]
            funcs[name] = f.with_(attrs={**f.attrs, "extern_symbol": symbol, "codegen": by})
        return mod.with_functions(funcs).with_attrs(**attrs) if funcs != mod.functions else mod

    def __repr__(self) -> str:
        return f"<codegen override {self.__module__}:{self.__qualname__}>"  # type: ignore[attr-defined]


def _c_prelude(source: str) -> str:
    return "#include <stdint.h>\n#include <stddef.h>\n\n" + source


def codegen_override(fn: Emitter) -> CodegenOverride:
    """Decorator: make ``fn`` a code-generation override pass (see the module doc)."""
    return CodegenOverride(fn)


__all__ = ["C_TYPES", "CCode", "CodegenOverride", "CodegenRequest", "LLVMCode", "codegen_override"]
