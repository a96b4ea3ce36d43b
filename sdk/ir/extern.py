"""Code that kiln links but does not generate: the sources behind ``call_extern`` nodes and behind tensor
functions whose code a target emits itself.

A pass that creates such calls records an :class:`ExternSource` in the module attribute ``externs`` (a
tuple, one record per library or override; :func:`add_extern` merges by name). Code generation compiles the
LLVM IR ones for the target itself; the C ones are compiled with the target's C toolchain by the package
step, and every resulting object is linked into the package next to the generated code. A tensor function
whose code comes from an :class:`ExternSource` carries ``attrs["extern_symbol"]``: codegen calls that symbol
instead of emitting the loop nest.

The records are plain data (file names and texts, no paths to read later), so a module stays a value: the
same module compiles to the same package anywhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

#: The module attribute holding the tuple of :class:`ExternSource`.
ATTR = "externs"
KINDS = ("c", "llvm")


@dataclass(frozen=True)
class ExternSource:
    """One unit of foreign code. ``kind`` is ``c`` (``files`` are C sources and headers, compiled one object
    per ``.c`` file with ``include_dirs`` and ``flags`` added) or ``llvm`` (``files`` hold one ``.ll`` text
    for the target's triple). ``symbols`` are the functions it defines that the model calls."""

    name: str
    kind: str
    files: tuple[tuple[str, str], ...]
    symbols: tuple[str, ...] = ()
    include_dirs: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"extern {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "llvm" and len(self.files) != 1:
            raise ValueError(f"extern {self.name!r}: LLVM code is one .ll text")
        names = [n for n, _ in self.files]
        if len(set(names)) != len(names) or any("/" in n or n.startswith(".") for n in names):
            raise ValueError(f"extern {self.name!r}: file names must be unique plain names, got {names}")

    @property
    def sources(self) -> tuple[tuple[str, str], ...]:
        """The files compiled to objects (``.c`` files, or the one ``.ll`` text)."""
        if self.kind == "llvm":
            return self.files
        return tuple((n, t) for n, t in self.files if n.endswith((".c", ".S", ".s")))

    def with_file(self, name: str, text: str, *symbols: str) -> ExternSource:
        """A copy with file ``name`` set to ``text`` (added or replaced) and ``symbols`` added."""
        files = tuple((n, t) for n, t in self.files if n != name) + ((name, text),)
        return replace(self, files=files, symbols=tuple(dict.fromkeys((*self.symbols, *symbols))))

    def sha256(self) -> str:
        h = hashlib.sha256()
        for part in (self.name, self.kind, *self.symbols, *self.include_dirs, *self.flags):
            h.update(part.encode() + b"\0")
        for n, t in self.files:
            h.update(n.encode() + b"\0" + t.encode() + b"\0")
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What a package manifest records about it."""
        return {
            "name": self.name,
            "kind": self.kind,
            "files": [n for n, _ in self.files],
            "symbols": list(self.symbols),
            "sha256": self.sha256(),
        }


def externs(attrs: dict[str, Any]) -> tuple[ExternSource, ...]:
    return tuple(attrs.get(ATTR, ()))


def add_extern(attrs: dict[str, Any], src: ExternSource) -> dict[str, Any]:
    """``attrs`` with ``src`` in ``externs``, replacing a record of the same name (which it extends)."""
    rest = tuple(e for e in externs(attrs) if e.name != src.name)
    return {**attrs, ATTR: (*rest, src)}


def get_extern(attrs: dict[str, Any], name: str) -> ExternSource | None:
    return next((e for e in externs(attrs) if e.name == name), None)
