"""Linking: generated object + weights + descriptor + runtime -> runner, ``libmodel.a``, ``model.h``.

Inputs (docs/topics/runtime-abi.md): the code generator's object defines ``<prefix>_entry`` and references
``<prefix>_weights`` (the names are :mod:`kiln.runtime_c.abi`'s, from the model's symbol prefix,
``kiln_model`` by default); :class:`ModelInfo` describes the model. :func:`link_model` writes, in a
temporary directory with fixed file names:

- ``model_desc.c``: the ``kiln_model_t`` descriptor (symbol ``<prefix>``) built from the ModelInfo;
- ``weights.S``: ``.incbin`` of the weights blob as the 64-byte-aligned symbol ``<prefix>_weights`` in
  ``.rodata`` (works for blobs of hundreds of MB on every target; the blob is never parsed);
- ``libmodel.a``: generated object, extra objects, descriptor, weights, runtime (core + platform defaults);
- for Linux targets ``runner``: ``kiln_runner_main.o`` + ``libmodel.a``, static (musl), without debug
  info but with its symbol table (instruction counts per kernel read the kernels' address ranges from it:
  :mod:`kiln.device.icount`), ``--gc-sections``, ``--build-id=none``.
- for boards (bare-metal targets) ``image.elf``: a firmware image (see :mod:`kiln.package.firmware`) with
  the model's static memory (``<prefix>_memory``) added to ``model_desc.c``, and its linker map.

Deterministic: objects carry no debug info or absolute paths, archives are built in deterministic mode and
the executable has no build id, so the same inputs give byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.codegen.target_machine import cache_get, cache_key, cache_put
from kiln.package import toolchain
from kiln.runtime_c import abi
from kiln.targets import Target, get_target
from kiln.targets.board import board_of

TensorSpec = tuple[str, str, tuple[int, ...]]


@dataclass(frozen=True)
class ModelInfo:
    """What the build needs to know about a compiled model.

    ``inputs``/``outputs`` are ``(name, dtype, shape)`` in the order of ``kiln_model_entry``'s arguments;
    dtype is a name from ``kiln.abi.DTYPES`` (``"float32"``, ``"int64"``, ...), shape a tuple of
    non-negative ints. ``kernel_names[i]`` is the kernel that the generated code profiles as index ``i``.
    ``operators`` (operator types in the model) only goes into the package manifest.
    """

    name: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    workspace_bytes: int
    kernel_names: Sequence[str] = ()
    operators: Sequence[str] = ()
    #: kernel calls in one run (profiler records a firmware image reserves); 0: twice the kernels, >= 16
    kernel_calls: int = 0
    #: prefix of the model's global symbols (:func:`kiln.runtime_c.abi.model_symbol` and friends)
    prefix: str = abi.DEFAULT_PREFIX
    #: dynamic shapes: the run-time dimensions' bounds (the first ``named_dims`` are the inputs' named sizes)
    #: and, per input and output, which dimension gives each size (-1: fixed; empty: every size fixed).
    #: Shapes hold the bounds.
    dim_bounds: Sequence[int] = ()
    named_dims: int = 0
    input_dims: Sequence[Sequence[int]] = ()
    output_dims: Sequence[Sequence[int]] = ()

    def __post_init__(self) -> None:
        norm = {
            "inputs": tuple((str(n), str(d), tuple(int(x) for x in s)) for n, d, s in self.inputs),
            "outputs": tuple((str(n), str(d), tuple(int(x) for x in s)) for n, d, s in self.outputs),
            "kernel_names": tuple(str(k) for k in self.kernel_names),
            "operators": tuple(str(o) for o in self.operators),
            "dim_bounds": tuple(int(b) for b in self.dim_bounds),
            "input_dims": tuple(tuple(int(k) for k in d) for d in self.input_dims)
            or ((),) * len(self.inputs),
            "output_dims": tuple(tuple(int(k) for k in d) for d in self.output_dims)
            or ((),) * len(self.outputs),
        }
        for key, value in norm.items():
            object.__setattr__(self, key, value)
        self.validate()

    def validate(self) -> None:
        """Raises ValueError naming the offending tensor/field if the info cannot describe a runtime model."""
        if not self.name:
            raise ValueError("ModelInfo.name must not be empty")
        try:
            abi.check_prefix(self.prefix)
        except ValueError as e:
            raise ValueError(f"model {self.name!r}: {e}") from None
        if self.workspace_bytes < 0:
            raise ValueError(f"model {self.name!r}: workspace_bytes must be >= 0, got {self.workspace_bytes}")
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            names = [t[0] for t in tensors]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"model {self.name!r}: duplicate {kind} names {dupes}")
            for name, dtype, shape in tensors:
                if dtype not in abi.DTYPES:
                    raise ValueError(
                        f"model {self.name!r}: {kind} {name!r} has dtype {dtype!r}; supported dtypes are "
                        f"{', '.join(abi.DTYPES)}"
                    )
                if any(d < 0 for d in shape):
                    raise ValueError(
                        f"model {self.name!r}: {kind} {name!r} has shape {shape}; the runtime needs static "
                        "non-negative extents (bind symbolic dimensions before linking)"
                    )
        if len(self.dim_bounds) > abi.MAX_DIMS or not 0 <= self.named_dims <= len(self.dim_bounds):
            raise ValueError(
                f"model {self.name!r}: {len(self.dim_bounds)} run-time dimensions (at most {abi.MAX_DIMS})"
            )
        for kind, tensors, dims in (
            ("input", self.inputs, self.input_dims),
            ("output", self.outputs, self.output_dims),
        ):
            for (name, _, shape), ks in zip(tensors, dims, strict=True):
                if ks and (len(ks) != len(shape) or any(not -1 <= k < len(self.dim_bounds) for k in ks)):
                    raise ValueError(f"model {self.name!r}: {kind} {name!r} has run-time dimensions {ks}")

    @staticmethod
    def nbytes(spec: TensorSpec) -> int:
        """Byte size of a dense tensor ``(name, dtype, shape)``."""
        count = 1
        for d in spec[2]:
            count *= d
        return count * abi.DTYPES[spec[1]][1] // 8


@dataclass(frozen=True)
class LinkedModel:
    """Outputs of :func:`link_model` (``runner`` is None for bare-metal targets, ``image`` for Linux ones)."""

    runner: bytes | None
    libmodel: bytes
    model_h: bytes
    code_size: int
    weight_bytes: int
    image: Any = None  # kiln.package.firmware.Image for a board
    #: where the weights blob lies in ``libmodel`` and in the runnable (runner or image ELF), as byte offsets
    #: ``(in_libmodel, in_runnable)``; None if it is empty or not found verbatim in both. A package stores
    #: the blob once (:mod:`kiln.package.kpkg`).
    weights_at: tuple[int, int] | None = None


def link_model(
    target: Target | str,
    model_object: bytes,
    weights: bytes | Path,
    info: ModelInfo,
    *,
    extra_objects: Sequence[bytes] = (),
) -> LinkedModel:
    """Links a generated model for ``target``.

    ``model_object`` is the generated ELF object (defines ``<prefix>_entry``); ``weights`` the constants
    blob (bytes, or a path to a file, which avoids copying large blobs); ``extra_objects`` further objects
    for the target (library kernels for ``call_extern``). Raises :class:`toolchain.ToolchainError` if a
    step fails.
    """
    target = get_target(target)
    runtime = toolchain.runtime_build(target)
    with tempfile.TemporaryDirectory(prefix="kiln-link-") as tmp_name:
        tmp = Path(tmp_name)
        weight_bytes = _place_weights(weights, tmp / "weights.bin")
        (tmp / "model_entry.o").write_bytes(model_object)
        extras = []
        for i, obj in enumerate(extra_objects):
            extras.append(tmp / f"model_extern{i}.o")
            extras[-1].write_bytes(obj)
        board = board_of(target)
        desc = descriptor_c(info, weight_bytes)
        if board is not None:
            from kiln.package import firmware

            desc += "\n" + firmware.memory_c(info, kernel_calls=firmware.kernel_calls(info))
        (tmp / "model_weights.S").write_text(weights_asm("weights.bin", info.prefix))
        (tmp / "model_desc.c").write_text(desc)
        # boards: the linker script finds the model's code and descriptor by these object names
        weights_o = _weights_object(target, tmp, info.prefix)
        desc_o = toolchain.compile_c(target, tmp / "model_desc.c", tmp / f"kiln_desc_{info.prefix}.o")
        code_o = (tmp / "model_entry.o").rename(tmp / f"kiln_code_{info.prefix}.o")
        lib = toolchain.archive([code_o, *extras, desc_o, weights_o, *runtime.objects], tmp / "libmodel.a")
        image = None
        if board is not None:
            models = [(code_o, *extras, desc_o, weights_o)]
            image = firmware.link_image(target, board, runtime, models, tmp, prefixes=[info.prefix])
        runner = None
        if runtime.runner_main is not None:
            toolchain.run_tool(
                [
                    *toolchain.zig(),
                    "cc",
                    *toolchain.target_flags(target),
                    "-static",
                    "-o",
                    "runner",
                    str(runtime.runner_main),
                    "libmodel.a",
                    "-Wl,--gc-sections",
                    "-Wl,--build-id=none",
                ],
                cwd=tmp,
            )
            runner = strip_debug_info((tmp / "runner").read_bytes())
        libmodel = lib.read_bytes()
        runnable = runner if image is None else image.elf
        return LinkedModel(
            runner=runner,
            libmodel=libmodel,
            model_h=model_header(info, target, weight_bytes).encode(),
            code_size=elf_code_size(model_object) + sum(elf_code_size(o) for o in extra_objects),
            weight_bytes=weight_bytes,
            image=image,
            weights_at=_find_blob(tmp / "weights.bin", libmodel, runnable),
        )


def _find_blob(blob_path: Path, libmodel: bytes, runnable: bytes | None) -> tuple[int, int] | None:
    """The offsets of the blob's bytes in ``libmodel`` and ``runnable``; None if it is empty or one lacks it."""
    if runnable is None or blob_path.stat().st_size == 0:
        return None
    with blob_path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        at = _locate(libmodel, blob), _locate(runnable, blob)
    return None if -1 in at else at


def _locate(data: bytes, blob: mmap.mmap) -> int:
    """The first offset where ``data`` holds all of ``blob``, or -1 (found by its head, then compared)."""
    head = blob[: 1 << 16]
    at = data.find(head)
    while at != -1 and not data.startswith(blob, at):  # type: ignore[arg-type]
        at = data.find(head, at + 1)
    return at


def _weights_object(target: Target, tmp: Path, prefix: str) -> Path:
    """``model_weights.S`` (with ``weights.bin``) assembled, or the same object from kiln's cache: the
    assembler copies every byte of a large blob, so a model compiled again reuses it."""
    out = tmp / f"kiln_weights_{prefix}.o"
    with (tmp / "weights.bin").open("rb") as f:
        blob_hash = hashlib.file_digest(f, "sha256").hexdigest()
    asm = (tmp / "model_weights.S").read_text()
    key = cache_key(
        "weights object 1", blob_hash, asm, *toolchain.target_flags(target), toolchain.zig_version()
    )
    cached = cache_get(key, "weights")
    if cached is not None:
        out.write_bytes(cached)
        return out
    toolchain.compile_c(target, tmp / "model_weights.S", out)
    cache_put(key, out.read_bytes(), "weights")
    return out


def _place_weights(weights: bytes | Path, dest: Path) -> int:
    if isinstance(weights, (bytes, bytearray, memoryview)):
        dest.write_bytes(weights)
        return len(weights)
    src = Path(weights).resolve()
    os.symlink(src, dest)
    return src.stat().st_size


def weights_asm(blob_name: str, prefix: str = abi.DEFAULT_PREFIX) -> str:
    """Assembly defining ``<prefix>_weights`` from a blob file (``%`` syntax works on every ELF target)."""
    sym = abi.weights_symbol(prefix)
    return f"""/* Generated by kiln: the model's constants, one 64-byte-aligned blob. */
  .section {abi.weights_section(prefix)},"a",%progbits
  .balign {abi.ALIGNMENT}
  .globl {sym}
  .type {sym}, %object
{sym}:
  .incbin "{blob_name}"
  .size {sym}, . - {sym}
"""


def c_string(text: str) -> str:
    """A C string literal for ``text`` (UTF-8; anything but plain printable ASCII is octal-escaped)."""
    out = []
    for byte in text.encode():
        ch = chr(byte)
        if ch in '"\\?':
            out.append("\\" + ch)
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensor_table(kind: str, tensors: Sequence[TensorSpec], dims: Sequence[Sequence[int]]) -> tuple[str, str]:
    """C definitions for one tensor table and the expression that points to it."""
    if not tensors:
        return "", "NULL"
    lines = []
    rows = []
    for i, (spec, ks) in enumerate(zip(tensors, dims, strict=True)):
        name, dtype, shape = spec
        code, bits = abi.DTYPES[dtype]
        shape_ref = "NULL"
        if shape:
            lines.append(
                f"static const int64_t k_{kind}_shape{i}[{len(shape)}] = {{{', '.join(map(str, shape))}}};"
            )
            shape_ref = f"k_{kind}_shape{i}"
        dims_ref = "NULL"
        if ks:
            lines.append(f"static const int8_t k_{kind}_dims{i}[{len(ks)}] = {{{', '.join(map(str, ks))}}};")
            dims_ref = f"k_{kind}_dims{i}"
        rows.append(
            f"    {{{c_string(name)}, {{{code}u, {bits}u, 1u}}, {len(shape)}, {shape_ref}, "
            f"{ModelInfo.nbytes(spec)}ull, {dims_ref}}},"
        )
    lines += [f"static const kiln_tensor_info_t k_{kind}[{len(tensors)}] = {{", *rows, "};"]
    return "\n".join(lines) + "\n", f"k_{kind}"


def descriptor_c(info: ModelInfo, weight_bytes: int) -> str:
    """``model_desc.c``: the descriptor ``<prefix>`` for ``info`` (see runtime_c/include/kiln/model.h)."""
    model, entry, weights = (f(info.prefix) for f in (abi.model_symbol, abi.entry_symbol, abi.weights_symbol))
    inputs_c, inputs_ref = _tensor_table("inputs", info.inputs, info.input_dims)
    outputs_c, outputs_ref = _tensor_table("outputs", info.outputs, info.output_dims)
    bounds_c, bounds_ref = "", "NULL"
    if info.dim_bounds:
        bounds_c = (
            f"static const int64_t k_dim_bounds[{len(info.dim_bounds)}] = "
            f"{{{', '.join(map(str, info.dim_bounds))}}};\n"
        )
        bounds_ref = "k_dim_bounds"
    kernels_c, kernels_ref = "", "NULL"
    if info.kernel_names:
        names = ", ".join(c_string(k) for k in info.kernel_names)
        kernels_c = f"static const char *const k_kernels[{len(info.kernel_names)}] = {{{names}}};\n"
        kernels_ref = "k_kernels"
    return f"""/* Generated by kiln: the descriptor of model {c_string(info.name)[1:-1]}. Do not edit. */
#include <stddef.h>
#include <stdint.h>

#include "kiln/model.h"

int32_t {entry}(void *const *inputs, void *const *outputs, uint8_t *workspace, void *prof, int64_t *dims);
extern const uint8_t {weights}[];
extern const kiln_model_t {model};

{inputs_c}{outputs_c}{kernels_c}{bounds_c}
const kiln_model_t {model} = {{
    .abi_version = {abi.ABI_VERSION}u,
    .name = {c_string(info.name)},
    .num_inputs = {len(info.inputs)}u,
    .inputs = {inputs_ref},
    .num_outputs = {len(info.outputs)}u,
    .outputs = {outputs_ref},
    .workspace_bytes = {info.workspace_bytes}ull,
    .weights = {weights},
    .weights_bytes = {weight_bytes}ull,
    .num_kernels = {len(info.kernel_names)}u,
    .kernel_names = {kernels_ref},
    .entry = {entry},
    .num_dims = {len(info.dim_bounds)}u,
    .num_named_dims = {info.named_dims}u,
    .dim_bounds = {bounds_ref},
}};
"""


def model_header(info: ModelInfo, target: Target, weight_bytes: int) -> str:
    """``model.h``: the header for embedding ``libmodel.a`` in another program."""

    def comment(text: str) -> str:
        return c_string(text).replace("*/", "*\\/")

    def describe(kind: str, tensors: Sequence[TensorSpec]) -> list[str]:
        return [
            f" *   {kind} {i} {comment(s[0])}: {s[1]} [{', '.join(map(str, s[2]))}], {ModelInfo.nbytes(s)} B"
            for i, s in enumerate(tensors)
        ]

    prefix = info.prefix
    up = prefix.upper()
    macros = [
        f"#define {up}_NAME {c_string(info.name)}",
        f"#define {up}_NUM_INPUTS {len(info.inputs)}u",
        f"#define {up}_NUM_OUTPUTS {len(info.outputs)}u",
        f"#define {up}_WORKSPACE_BYTES {info.workspace_bytes}ull",
        f"#define {up}_WEIGHTS_BYTES {weight_bytes}ull",
    ]
    for kind, tensors in (("INPUT", info.inputs), ("OUTPUT", info.outputs)):
        macros += [f"#define {up}_{kind}_{i}_NBYTES {ModelInfo.nbytes(t)}ull" for i, t in enumerate(tensors)]
    if info.dim_bounds:  # dynamic shapes: sizes above are at the bounds; run with kiln_model_run_dims
        macros += [
            f"#define {up}_NUM_DIMS {len(info.dim_bounds)}u",
            f"#define {up}_NUM_NAMED_DIMS {info.named_dims}u",
        ]
    decls = [
        f"extern const kiln_model_t {abi.model_symbol(prefix)};",
        f"extern const uint8_t {abi.weights_symbol(prefix)}[];",
    ]
    includes = ['#include "kiln/model.h"']
    if target.is_bare_metal:
        includes.append('#include "kiln/firmware.h"')
        decls.append(
            f"extern const kiln_model_memory_t {abi.memory_symbol(prefix)}; /* its I/O buffers and arena */"
        )
    lines = [
        f"/* Generated by kiln for model {comment(info.name)}, target {target.name} ({target.triple}).",
        " * Do not edit.",
        " *",
        " * Link with the model's library (generated code, weights, descriptor) and the kiln runtime, and run",
        f" * the model with kiln_model_run(&{abi.model_symbol(prefix)}, inputs, outputs, workspace, NULL);",
        f" * Buffers are {abi.ALIGNMENT}-byte aligned; the workspace has {up}_WORKSPACE_BYTES.",
        " *",
        *describe("input", info.inputs),
        *describe("output", info.outputs),
        " */",
        f"#ifndef {up}_GENERATED_H_",
        f"#define {up}_GENERATED_H_",
        "",
        *includes,
        "",
        '#ifdef __cplusplus\nextern "C" {\n#endif',
        "",
        *decls,
        "",
        "#ifdef __cplusplus\n}\n#endif",
        "",
        *macros,
        "",
        f"#endif /* {up}_GENERATED_H_ */",
        "",
    ]
    return "\n".join(lines)


def elf_code_size(obj: bytes) -> int:
    """Total size of the allocated, executable sections of an ELF object (0 if ``obj`` is not ELF)."""
    if obj[:4] != b"\x7fELF" or len(obj) < 52:
        return 0
    is64 = obj[4] == 2
    end = "<" if obj[5] == 1 else ">"
    if is64:
        (shoff,) = struct.unpack_from(end + "Q", obj, 0x28)
        shentsize, shnum = struct.unpack_from(end + "HH", obj, 0x3A)
    else:
        (shoff,) = struct.unpack_from(end + "I", obj, 0x20)
        shentsize, shnum = struct.unpack_from(end + "HH", obj, 0x2E)
    shf_alloc_exec = 0x2 | 0x4
    total = 0
    for i in range(shnum):
        base = shoff + i * shentsize
        if is64:
            sh_type, flags = struct.unpack_from(end + "IQ", obj, base + 4)
            (size,) = struct.unpack_from(end + "Q", obj, base + 0x20)
        else:
            sh_type, flags = struct.unpack_from(end + "II", obj, base + 4)
            (size,) = struct.unpack_from(end + "I", obj, base + 0x14)
        if sh_type != 8 and flags & shf_alloc_exec == shf_alloc_exec:  # 8 = SHT_NOBITS
            total += size
    return total


def strip_debug_info(elf: bytes) -> bytes:
    """``elf`` (a linked executable, 32- or 64-bit, little-endian) without its non-allocated sections other
    than the symbol table and its string tables: the debug info zig's libc brings, ``.comment``. The loaded
    bytes and addresses are unchanged; symbols of a dropped section become undefined. (zig's linker strips
    the symbol table together with the debug info, and kiln reads a runner's symbols: kiln.device.icount.)"""
    is64 = elf[4] == 2
    if elf[:4] != b"\x7fELF" or elf[5] != 1:
        raise ValueError("strip_debug_info: not a little-endian ELF file")
    ehdr = "<16sHHIQQQIHHHHHH" if is64 else "<16sHHIIIIIHHHHHH"
    shdr = "<IIQQQQIIQQ" if is64 else "<IIIIIIIIII"
    fields = list(struct.unpack_from(ehdr, elf))
    shoff, shentsize, shnum, shstrndx = fields[6], fields[11], fields[12], fields[13]
    sections = [list(struct.unpack_from(shdr, elf, shoff + i * shentsize)) for i in range(shnum)]
    # fields: name, type, flags, addr, offset, size, link, info, addralign, entsize
    symtabs = [i for i, s in enumerate(sections) if s[1] == 2]  # SHT_SYMTAB
    kept_tables = {shstrndx, *symtabs, *(sections[i][6] for i in symtabs)}
    first_dropped = next(
        (i for i, s in enumerate(sections) if i and not s[2] & 0x2 and i not in kept_tables), None
    )
    if first_dropped is None:
        return elf
    if any(s[2] & 0x2 for s in sections[first_dropped:]):
        return elf  # an allocated section after a dropped one: section indices would move; keep everything
    old_index = list(range(first_dropped)) + sorted(i for i in kept_tables if i >= first_dropped)
    new_index = {old: new for new, old in enumerate(old_index)}
    loaded_end = max((s[4] + s[5] for s in sections[:first_dropped] if s[1] != 8), default=0)  # not NOBITS
    out = bytearray(elf[:loaded_end])
    new_sections = [list(s) for s in sections[:first_dropped]]
    for old in old_index[first_dropped:]:
        s = list(sections[old])
        data = bytearray(elf[s[4] : s[4] + s[5]])
        if s[1] == 2:  # symbols: st_shndx of dropped sections -> SHN_UNDEF
            at = 6 if is64 else 14
            for off in range(0, len(data), s[9]):
                (ndx,) = struct.unpack_from("<H", data, off + at)
                if 0 < ndx < 0xFF00:
                    struct.pack_into("<H", data, off + at, new_index.get(ndx, 0))
            s[6] = new_index[s[6]]
        out += b"\0" * (-len(out) % max(1, s[8]))
        s[4] = len(out)
        out += data
        new_sections.append(s)
    out += b"\0" * (-len(out) % 8)
    fields[6], fields[12], fields[13] = len(out), len(new_sections), new_index[shstrndx]
    for s in new_sections:
        out += struct.pack(shdr, *s)
    struct.pack_into(ehdr, out, 0, *fields)
    return bytes(out)
