"""The device server's package cache: verified ``.kpkg`` archives on disk, addressed by sha256.

Protocol rules
==============

Uploads
    A package is addressed by the sha256 of its ``.kpkg`` archive. ``Upload`` streams it in chunks; the first
    chunk names the sha256 and the total size. The cache writes the stream to a temporary file, refuses more
    than the announced size or ``max_upload_bytes`` (:class:`TooLarge`, ``RESOURCE_EXHAUSTED``), then checks
    the sha256 (:class:`CorruptUpload`, ``DATA_LOSS`` on a mismatch) and hands the file to the caller's
    ``verify`` (the device service checks the archive itself, :mod:`kiln.rpc.device_service`). Only then does
    the file enter the cache, atomically (a rename). A rejected upload leaves the cache untouched, and
    temporary files left by a crash are removed when the cache opens.

Owners
    A package is visible only to the identities that uploaded it (``owner``; the device service passes the
    caller's identity): asking for a package another identity uploaded answers ``NOT_FOUND`` exactly as if
    it were not cached, so a client can neither probe nor load someone else's package by its sha256. An
    identity that uploads a package the cache already holds sends it whole like any upload (proving it has
    the bytes) and is added to its owners; the bytes are stored once. Owners are kept next to each archive
    (``<sha>.owners``). The cache directory is private to the server (mode 0711: runners can pass through it
    to their own work directories, never list it; archives are 0600).

Size and eviction
    The cache holds at most ``limit_bytes``; when a new package does not fit, the least recently used
    packages that are not pinned (the device service pins the packages that have a live runner) are evicted.
    A package larger than the whole cache is refused. Looking a package up (:meth:`PackageCache.touch`)
    counts as a use; asking for one that is not cached fails with :class:`NotCached` (``NOT_FOUND``).

The device server's errors start here, at its lowest layer: :class:`DeviceServerError` and the ones the
cache raises; the device service adds its own (:mod:`kiln.rpc.device_service`). Each subclass stands for one
gRPC status code, which :mod:`kiln.rpc.servicers` applies.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from kiln.rpc import device_pb2

log = logging.getLogger("kiln.rpc.cache")

MAX_UPLOAD_BYTES = 256 * 1024 * 1024
CACHE_BYTES = 1024 * 1024 * 1024


# ------------------------------------------------------------------------------------------------ errors


class DeviceServerError(Exception):
    """A request the device server refuses or could not complete; each subclass stands for one gRPC status
    code."""


class BadRequest(DeviceServerError):
    """A malformed request (not a sha256, bad tensors, inputs that do not fit the model): ``INVALID_ARGUMENT``."""


class NotCached(DeviceServerError):
    """The package is not in the cache; upload it first: ``NOT_FOUND``."""


class TooLarge(DeviceServerError):
    """The package exceeds the upload limit or does not fit the cache: ``RESOURCE_EXHAUSTED``."""


class CorruptUpload(DeviceServerError):
    """The upload does not match its announced size or sha256: ``DATA_LOSS``."""


def check_sha(sha: str) -> str:
    """``sha`` if it is a lowercase hex sha256, else :class:`BadRequest`."""
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BadRequest(f"{sha[:80]!r} is not a lowercase hex sha256")
    return sha


# ------------------------------------------------------------------------------------------------- cache


class PackageCache:
    """Content-addressed, size-bounded, LRU cache of verified package archives in ``root``."""

    def __init__(self, root: Path, limit_bytes: int = CACHE_BYTES, max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)
        self.limit_bytes = limit_bytes
        self.max_upload_bytes = max_upload_bytes
        self._lock = threading.Lock()
        self._lru: OrderedDict[str, int] = OrderedDict()  # sha -> bytes, least recent first
        self._owners: dict[str, set[str]] = {}
        for p in sorted(self.root.glob("*.kpkg"), key=lambda p: p.stat().st_mtime):
            self._lru[p.stem] = p.stat().st_size
            owners = p.with_suffix(".owners")
            self._owners[p.stem] = set(owners.read_text().split()) if owners.exists() else set()
        for p in self.root.glob("*.part"):
            p.unlink(missing_ok=True)

    def path(self, sha: str) -> Path:
        return self.root / f"{sha}.kpkg"

    def _visible(self, sha: str, owner: str | None) -> bool:
        return sha in self._lru and (owner is None or owner in self._owners.get(sha, ()))

    def has(self, sha: str, owner: str | None = None) -> bool:
        """Whether ``sha`` is cached and visible to ``owner`` (None: to anyone)."""
        with self._lock:
            return self._visible(sha, owner)

    def touch(self, sha: str, owner: str | None = None) -> Path:
        with self._lock:
            if not self._visible(sha, owner):
                raise NotCached(f"package {sha[:12]} is not on this device; upload it first")
            self._lru.move_to_end(sha)
            return self.path(sha)

    def _add_owner_locked(self, sha: str, owner: str | None) -> None:
        if owner is None:
            return
        owners = self._owners.setdefault(sha, set())
        if owner not in owners:
            owners.add(owner)
            self.path(sha).with_suffix(".owners").write_text("\n".join(sorted(owners)) + "\n")

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(self._lru.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._lru)

    def receive(
        self,
        chunks: Iterator[device_pb2.UploadChunk],
        verify: Callable[[Path], None],
        pinned: Callable[[], set[str]] = set,
        owner: str | None = None,
    ) -> tuple[str, int]:
        """Write an upload stream to a temporary file, verify it, and move it into the cache, visible to
        ``owner`` (None: to anyone)."""
        first = next(chunks, None)
        if first is None:
            raise BadRequest("empty upload")
        sha, size = check_sha(first.sha256), first.size
        if size > self.max_upload_bytes:
            raise TooLarge(
                f"package of {size} bytes exceeds this device's upload limit of {self.max_upload_bytes}"
            )
        if size > self.limit_bytes:
            raise TooLarge(
                f"package of {size} bytes does not fit this device's cache of {self.limit_bytes} bytes"
            )
        fd, tmp_name = tempfile.mkstemp(dir=self.root, suffix=".part")
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            got = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in _chain(first, chunks):
                    got += len(chunk.data)
                    if got > size:
                        raise CorruptUpload(f"upload of {sha[:12]} sent more than the announced {size} bytes")
                    h.update(chunk.data)
                    f.write(chunk.data)
            if got != size:
                raise CorruptUpload(f"upload of {sha[:12]} ended after {got} of {size} bytes")
            if h.hexdigest() != sha:
                raise CorruptUpload(
                    f"upload does not match its sha256: announced {sha[:12]}, received {h.hexdigest()[:12]}"
                )
            with self._lock:
                if sha in self._lru:  # the same bytes are here already: the uploader becomes an owner
                    self._add_owner_locked(sha, owner)
                    self._lru.move_to_end(sha)
                    return sha, size
            verify(tmp)
            with self._lock:
                self._evict_locked(size, pinned())
                os.replace(tmp, self.path(sha))
                self._lru[sha] = size
                self._lru.move_to_end(sha)
                self._owners[sha] = set()
                self._add_owner_locked(sha, owner)
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)

    def _evict_locked(self, need: int, pinned: set[str]) -> None:
        total = sum(self._lru.values())
        for sha in list(self._lru):
            if total + need <= self.limit_bytes:
                return
            if sha in pinned:
                continue
            total -= self._lru.pop(sha)
            self._owners.pop(sha, None)
            self.path(sha).unlink(missing_ok=True)
            self.path(sha).with_suffix(".owners").unlink(missing_ok=True)
            log.info("evicted package %s from the cache", sha[:12])
        if total + need > self.limit_bytes:
            raise TooLarge(f"cache full: {total} of {self.limit_bytes} bytes held by loaded packages")


def _chain(
    first: device_pb2.UploadChunk, rest: Iterator[device_pb2.UploadChunk]
) -> Iterator[device_pb2.UploadChunk]:
    yield first
    yield from rest
