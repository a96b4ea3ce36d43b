"""The device server's package cache: sha256-verified uploads, size limits, LRU eviction, atomicity."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.rpc import device_pb2
from kiln.rpc.cache import BadRequest, CorruptUpload, NotCached, PackageCache, TooLarge
from kiln.rpc.device_service import InvalidPackage


def chunks(
    data: bytes, sha: str | None = None, size: int | None = None, step: int = 7
) -> Iterator[device_pb2.UploadChunk]:
    sha = sha or hashlib.sha256(data).hexdigest()
    size = len(data) if size is None else size
    for i, off in enumerate(range(0, max(1, len(data)), step)):
        yield device_pb2.UploadChunk(
            sha256=sha if i == 0 else "", size=size if i == 0 else 0, data=data[off : off + step]
        )


def ok(path: Path) -> None:
    pass


def files(cache: PackageCache) -> list[str]:
    return sorted(p.name for p in cache.root.iterdir())


def test_upload_and_lookup(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path, limit_bytes=1000)
    data = b"package-bytes" * 5
    sha, size = cache.receive(chunks(data), ok)
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert cache.has(sha) and cache.touch(sha).read_bytes() == data
    assert len(cache) == 1 and cache.total_bytes == len(data)
    with pytest.raises(NotCached, match="upload it first"):
        cache.touch("0" * 64)
    # a new cache object over the same directory finds the package again
    assert PackageCache(tmp_path, limit_bytes=1000).has(sha)


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda d: chunks(d, sha="ab" * 32), CorruptUpload),  # wrong sha256
        (lambda d: chunks(d[:-1] + b"X", sha=hashlib.sha256(d).hexdigest()), CorruptUpload),  # flipped byte
        (lambda d: chunks(d, size=len(d) - 1), CorruptUpload),  # more bytes than announced
        (lambda d: chunks(d, size=len(d) + 1), CorruptUpload),  # truncated stream
        (lambda d: chunks(d, sha="not-a-sha"), BadRequest),
        (lambda d: iter(()), BadRequest),
    ],
)
def test_corrupt_uploads_leave_cache_untouched(tmp_path: Path, make, error) -> None:  # type: ignore[no-untyped-def]
    cache = PackageCache(tmp_path, limit_bytes=1000)
    good, _ = cache.receive(chunks(b"first package"), ok)
    before = files(cache)
    with pytest.raises(error):
        cache.receive(make(b"second package data"), ok)
    assert files(cache) == before
    assert cache.has(good) and len(cache) == 1


def test_verification_failure_leaves_cache_untouched(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path, limit_bytes=1000)

    def reject(path: Path) -> None:
        raise InvalidPackage("package rejected: member ../../etc/passwd escapes the package")

    with pytest.raises(InvalidPackage, match="escapes"):
        cache.receive(chunks(b"evil"), reject)
    assert files(cache) == [] and len(cache) == 0


def test_size_limits(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path, limit_bytes=100, max_upload_bytes=50)
    with pytest.raises(TooLarge, match="upload limit"):
        cache.receive(chunks(b"x" * 60), ok)
    cache = PackageCache(tmp_path, limit_bytes=40, max_upload_bytes=50)
    with pytest.raises(TooLarge, match="does not fit"):
        cache.receive(chunks(b"x" * 45), ok)
    assert files(cache) == []


def test_lru_eviction_spares_pinned(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path, limit_bytes=30)
    a, _ = cache.receive(chunks(b"a" * 10), ok)
    b, _ = cache.receive(chunks(b"b" * 10), ok)
    c, _ = cache.receive(chunks(b"c" * 10), ok)
    cache.touch(a)  # a is now the most recently used; b the least
    d, _ = cache.receive(chunks(b"d" * 10), ok)
    assert not cache.has(b) and all(cache.has(s) for s in (a, c, d))
    # c is least recently used but pinned (a live runner uses it): a goes instead
    e, _ = cache.receive(chunks(b"e" * 10), ok, pinned=lambda: {c})
    assert not cache.has(a) and all(cache.has(s) for s in (c, d, e))
    with pytest.raises(TooLarge, match="held by loaded packages"):
        cache.receive(chunks(b"f" * 10), ok, pinned=lambda: {c, d, e})
    assert cache.total_bytes == 30
