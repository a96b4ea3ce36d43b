"""Packages (``.kpkg``): a compiled model with everything needed to run or embed it, as one archive.

Format (version :data:`FORMAT_VERSION`): an uncompressed POSIX (ustar) tar archive. ``manifest.json`` comes
first, then every other file sorted by path; every member is a regular file with mtime 0, uid/gid 0, no
user/group names and mode 0755 (``bin/*``) or 0644. So the same inputs always give byte-identical packages.

Members: ``manifest.json``; ``bin/runner`` (Linux targets: the static runner serving the device protocol on
stdin/stdout) or ``bin/image.elf`` + ``lib/image.map`` (boards: the firmware image serving it over the UART,
and its linker map); ``lib/libmodel.a`` + ``include/model.h`` + ``include/kiln/*.h`` (for embedding).

``manifest.json`` (JSON, sorted keys): ``format_version``; ``name``; ``target`` {name, triple, cpu,
features, os}; ``inputs``/``outputs`` [{name, dtype, shape}]; ``arena_bytes`` (workspace); ``weight_bytes``;
``code_bytes`` (executable sections of the generated code); ``operators``; ``kernels`` (kernel names in
profiler index order); ``symbol_prefix`` (of the model's global symbols, ``kiln_model`` by default);
``runnable`` (path of the runnable or null); ``stored_once`` (see below); boards also ``memory`` (flash: code /
weights / runtime, RAM: arena / io / stack / runtime, totals, limits, percent, output sections: measured on
the linked image) and ``board`` (memory map, timer, emulator); ``runtime`` {abi_version,
protocol_version, sha256 of the runtime sources}; ``compiler`` ("kiln X.Y.Z"); ``files`` {path: {sha256,
size}} for every other member. Extra keys may be added by the compile driver.

Weights stored once: the weights blob is linked into both the runnable (``bin/runner`` or ``bin/image.elf``)
and ``lib/libmodel.a``, so the archive stores the library without it. ``stored_once`` lists such members:
``[{path, offset, size, source, source_offset}]`` says that ``path`` is stored with the ``size`` bytes at
``offset`` cut out, and that those bytes are ``source``'s at ``source_offset`` (``source`` is stored whole and
comes earlier in the archive). The cut member is stored under its path plus ``.without-weights``, so a plain
``tar x`` gives a whole ``bin/runner`` and no incomplete ``lib/libmodel.a`` (extract with kiln to embed the
library). Reading puts the bytes back before checking digests, so :attr:`Package.files`,
:meth:`Package.extract` and :func:`unpack` give every file whole under its own path and ``files`` digests are
of whole files. Format version 1 (no ``stored_once``) is still read.

:meth:`Package.load` trusts nothing: it rejects members that are not plain regular files (links,
directories, devices, GNU sparse members, whose declared size can be far larger than the archive) or whose
paths are absolute, contain ``..`` or are not normalized (path traversal), a member that is also a directory
of another (``bin`` and ``bin/runner``), unknown format versions, and files whose sha256 or size differs from
the manifest, or that the manifest does not list. :func:`unpack` does the same checks streaming, in constant
memory, under hard limits (:class:`UnpackLimits`: member count, member and total size, total no larger than the
archive), optionally writing the files to a directory; the device farm uses it for untrusted uploads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import IO, Any

import numpy as np

from kiln import runtime_c
from kiln.device.icount import CountError, InstructionCounter
from kiln.device.launchers import Launcher, ProcessLauncher, QemuUserLauncher, launcher_for
from kiln.device.profile import InstructionCounts
from kiln.device.protocol import Session
from kiln.package.link import LinkedModel, ModelInfo
from kiln.runtime_c import abi
from kiln.targets import Target, get_target
from kiln.targets.board import board_of

FORMAT_VERSION = 2
#: format versions this kiln reads (1: every member stored whole)
READ_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
RUNNER = "bin/runner"
IMAGE = "bin/image.elf"
IMAGE_MAP = "lib/image.map"
SUFFIX = ".kpkg"
_AUTO: Any = object()
_RESERVED = {
    "format_version",
    "files",
    "stored_once",
    "name",
    "target",
    "inputs",
    "outputs",
    "runnable",
    "runtime",
    "memory",
    "board",
}


# The slowest rate at which a device of ours runs generated code, with a margin: measured here with another job
# beside it, VGG-19 ran at 9e7 FLOP/s as scalar RV64 code under qemu-riscv64, 2e8 under qemu-aarch64 and 2e10
# natively on x86-64.
SLOWEST_FLOPS_PER_S = 2.5e7


MAX_RUN_TIMEOUT_S = 24 * 3600.0


def run_timeout(manifest: Mapping[str, Any], base: float = 60.0) -> float:
    """A timeout for one run of the package's model: ``base`` seconds plus its FLOPs at the slowest rate a
    device runs them, so that a large model under emulation is not mistaken for a hung one; at most a day.
    A ``flops`` that is not a finite, non-negative number is a :class:`PackageError`."""
    flops = manifest.get("flops", 0)
    if (
        isinstance(flops, bool)
        or not isinstance(flops, (int, float))
        or not math.isfinite(flops)
        or flops < 0
    ):
        raise PackageError(f"the manifest's flops must be a finite number >= 0, not {flops!r}")
    return min(MAX_RUN_TIMEOUT_S, base + float(flops) / SLOWEST_FLOPS_PER_S)


class PackageError(ValueError):
    """A package archive is invalid, corrupted or unsafe; the message says what and what to do."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _kiln_version() -> str:
    from kiln import __version__

    return str(__version__)


class Package:
    """A compiled model: ``manifest`` (dict) and ``files`` (path -> bytes, every member but the manifest).

    Build one with :meth:`create` (the compile driver does), read one with :meth:`load`/:meth:`from_bytes`.
    Packages are immutable values; ``path`` is the file it was last loaded from or saved to.
    """

    def __init__(self, manifest: dict[str, Any], files: Mapping[str, bytes], *, path: Path | None = None):
        self._manifest = manifest
        self._files = dict(sorted(files.items()))
        self.path = path
        self._sha256: str | None = None

    # ---- construction

    @classmethod
    def create(
        cls,
        target: Target | str,
        info: ModelInfo,
        linked: LinkedModel,
        *,
        extra_manifest: Mapping[str, Any] | None = None,
    ) -> Package:
        """A package from the outputs of :func:`kiln.package.link.link_model`. ``extra_manifest`` adds keys to
        the manifest (it may not replace the structural ones: files, target, inputs, ...)."""
        t = get_target(target)
        files: dict[str, bytes] = {"lib/libmodel.a": linked.libmodel, "include/model.h": linked.model_h}
        files.update({f"include/kiln/{h.name}": h.read_bytes() for h in runtime_c.headers()})
        runnable = None
        if linked.runner is not None:
            files[RUNNER] = linked.runner
            runnable = RUNNER
        if linked.image is not None:
            files[IMAGE] = linked.image.elf
            files[IMAGE_MAP] = linked.image.map_text.encode()
            runnable = IMAGE

        def tensors(specs: Any, dims: Any) -> list[dict[str, Any]]:
            # "dims" (dynamic shapes): per dimension -1, or the run-time dimension (manifest "dims") whose
            # bound the shape holds
            return [
                {"name": n, "dtype": d, "shape": list(s), **({"dims": list(ks)} if ks else {})}
                for (n, d, s), ks in zip(specs, dims, strict=True)
            ]

        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": info.name,
            "target": {"name": t.name, "triple": t.triple, "cpu": t.cpu, "features": t.features, "os": t.os},
            "inputs": tensors(info.inputs, info.input_dims),
            "outputs": tensors(info.outputs, info.output_dims),
            "arena_bytes": info.workspace_bytes,
            "weight_bytes": linked.weight_bytes,
            "code_bytes": linked.code_size,
            "operators": list(info.operators),
            "kernels": list(info.kernel_names),
            "symbol_prefix": info.prefix,
            "runnable": runnable,
            "runtime": {
                "abi_version": abi.ABI_VERSION,
                "protocol_version": abi.PROTOCOL_VERSION,
                "sha256": runtime_c.runtime_hash(),
            },
            "compiler": f"kiln {_kiln_version()}",
        }
        if linked.image is not None:
            manifest["memory"] = linked.image.memory
            board = board_of(t)
            assert board is not None
            manifest["board"] = {
                "flash_base": board.flash_base,
                "flash_bytes": board.flash_bytes,
                "ram_base": board.ram_base,
                "ram_bytes": board.ram_bytes,
                "stack_bytes": board.stack_bytes,
                "timer": {"kind": board.timer_kind, "hz": board.timer_hz},
                "emulator": list(t.emulator),
                "icount_shift": board.icount_shift,
            }
        for key, value in (extra_manifest or {}).items():
            if key in _RESERVED:
                raise ValueError(f"extra_manifest may not set {key!r}: the package build owns it")
            manifest[key] = value
        manifest["files"] = {
            name: {"sha256": _sha256(data), "size": len(data)} for name, data in sorted(files.items())
        }
        if linked.weights_at is not None and runnable is not None:
            in_lib, in_runnable = linked.weights_at
            manifest["stored_once"] = [
                {
                    "path": "lib/libmodel.a",
                    "offset": in_lib,
                    "size": linked.weight_bytes,
                    "source": runnable,
                    "source_offset": in_runnable,
                }
            ]
            _stored_once(manifest, "<new package>")  # checks the ranges
        return cls(manifest, files)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Package:
        """Reads and verifies a ``.kpkg`` file (see the module docstring for what is rejected)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise PackageError(f"cannot read package {path}: {e.strerror or e}") from e
        pkg = cls.from_bytes(data, source=str(path))
        pkg.path = path
        return pkg

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<bytes>") -> Package:
        """Parses and verifies a package archive held in memory."""
        contents: dict[str, bytes] = {}
        paths = _PathSet(source)
        limits = UnpackLimits()
        total = 0
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for m in tar:
                    _check_member(m, source)
                    paths.add(m.name)
                    total += m.size
                    limits.check(len(contents) + 1, m, total, len(data), source)
                    f = tar.extractfile(m)
                    assert f is not None  # a regular file, checked above
                    contents[m.name] = f.read()
        except tarfile.TarError as e:
            raise PackageError(f"{source} is not a kiln package (not a readable tar archive: {e})") from e
        if MANIFEST not in contents:
            raise PackageError(f"{source} is not a kiln package: it has no {MANIFEST}")
        manifest = _parse_manifest(contents.pop(MANIFEST), source)
        for cut in _stored_once(manifest, source).values():
            stored = contents.pop(cut.path + CUT_SUFFIX, None)
            if stored is not None and cut.path in contents:
                raise PackageError(f"{source}: {cut.path!r} is stored twice; the package is corrupted")
            whole = contents.get(cut.source)
            if stored is None or whole is None:
                continue  # the digest check names the missing member
            if len(stored) < cut.offset:
                raise PackageError(
                    f"{source}: {cut.path!r} is stored without {cut.size} bytes at {cut.offset} taken from "
                    f"{cut.source!r}, but the archive does not hold them; the package is corrupted"
                )
            shared = whole[cut.source_offset : cut.source_offset + cut.size]
            contents[cut.path] = b"".join((stored[: cut.offset], shared, stored[cut.offset :]))
        _verify_files(manifest, contents, source)
        return cls(manifest, contents)

    # ---- contents

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest (a copy: packages are immutable)."""
        return json.loads(json.dumps(self._manifest))  # type: ignore[no-any-return]

    @property
    def files(self) -> Mapping[str, bytes]:
        """Every member except ``manifest.json``, by path."""
        return MappingProxyType(self._files)

    @property
    def name(self) -> str:
        return str(self._manifest["name"])

    @property
    def target(self) -> Target:
        return get_target(self._manifest["target"]["name"])

    @property
    def sha256(self) -> str:
        """sha256 (hex) of the archive bytes, i.e. of the saved ``.kpkg`` file."""
        if self._sha256 is None:
            h = _HashWriter()
            self._write(h)
            self._sha256 = h.hexdigest()
        return self._sha256

    def manifest_bytes(self) -> bytes:
        return (json.dumps(self._manifest, indent=2, sort_keys=True) + "\n").encode()

    # ---- output

    def _write(self, out: IO[bytes] | io.RawIOBase) -> None:
        cuts = _stored_once(self._manifest, "the package")
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[arg-type]
            for name, data in [(MANIFEST, self.manifest_bytes()), *self._files.items()]:
                cut = cuts.get(name)
                if cut is not None:
                    view = memoryview(data)
                    data = b"".join((view[: cut.offset], view[cut.offset + cut.size :]))
                info = tarfile.TarInfo(name + CUT_SUFFIX if cut is not None else name)
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o755 if name.startswith("bin/") else 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self._write(buf)
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the archive atomically (temporary file in the same directory, then rename): ``path`` is
        either the old file or the complete new one, never a partial write."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                self._write(f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.path = path
        return path

    def extract(self, directory: str | os.PathLike[str]) -> Path:
        """Writes ``manifest.json`` and every file under ``directory`` (created if needed); returns it."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        for name, data in [(MANIFEST, self.manifest_bytes()), *self._files.items()]:
            dest = root.joinpath(*PurePosixPath(name).parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(0o755 if name.startswith("bin/") else 0o644)
        return root

    # ---- running

    def open_session(
        self, launcher: Launcher | None = None, *, timeout: float | None = _AUTO, threads: int | None = None
    ) -> Session:
        """Extracts the package to a temporary directory and starts its runnable with ``launcher`` (default:
        :func:`kiln.device.launchers.launcher_for` the package's target). Returns the Session (an
        :class:`~kiln.device.Executable`); closing it stops the runner and removes the directory.
        ``timeout`` bounds each call (default: :func:`run_timeout` of the manifest; None: no bound).
        ``threads`` sizes the runner's thread pool (0: one per online CPU; default: the package's
        ``threads``, from ``kiln compile --threads``); runners started on this host (``local``,
        ``qemu-user``) take it."""
        if timeout is _AUTO:
            timeout = run_timeout(self._manifest)
        args: list[str] = []
        if threads is not None:
            try:
                args = ["--threads", str(abi.check_threads(threads))]
            except ValueError as e:
                raise PackageError(f"package {self.name!r}: {e}") from None
            if self.target.is_bare_metal:
                raise PackageError(
                    f"package {self.name!r} is firmware for {self.target.name}: it runs on one thread"
                )
            if not isinstance(launcher or launcher_for(self.target), ProcessLauncher):
                raise PackageError(
                    f"the {getattr(launcher, 'name', '?')} launcher cannot pass a thread count to the runner; "
                    f"compile the package with threads={threads} (kiln compile --threads {threads}) instead"
                )
        runnable = self._manifest.get("runnable")
        if not runnable:
            raise PackageError(
                f"package {self.name!r} for {self._manifest['target']['name']} has no runnable"
            )
        tmp = Path(tempfile.mkdtemp(prefix="kiln-pkg-"))
        try:
            self.extract(tmp)
            chosen = launcher or launcher_for(self.target)
            if args:
                assert isinstance(chosen, ProcessLauncher)
                session = chosen.start(tmp / runnable, timeout=timeout, args=args)
            else:
                session = chosen.start(tmp / runnable, timeout=timeout)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        session.add_cleanup(lambda: shutil.rmtree(tmp, ignore_errors=True))
        return session

    def run(self, inputs: Mapping[str, Any], *, launcher: Launcher | None = None) -> dict[str, np.ndarray]:
        """Runs once on ``inputs`` (name -> array) and returns the outputs (name -> array). To run, time or
        profile several times, keep a session: ``with pkg.open_session() as s: ...``."""
        with self.open_session(launcher) as s:
            return s.run(inputs)

    def count_instructions(self, inputs: Mapping[str, Any], *, runs: int = 1) -> InstructionCounts:
        """Runs ``runs`` times on ``inputs`` under QEMU user mode with kiln's count plugin, on one thread,
        and returns the guest instructions executed per kernel (:mod:`kiln.device.icount`): exact and the same
        run to run. For Linux targets that this host emulates (not native ones: time those, or count with
        ``perf stat``)."""
        from kiln.package.toolchain import icount_plugin

        t = self.target
        if runs < 1:
            raise PackageError(f"runs must be at least 1, got {runs}")
        if t.is_bare_metal:
            raise PackageError(
                f"package {self.name!r} is firmware for {t.name}: instruction counts need a Linux target run "
                "under qemu-user (boards under qemu-system report instructions per run with kiln bench)"
            )
        if t.runs_natively():
            raise PackageError(
                f"package {self.name!r} is for {t.name}, which runs natively on this host: instruction counts "
                "come from QEMU user mode; compile for a target this host emulates (e.g. aarch64-linux, "
                "riscv64-linux-rvv) or count native runs with perf stat"
            )
        try:
            counter = InstructionCounter(
                icount_plugin(),
                self._manifest["kernels"],
                prefix=self._manifest.get("symbol_prefix", abi.DEFAULT_PREFIX),
                model=self.name,
                target=t.name,
            )
            with counter:
                launcher = QemuUserLauncher(t, count=counter)
                with self.open_session(launcher, threads=1) as session:
                    for _ in range(runs):
                        session.run(inputs)
                return counter.result()
        except CountError as e:
            raise PackageError(f"package {self.name!r}: {e}") from None

    def __repr__(self) -> str:
        return (
            f"Package({self.name!r}, target={self._manifest['target']['name']!r}, files={len(self._files)})"
        )


class _HashWriter(io.RawIOBase):
    """A write-only stream that only hashes (sha256 of a package without holding the archive)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._pos = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, data: Any) -> int:
        self._h.update(data)
        self._pos += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass(frozen=True)
class UnpackLimits:
    """Hard limits on what reading an archive may cost. The archive is uncompressed, so its members can
    never hold more bytes than the archive itself: a larger total is a lie (or a sparse member) and refused."""

    max_members: int = 4096
    max_member_bytes: int = 1 << 30
    max_total_bytes: int = 2 << 30

    def check(self, count: int, m: tarfile.TarInfo, total: int, archive_bytes: int, source: str) -> None:
        if count > self.max_members:
            raise PackageError(f"{source}: more than {self.max_members} members; refusing to unpack it")
        if m.size > self.max_member_bytes:
            raise PackageError(
                f"{source}: member {m.name!r} of {m.size} bytes is over the limit of {self.max_member_bytes}"
            )
        if total > min(self.max_total_bytes, archive_bytes):
            raise PackageError(
                f"{source}: its members declare {total} bytes, more than the archive's {archive_bytes} "
                f"(or the limit of {self.max_total_bytes}); refusing to unpack it"
            )


class _PathSet:
    """Member paths seen so far; refuses a path that is also a directory of another (``bin``, ``bin/x``)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.files: set[str] = set()
        self.dirs: set[str] = set()

    def add(self, name: str) -> None:
        if name in self.files:
            raise PackageError(f"{self.source}: member {name!r} appears twice; it was tampered with")
        parents = [p.as_posix() for p in PurePosixPath(name).parents if p.as_posix() != "."]
        if name in self.dirs or any(p in self.files for p in parents):
            raise PackageError(
                f"{self.source}: member {name!r} is both a file and a directory of another member; "
                "refusing to unpack it"
            )
        self.files.add(name)
        self.dirs.update(parents)


def unpack(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str] | None = None,
    *,
    limits: UnpackLimits | None = None,
) -> dict[str, Any]:
    """Verify a ``.kpkg`` file streaming, in constant memory, and return its manifest: every check of
    :meth:`Package.load` plus :class:`UnpackLimits`. With ``dest`` (a directory that must not exist yet) the
    files are written there as they are read; if anything fails the directory is removed: it exists only
    complete and verified."""
    path = Path(path)
    source = str(path)
    limits = limits or UnpackLimits()
    root = Path(dest) if dest is not None else None
    if root is not None:
        root.mkdir(mode=0o700)
    try:
        archive_bytes = path.stat().st_size
        paths = _PathSet(source)
        digests: dict[str, tuple[str, int]] = {}
        manifest_data: bytes | None = None
        cuts: dict[str, _Cut] = {}
        held: dict[str, IO[bytes]] = {}  # source member -> the range it lends (a temporary file)
        total = count = 0
        with contextlib.ExitStack() as stack:
            raw = stack.enter_context(path.open("rb"))
            tar = stack.enter_context(tarfile.open(fileobj=raw, mode="r|"))
            for m in tar:
                _check_member(m, source)
                paths.add(m.name)
                count += 1
                total += m.size
                limits.check(count, m, total, archive_bytes, source)
                f = tar.extractfile(m)
                assert f is not None  # a regular file, checked above
                if m.name == MANIFEST:
                    if m.size > 16 << 20:
                        raise PackageError(f"{source}: {MANIFEST} of {m.size} bytes is too large")
                    manifest_data = f.read()
                    cuts = _stored_once(_json_object(manifest_data), source)  # the rest is checked at the end
                    if cuts and count != 1:
                        raise PackageError(
                            f"{source}: {MANIFEST} is not the first member; the package is corrupted"
                        )
                    if root is not None:
                        (root / MANIFEST).write_bytes(manifest_data)
                    continue
                name = m.name.removesuffix(CUT_SUFFIX)
                cut = cuts.get(name) if name != m.name else None
                if cut is None:
                    name = m.name  # an unknown *.without-weights member: the digest check names it
                if name in digests:
                    raise PackageError(f"{source}: {name!r} is stored twice; the package is corrupted")
                lends = [c for c in cuts.values() if c.source == name]
                if cut is not None and m.size + cut.size > limits.max_member_bytes:
                    raise PackageError(
                        f"{source}: member {m.name!r} of {m.size + cut.size} bytes is over the limit of "
                        f"{limits.max_member_bytes}"
                    )
                h = hashlib.sha256()
                out = None
                if root is not None:
                    dest_path = root.joinpath(*PurePosixPath(name).parts)
                    dest_path.parent.mkdir(parents=True, exist_ok=True)
                    out = dest_path.open("wb")
                if lends:
                    held[name] = stack.enter_context(tempfile.TemporaryFile())
                size = 0
                try:
                    for block in _member_blocks(f, m.size, cut, held, source):
                        h.update(block)
                        if out is not None:
                            out.write(block)
                        for c in lends:  # keep the bytes this member lends to another
                            lo, hi = (
                                max(size, c.source_offset),
                                min(size + len(block), c.source_offset + c.size),
                            )
                            if lo < hi:
                                held[name].write(block[lo - size : hi - size])
                        size += len(block)
                finally:
                    if out is not None:
                        out.close()
                        dest_path.chmod(0o755 if name.startswith("bin/") else 0o644)
                digests[name] = (h.hexdigest(), size)
        if manifest_data is None:
            raise PackageError(f"{source} is not a kiln package: it has no {MANIFEST}")
        manifest = _parse_manifest(manifest_data, source)
        _verify_digests(manifest, digests, source)
        return manifest
    except tarfile.TarError as e:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        raise PackageError(f"{source} is not a kiln package (not a readable tar archive: {e})") from e
    except OSError as e:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        raise PackageError(f"cannot unpack {source}: {e.strerror or e}") from e
    except BaseException:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        raise


def _member_blocks(
    f: IO[bytes], size: int, cut: _Cut | None, held: Mapping[str, IO[bytes]], source: str
) -> Iterator[bytes]:
    """A member's whole bytes in blocks: as stored, or with the range another member lent put back."""
    if cut is None:
        while block := f.read(1 << 20):
            yield block
        return
    lent = held.get(cut.source)
    if lent is None or lent.tell() != cut.size or size < cut.offset:
        raise PackageError(
            f"{source}: {cut.path!r} is stored without {cut.size} bytes at {cut.offset} taken from "
            f"{cut.source!r}, but the archive does not hold them; the package is corrupted"
        )
    left = cut.offset
    while left and (block := f.read(min(left, 1 << 20))):
        left -= len(block)
        yield block
    lent.seek(0)
    while block := lent.read(1 << 20):
        yield block
    while block := f.read(1 << 20):
        yield block


def _check_member(m: tarfile.TarInfo, source: str) -> None:
    name = m.name
    parts = PurePosixPath(name).parts
    if (
        name.startswith("/")
        or "\\" in name
        or ".." in parts
        or PurePosixPath(name).as_posix() != name
        or not parts
    ):
        raise PackageError(
            f"{source}: member {name!r} has an unsafe path (absolute, '..', or not normalized); refusing to "
            "load the package: it may try to write outside its directory. Rebuild it with kiln."
        )
    sparse = m.type == tarfile.GNUTYPE_SPARSE or m.sparse is not None or _pax_sparse(m)
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or sparse:
        if sparse:
            kind = "sparse file (its declared size is not its size in the archive)"
        elif m.issym():
            kind = "symlink"
        elif m.islnk():
            kind = "hard link"
        elif m.isdir():
            kind = "directory"
        else:
            kind = "device or special file"
        raise PackageError(
            f"{source}: member {name!r} is a {kind}; kiln packages contain only regular files. "
            "Rebuild the package with kiln."
        )


def _parse_manifest(data: bytes, source: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise PackageError(f"{source}: {MANIFEST} is not valid JSON ({e}); the package is corrupted") from e
    if not isinstance(manifest, dict):
        raise PackageError(f"{source}: {MANIFEST} must be a JSON object")
    version = manifest.get("format_version")
    if version not in READ_VERSIONS:
        raise PackageError(
            f"{source}: package format version {version!r} is not supported (kiln {_kiln_version()} reads "
            f"versions {', '.join(map(str, READ_VERSIONS))}); rebuild the package with this kiln or install the "
            "kiln that made it"
        )
    for key in ("name", "target", "inputs", "outputs", "files"):
        if key not in manifest:
            raise PackageError(
                f"{source}: {MANIFEST} lacks the required key {key!r}; the package is corrupted"
            )
    return manifest


@dataclass(frozen=True)
class _Cut:
    """One ``stored_once`` entry: ``path`` is stored without ``size`` bytes at ``offset``, which are
    ``source``'s bytes at ``source_offset``."""

    path: str
    offset: int
    size: int
    source: str
    source_offset: int


#: Suffix of the archive name of a member stored without the bytes another member lends it (``stored_once``).
CUT_SUFFIX = ".without-weights"


def _stored_once(manifest: Mapping[str, Any], source: str) -> dict[str, _Cut]:
    """The manifest's ``stored_once`` entries by path, checked against its ``files``: a source is stored
    whole and comes before the file it completes in the archive, and both hold the range."""
    entries = manifest.get("stored_once", [])
    if entries == []:
        return {}
    files = manifest.get("files")
    if not isinstance(entries, list) or not isinstance(files, dict):
        raise PackageError(f"{source}: {MANIFEST} 'stored_once' must be a list; the package is corrupted")

    def size(path: Any) -> int:
        meta = files.get(path) if isinstance(path, str) else None
        value = meta.get("size") if isinstance(meta, dict) else None
        return value if isinstance(value, int) else -1

    cuts: dict[str, _Cut] = {}
    for entry in entries:
        cut = None
        if isinstance(entry, dict) and set(entry) == {f.name for f in dataclasses.fields(_Cut)}:
            cut = _Cut(**entry)
        numbers = () if cut is None else (cut.offset, cut.size, cut.source_offset)
        if (
            cut is None
            or not all(type(v) is int and v >= 0 for v in numbers)
            or not isinstance(cut.path, str)
            or not isinstance(cut.source, str)
            or not cut.source < cut.path
            or {cut.path, cut.source} & ({c.path for c in cuts.values()} | {c.source for c in cuts.values()})
            or cut.source_offset + cut.size > size(cut.source)
            or cut.offset + cut.size > size(cut.path)
        ):
            raise PackageError(
                f"{source}: {MANIFEST} has an invalid 'stored_once' entry {entry!r}; the package is corrupted"
            )
        cuts[cut.path] = cut
    return cuts


def _json_object(data: bytes) -> dict[str, Any]:
    """``data`` as a JSON object, or an empty one if it is not (the caller reports bad manifests later)."""
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _pax_sparse(m: tarfile.TarInfo) -> bool:
    return any(k.startswith("GNU.sparse") for k in (m.pax_headers or {}))


def _verify_files(manifest: dict[str, Any], contents: dict[str, bytes], source: str) -> None:
    _verify_digests(manifest, {k: (_sha256(v), len(v)) for k, v in contents.items()}, source)


def _verify_digests(manifest: dict[str, Any], contents: dict[str, tuple[str, int]], source: str) -> None:
    listed = manifest["files"]
    if not isinstance(listed, dict):
        raise PackageError(f"{source}: {MANIFEST} 'files' must map paths to {{sha256, size}}")
    for name in sorted(set(contents) - set(listed)):
        raise PackageError(
            f"{source}: member {name!r} is not listed in the manifest; the package was modified"
        )
    for name, meta in sorted(listed.items()):
        if name not in contents:
            raise PackageError(
                f"{source}: the manifest lists {name!r} but the archive lacks it; the package is "
                "incomplete (rebuild or download it again)"
            )
        meta = meta if isinstance(meta, dict) else {}
        have = contents[name]
        want = (meta.get("sha256"), meta.get("size"))
        if have != want:
            raise PackageError(
                f"{source}: {name!r} does not match the manifest (sha256 {have[0][:16]}..., {have[1]} bytes; "
                f"manifest says {str(want[0])[:16]}..., {want[1]} bytes): the package is corrupted or was "
                "modified; rebuild or download it again"
            )
