"""Packages store the weights blob once (``stored_once``): size, round trips, runs, tampering."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import running

from kiln.package import Package, PackageError
from kiln.package.kpkg import MANIFEST, unpack
from tinymodel import TINY_INFO, link_tiny, tiny_inputs

NATIVE = "x86_64-linux"
#: what a package holds beside one copy of the weights: runner code, runtime, headers, tar headers
OVERHEAD_BYTES = 1 << 20


def _blob(size: int, seed: int = 0) -> bytes:
    """Weights no code under test produced: random bytes (float32s in the first 32, read by the model)."""
    rng = np.random.default_rng(seed)
    head = rng.standard_normal(8).astype(np.float32).tobytes()
    return head + rng.integers(0, 256, size - len(head), dtype=np.uint8).tobytes()


def _expected(blob: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tiny model's outputs by its definition: y = 2 x + weights[0:32] as 2x4 float32, probe = byte 32."""
    w = np.frombuffer(blob[:32], dtype=np.float32).reshape(2, 4)
    return {"y": feeds["x"] * np.float32(2) + w, "probe": np.array([blob[32]], dtype=np.int64)}


def _package(target: str, blob: bytes) -> Package:
    return Package.create(target, TINY_INFO, link_tiny(target, weights=blob))


@pytest.fixture(scope="module")
def blob() -> bytes:
    return _blob(8 << 20)


@pytest.fixture(scope="module")
def pkg(blob: bytes) -> Package:
    return _package(NATIVE, blob)


def test_the_archive_holds_one_copy_of_the_weights(pkg: Package, blob: bytes) -> None:
    assert blob in pkg.files["bin/runner"] and blob in pkg.files["lib/libmodel.a"]  # both whole in memory
    data = pkg.to_bytes()
    assert len(blob) < len(data) < len(blob) + OVERHEAD_BYTES
    assert data.count(blob[1000:2000]) == 1


def test_save_load_and_unpack_give_every_file_whole(pkg: Package, tmp_path: Path) -> None:
    path = pkg.save(tmp_path / "m.kpkg")
    assert dict(Package.load(path).files) == dict(pkg.files)
    assert unpack(path) == pkg.manifest  # verified streaming, nothing written
    unpack(path, tmp_path / "x")
    for name, data in pkg.files.items():
        assert (tmp_path / "x" / name).read_bytes() == data, name


def test_a_plain_tar_extract_gives_no_incomplete_library(pkg: Package, tmp_path: Path) -> None:
    """The library stored without the weights has an archive name of its own: ``tar x`` gives the whole
    runner and ``lib/libmodel.a.without-weights``, never a ``lib/libmodel.a`` that would link wrong."""
    path = pkg.save(tmp_path / "m.kpkg")
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "t", filter="data")
    assert (tmp_path / "t" / "bin" / "runner").read_bytes() == pkg.files["bin/runner"]
    assert not (tmp_path / "t" / "lib" / "libmodel.a").exists()
    part = (tmp_path / "t" / "lib" / "libmodel.a.without-weights").read_bytes()
    assert len(part) == len(pkg.files["lib/libmodel.a"]) - pkg.manifest["stored_once"][0]["size"]


def test_a_library_stored_twice_is_refused(pkg: Package, tmp_path: Path) -> None:
    """A whole ``lib/libmodel.a`` beside its cut copy is ambiguous: refused by both readers."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(pkg.to_bytes())) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src:
            dst.addfile(m, src.extractfile(m))
        whole = pkg.files["lib/libmodel.a"]
        info = tarfile.TarInfo("lib/libmodel.a")
        info.size = len(whole)
        dst.addfile(info, io.BytesIO(whole))
    with pytest.raises(PackageError, match="stored twice"):
        Package.from_bytes(out.getvalue())
    (tmp_path / "twice.kpkg").write_bytes(out.getvalue())
    with pytest.raises(PackageError, match="stored twice"):
        unpack(tmp_path / "twice.kpkg", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_two_builds_give_byte_identical_packages(pkg: Package, blob: bytes) -> None:
    assert _package(NATIVE, blob).to_bytes() == pkg.to_bytes()


@pytest.mark.parametrize("target", [NATIVE, pytest.param("aarch64-linux", marks=pytest.mark.qemu)])
def test_a_loaded_package_runs(target: str, tmp_path: Path) -> None:
    blob = _blob(2 << 20, seed=1)
    loaded = Package.load(_package(target, blob).save(tmp_path / "m.kpkg"))
    feeds = tiny_inputs(seed=3)
    out = running.run(loaded, feeds)
    want = _expected(blob, feeds)
    np.testing.assert_allclose(out["y"], want["y"], rtol=1e-6)
    assert out["probe"].tolist() == want["probe"].tolist()


def test_a_board_package_stores_its_weights_once(tmp_path: Path) -> None:
    blob = _blob(64 << 10, seed=2)
    board = _package("mps2-an386", blob)
    assert board.manifest["stored_once"][0]["source"] == "bin/image.elf"
    data = board.to_bytes()
    assert data.count(blob[100:1100]) == 1
    assert dict(Package.from_bytes(data).files) == dict(board.files)


def _with_manifest(pkg: Package, edit: dict[str, object]) -> bytes:
    """The package's archive with manifest keys replaced (the other members stored as the package stores
    them)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(pkg.to_bytes())) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name == MANIFEST:
                data = json.dumps({**json.loads(data), **edit}).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize(
    "change",
    [
        {"offset": 10**12},
        {"size": -1},
        {"source": "lib/libmodel.a"},
        {"source": "include/model.h"},
        {"path": "bin/elsewhere"},
        {"extra": 1},
    ],
)
def test_a_bad_stored_once_entry_is_rejected(pkg: Package, tmp_path: Path, change: dict[str, object]) -> None:
    entry = {**pkg.manifest["stored_once"][0], **change}
    data = _with_manifest(pkg, {"stored_once": [entry]})
    with pytest.raises(PackageError, match="invalid 'stored_once' entry"):
        Package.from_bytes(data)
    (tmp_path / "bad.kpkg").write_bytes(data)
    with pytest.raises(PackageError, match="invalid 'stored_once' entry"):
        unpack(tmp_path / "bad.kpkg", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_moved_range_is_caught_by_the_digests(pkg: Package, tmp_path: Path) -> None:
    """An in-range but wrong offset rebuilds a library whose sha256 differs from the manifest's."""
    entry = pkg.manifest["stored_once"][0]
    data = _with_manifest(pkg, {"stored_once": [{**entry, "source_offset": entry["source_offset"] + 1}]})
    with pytest.raises(PackageError, match="'lib/libmodel.a' does not match the manifest"):
        Package.from_bytes(data)
    (tmp_path / "bad.kpkg").write_bytes(data)
    with pytest.raises(PackageError, match="'lib/libmodel.a' does not match the manifest"):
        unpack(tmp_path / "bad.kpkg")


def test_a_format_1_package_is_still_read(pkg: Package) -> None:
    """Format 1 stored every member whole (no ``stored_once``)."""
    manifest = pkg.manifest
    del manifest["stored_once"]
    manifest["format_version"] = 1
    old = Package(manifest, pkg.files).to_bytes()
    assert old.count(_blob(8 << 20)[1000:2000]) == 2
    assert dict(Package.from_bytes(old).files) == dict(pkg.files)


def test_a_package_without_weights_has_no_stored_once() -> None:
    empty = Package.create(NATIVE, TINY_INFO, link_tiny(NATIVE, weights=b""))
    assert "stored_once" not in empty.manifest
    assert dict(Package.from_bytes(empty.to_bytes()).files) == dict(empty.files)
