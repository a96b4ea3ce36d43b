"""LLVM target machines for kiln targets: optimize a module at O3 for the target's CPU and features and emit
object code.

:func:`compile_objects` is what the code generator uses. For a target with an OS it splits the module's text
into one module per function the entry calls (each tensor function, made a hidden global named
``<entry>.<name>``, with copies of the internal helpers it calls) plus one with the entry and the rest, and
emits one object per module: O3 and object emission run in parallel processes (``KILN_JOBS``, default: one
per CPU) for large modules, and every object is cached under the sha256 of its module text, the LLVM
version and the target (:func:`cache_dir`/``objects``), so a recompile or another model with the same
tensor function skips LLVM. The objects come in a fixed order and LLVM is deterministic, so the output does
not depend on the cache or on the number of processes. Bare-metal targets get one object, as before (their
linker scripts place the model's code by object). A module the splitter does not understand (a non-local
global defined outside the entry's module and used by another) is compiled whole.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import hashlib
import multiprocessing
import os
import re
import tempfile
import threading
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm

from ..targets import Target

_lock = threading.Lock()
#: bump when what :func:`compile_objects` caches changes meaning
_CACHE_FORMAT = "kiln-objects 1"
#: most bytes the object cache keeps (least recently used objects go first)
CACHE_LIMIT_BYTES = 1 << 30
#: modules smaller than this are compiled in this process (starting workers would cost more)
PARALLEL_MIN_BYTES = 1 << 20


def cache_dir() -> Path:
    """kiln's cache: ``$KILN_CACHE_DIR``, else ``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``."""
    explicit = os.environ.get("KILN_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln"


@functools.cache
def _init() -> None:
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


def _abi(t: Target) -> str:
    if t.arch.startswith("riscv"):
        return {"lp64d": "lp64d", "ilp32f": "ilp32f", "ilp32": "ilp32", "ilp32d": "ilp32d"}.get(
            t.float_abi, ""
        )
    return ""


def llvm_triple(t: Target) -> str:
    """``t.triple`` with its vendor, as LLVM's code generator must get it (it does not normalize triples the
    way clang and zig do): in ``thumbv7em-none-eabihf`` it takes ``none`` for the vendor and ``eabihf`` for
    the OS, so the EABI environment is lost: floats are passed in integer registers, unlike the hard-float
    runtime, and library calls get GNU names (``__floatdisf``) that the Arm compiler_rt lacks (it has the
    ``__aeabi_*`` ones). A three-part triple whose last part LLVM's parser reads as an environment gets the
    vendor ``unknown``: ``thumbv7em-unknown-none-eabihf``."""
    parts = t.triple.split("-")
    if len(parts) == 3 and llvm.get_triple_parts(t.triple).Env not in ("", "unknown"):
        return "-".join((parts[0], "unknown", *parts[1:]))
    return t.triple


def target_machine(t: Target) -> llvm.TargetMachine:
    _init()
    tgt = llvm.Target.from_triple(llvm_triple(t))
    return tgt.create_target_machine(
        cpu=t.cpu,
        features=t.features,
        opt=3,
        reloc="static" if t.is_bare_metal else "pic",  # firmware is linked at fixed addresses: no GOT
        codemodel="default",
        abiname=_abi(t),
    )


def optimize(mod: llvm.ModuleRef, tm: llvm.TargetMachine) -> None:
    pto = llvm.PipelineTuningOptions(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pm = pb.getModulePassManager()
    pm.run(mod, pb)


def compile_ir(llvm_ir: str, t: Target) -> tuple[bytes, str]:
    """Parse, verify, optimize (O3) and emit ``llvm_ir`` for target ``t``; returns (object bytes, optimized IR)."""
    with _lock:  # llvmlite's global state is not thread-safe
        _init()
        mod = llvm.parse_assembly(llvm_ir)
        mod.verify()
        tm = target_machine(t)
        mod.triple = llvm_triple(t)
        mod.data_layout = str(tm.target_data)
        optimize(mod, tm)
        return tm.emit_object(mod), str(mod)


def emit_assembly(llvm_ir: str, t: Target) -> str:
    """Optimized assembly text for ``llvm_ir`` (for inspection and instruction checks in tests)."""
    with _lock:
        _init()
        mod = llvm.parse_assembly(llvm_ir)
        tm = target_machine(t)
        mod.triple = llvm_triple(t)
        mod.data_layout = str(tm.target_data)
        optimize(mod, tm)
        return str(tm.emit_assembly(mod))


# ------------------------------------------------------------------------------------- split, cache, parallel

_NAME = r'@(?:"([^"]+)"|([-a-zA-Z$._][-a-zA-Z$._0-9]*))'
_DEFINE = re.compile(r"define\s+(.*?)" + _NAME + r"\(")


def split_module(llvm_ir: str) -> list[str]:
    """``llvm_ir`` (one module as llvmlite prints it) as module texts: first the externally visible
    definitions (the entry), then one per function the first one calls, in name order; ``[llvm_ir]`` if it
    cannot be split."""
    header: list[str] = []
    items: list[tuple[str, str]] = []  # (name, text) of definitions, declarations, globals, metadata
    lines = llvm_ir.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("define"):
            end = i
            while lines[end] != "}":
                end += 1
            m = _DEFINE.match(line)
            if m is None:
                return [llvm_ir]
            items.append((m.group(2) or m.group(3), "\n".join(lines[i : end + 1])))
            i = end + 1
            continue
        if line.startswith(("; ModuleID", "target ", "source_filename")):
            header.append(line)
        elif line.strip():
            m = re.match(_NAME, line)
            items.append((m.group(1) or m.group(2) if m else "", line))
        i += 1
    defs = {name: text for name, text in items if text.startswith("define")}
    local = {n for n, text in defs.items() if re.match(r"define\s+(internal|private)\b", text)}
    shared = [
        text for name, text in items if not text.startswith("define") and (not name or " external " in text)
    ]
    globals_ = {
        name: text for name, text in items if name and not text.startswith("define") and text not in shared
    }
    local |= {n for n, text in globals_.items() if re.search(r"=\s*(internal|private)\b", text)}
    entry = [n for n in defs if n not in local]
    if not entry:
        return [llvm_ir]

    def refs(text: str) -> set[str]:
        return {a or b for a, b in re.findall(_NAME, text)} & (set(defs) | set(globals_))

    roots = sorted(n for n in set().union(*(refs(defs[e]) for e in entry)) if n in defs and n in local)
    if not roots:
        return [llvm_ir]
    renamed = {r: f"{entry[0]}.{r}" for r in roots}

    def rename(text: str) -> str:
        return re.sub(
            _NAME, lambda m: f'@"{renamed.get(m.group(1) or m.group(2), m.group(1) or m.group(2))}"', text
        )

    def closure(start: list[str], stop: set[str]) -> list[str]:
        """``start`` and the definitions they reach, not through ``stop``, in module order."""
        seen, todo = set(start), list(start)
        while todo:
            name = todo.pop()
            for ref in refs(defs.get(name) or globals_.get(name, "")) - seen - stop:
                seen.add(ref)
                todo.append(ref)
        return [name for name, _ in items if name in seen]

    def module(names: list[str], declare: list[str]) -> str:
        body = []
        for n in names:
            text = rename(defs.get(n) or globals_[n])
            body.append(re.sub(r"^define\s+internal\s+", "define hidden ", text) if n in roots else text)
        decls = [
            rename(re.sub(r"^define\s+internal\s+", "declare hidden ", defs[r].split("\n", 1)[0]))
            for r in declare
        ]
        return "\n".join([*header, *shared, *decls, *body, ""])

    top = closure(entry + [n for n in globals_ if n not in local], set(roots))
    texts = [module(top, roots)]
    for r in roots:
        own = closure([r], set(roots) - {r})
        if any(n not in local and n != r for n in own):
            return [llvm_ir]  # a non-local global used outside the entry's module
        texts.append(module(own, sorted(refs(defs[r]) & set(roots) - {r})))
    return texts


def cache_key(*parts: str) -> str:
    """sha256 (hex) over ``parts`` (each length-prefixed) and the LLVM that compiles them."""
    h = hashlib.sha256()
    for part in (_CACHE_FORMAT, llvmlite.__version__, str(llvm.llvm_version_info), *parts):
        data = part.encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _cache_key(text: str, t: Target) -> str:
    return cache_key(llvm_triple(t), t.cpu, t.features, _abi(t), str(t.is_bare_metal), text)


def cache_get(key: str, kind: str = "objects") -> bytes | None:
    """The bytes cached under ``key`` (in ``cache_dir()/kind``), or None (absent or damaged)."""
    path = cache_dir() / kind / key[:2] / key
    try:
        data = path.read_bytes()
    except OSError:
        return None
    obj, digest = data[:-32], data[-32:]
    if hashlib.sha256(obj).digest() != digest:  # a damaged entry: compiled again and replaced
        return None
    os.utime(path)  # recently used
    return obj


def cache_put(key: str, obj: bytes, kind: str = "objects") -> None:
    """Caches ``obj`` under ``key`` (atomically; the least recently used entries of ``kind`` go beyond
    :data:`CACHE_LIMIT_BYTES`)."""
    root = cache_dir() / kind
    path = root / key[:2] / key
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(obj + hashlib.sha256(obj).digest())
        os.replace(tmp, path)
        entries = [(p.stat().st_mtime, p.stat().st_size, p) for p in root.glob("??/*") if p.is_file()]
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= CACHE_LIMIT_BYTES:
                break
            p.unlink(missing_ok=True)
            total -= size
    except OSError:
        pass  # a cache that cannot be written only costs time


def _compile_object(text: str, t: Target) -> bytes:
    return compile_ir(text, t)[0]


@functools.cache
def _pool(jobs: int) -> concurrent.futures.ProcessPoolExecutor:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx)
    atexit.register(pool.shutdown)
    return pool


def jobs() -> int:
    """Processes for O3 and object emission: ``$KILN_JOBS``, else one per CPU this process may use."""
    env = os.environ.get("KILN_JOBS", "")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"KILN_JOBS must be a whole number >= 1, got {env!r}")
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compile_objects(llvm_ir: str, t: Target) -> list[bytes]:
    """Object code for ``llvm_ir`` on target ``t``: one object (bare metal), or the entry's object followed
    by one per tensor function (see the module docstring); cached by content, compiled in parallel."""
    texts = [llvm_ir] if t.is_bare_metal else split_module(llvm_ir)
    keys = [_cache_key(text, t) for text in texts]
    objects = [cache_get(k) for k in keys]
    todo = [i for i, o in enumerate(objects) if o is None]
    n = min(jobs(), len(todo))
    if n > 1 and sum(len(texts[i]) for i in todo) >= PARALLEL_MIN_BYTES:
        try:
            done = list(_pool(n).map(_compile_object, [texts[i] for i in todo], [t] * len(todo)))
        except Exception:  # noqa: BLE001 (no worker processes here, a dead one, or LLVM's error: in-process)
            _pool.cache_clear()
            done = [_compile_object(texts[i], t) for i in todo]
    else:
        done = [_compile_object(texts[i], t) for i in todo]
    for i, obj in zip(todo, done, strict=True):
        objects[i] = obj
        cache_put(keys[i], obj)
    return [o for o in objects if o is not None]
