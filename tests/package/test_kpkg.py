"""Packages: deterministic archives, manifest, verification on load (traversal, tampering), atomic save."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kiln.ir import Module
from kiln.ops.interpreter import interpret
from kiln.package import Package, PackageError
from kiln.package.kpkg import FORMAT_VERSION, MANIFEST
from tinymodel import TINY_INFO, TINY_PROBE_BYTE, link_tiny, tiny_expected, tiny_inputs, tiny_package

NATIVE = "x86_64-linux"


@pytest.fixture(scope="module")
def pkg() -> Package:
    return tiny_package(NATIVE)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _members(pkg: Package) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(pkg.to_bytes())) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def test_two_builds_give_byte_identical_packages(pkg: Package) -> None:
    again = Package.create(NATIVE, TINY_INFO, link_tiny(NATIVE))
    assert again.to_bytes() == pkg.to_bytes()
    assert again.sha256 == pkg.sha256 == hashlib.sha256(pkg.to_bytes()).hexdigest()


def test_manifest_describes_the_package(pkg: Package) -> None:
    m = pkg.manifest
    assert m["format_version"] == FORMAT_VERSION and m["name"] == "tiny"
    assert m["target"]["name"] == NATIVE and m["target"]["triple"] == "x86_64-unknown-linux-musl"
    assert m["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": [2, 4]},
        {"name": "mode", "dtype": "int32", "shape": [1]},
    ]
    assert m["arena_bytes"] == 32 and m["weight_bytes"] == 33 and m["code_bytes"] > 0
    assert m["kernels"] == ["scale", "add_weights"] and m["operators"] == ["Add", "Mul"]
    assert m["runnable"] == "bin/runner" and m["compiler"].startswith("kiln ")
    assert (
        set(m["files"])
        == set(pkg.files)
        >= {"bin/runner", "lib/libmodel.a", "include/model.h", "include/kiln/model.h"}
    )
    for name, meta in m["files"].items():
        assert meta == {"sha256": hashlib.sha256(pkg.files[name]).hexdigest(), "size": len(pkg.files[name])}


def test_archive_layout_is_fixed(pkg: Package) -> None:
    members = [m for m, _ in _members(pkg)]
    names = [m.name for m in members]
    assert names[0] == MANIFEST and names[1:] == sorted(names[1:])
    for m in members:
        assert m.isreg() and m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == ""
        assert m.mode == (0o755 if m.name == "bin/runner" else 0o644)


def test_extra_manifest_keys(pkg: Package) -> None:
    linked = link_tiny(NATIVE)
    p = Package.create(NATIVE, TINY_INFO, linked, extra_manifest={"pipeline": "a,b", "compiler": "kiln 9"})
    assert p.manifest["pipeline"] == "a,b" and p.manifest["compiler"] == "kiln 9"
    with pytest.raises(ValueError, match="'files'"):
        Package.create(NATIVE, TINY_INFO, linked, extra_manifest={"files": {}})


def test_save_load_roundtrip(pkg: Package, tmp_path: Path) -> None:
    path = pkg.save(tmp_path / "tiny.kpkg")
    assert path.read_bytes() == pkg.to_bytes() and oct(path.stat().st_mode & 0o777) != "0o600"
    loaded = Package.load(path)
    assert loaded.manifest == pkg.manifest and dict(loaded.files) == dict(pkg.files)
    assert loaded.sha256 == pkg.sha256 and loaded.path == path


def test_save_is_atomic(pkg: Package, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.kpkg"
    path.write_bytes(b"previous version")

    def fail_halfway(self: Package, out: io.RawIOBase) -> None:
        out.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Package, "_write", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        pkg.save(path)
    assert path.read_bytes() == b"previous version"
    assert os.listdir(tmp_path) == ["model.kpkg"]  # no temporary file left behind


def test_extract_writes_every_file(pkg: Package, tmp_path: Path) -> None:
    root = pkg.extract(tmp_path / "x")
    assert json.loads((root / MANIFEST).read_text()) == pkg.manifest
    for name, data in pkg.files.items():
        assert (root / name).read_bytes() == data
    assert os.access(root / "bin" / "runner", os.X_OK)


def test_run_and_a_session_that_times_and_profiles(pkg: Package) -> None:
    inputs = tiny_inputs(7)
    out = pkg.run(inputs)
    np.testing.assert_allclose(out["y"], tiny_expected(inputs), rtol=1e-6)
    assert out["probe"].tolist() == [TINY_PROBE_BYTE]
    with pkg.open_session() as s:
        assert len(s.time(number=3, repeat=2, inputs=inputs)) == 2
        assert [r.kernel for r in s.profile(inputs).rows()] != []


# ---- verification on load


@pytest.mark.parametrize(
    "name", ["../evil", "/etc/passwd", "a/../../b", "./bin/runner", "bin//runner", "a\\b"]
)
def test_unsafe_paths_are_rejected(pkg: Package, name: str) -> None:
    members = _members(pkg)
    members.append((tarfile.TarInfo(name), b"x"))
    with pytest.raises(PackageError, match="unsafe path"):
        Package.from_bytes(_tar(members))


@pytest.mark.parametrize(
    ("kind", "word"),
    [
        (tarfile.SYMTYPE, "symlink"),
        (tarfile.LNKTYPE, "hard link"),
        (tarfile.DIRTYPE, "directory"),
        (tarfile.CHRTYPE, "device"),
    ],
)
def test_links_and_special_files_are_rejected(pkg: Package, kind: bytes, word: str) -> None:
    info = tarfile.TarInfo("bin/sneaky")
    info.type = kind
    info.linkname = "/etc/passwd"
    with pytest.raises(PackageError, match=word):
        Package.from_bytes(_tar([*_members(pkg), (info, b"")]))


def test_tampered_file_is_rejected(pkg: Package) -> None:
    def flip(data: bytes) -> bytes:
        return data[:100] + bytes([data[100] ^ 1]) + data[101:]

    members = [(m, flip(data) if m.name.startswith("lib/libmodel.a") else data) for m, data in _members(pkg)]
    with pytest.raises(PackageError, match=r"'lib/libmodel.a' does not match the manifest.*corrupted"):
        Package.from_bytes(_tar(members))


def test_unlisted_and_missing_files_are_rejected(pkg: Package) -> None:
    members = _members(pkg)
    with pytest.raises(PackageError, match="'extra.txt' is not listed"):
        Package.from_bytes(_tar([*members, (tarfile.TarInfo("extra.txt"), b"hi")]))
    with pytest.raises(PackageError, match="lists 'bin/runner' but the archive lacks it"):
        Package.from_bytes(_tar([(m, d) for m, d in members if m.name != "bin/runner"]))


def test_unknown_format_version_is_rejected(pkg: Package) -> None:
    members = _members(pkg)
    manifest = json.loads(members[0][1])
    manifest["format_version"] = FORMAT_VERSION + 1
    members[0] = (tarfile.TarInfo(MANIFEST), json.dumps(manifest).encode())
    with pytest.raises(PackageError, match=f"format version {FORMAT_VERSION + 1} is not supported"):
        Package.from_bytes(_tar(members))


def test_garbage_is_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a kiln package"):
        Package.from_bytes(b"\x00garbage" * 100)
    with pytest.raises(PackageError, match="has no manifest.json"):
        Package.from_bytes(_tar([(tarfile.TarInfo("x"), b"1")]))
    with pytest.raises(PackageError, match="cannot read package"):
        Package.load(tmp_path / "missing.kpkg")


@functools.cache
def _slow_matmuls(n: int = 1024, count: int = 4) -> tuple[Module, Package]:
    """``count`` chained n x n matmuls: long enough per run that a short timeout is tight."""
    import kiln
    from kiln.frontend.nn import GraphBuilder

    rng = np.random.default_rng(0)
    g = GraphBuilder("slow")
    y = g.input("x", (n, n))
    for _ in range(count):
        y = g.matmul(y, g.const((rng.standard_normal((n, n)) / n).astype("f4")))
    g.output(y, "y")
    mod = g.build()
    return mod, kiln.compile(mod, NATIVE)


@pytest.mark.xdist_group("slow-matmuls")  # one worker compiles the model for both
def test_default_timeout_grows_with_the_model_flops(pkg: Package) -> None:
    from kiln.package.kpkg import SLOWEST_FLOPS_PER_S, run_timeout

    mod, slow = _slow_matmuls()
    assert slow.manifest["flops"] == 4 * 2 * 1024**3
    assert run_timeout(slow.manifest) == pytest.approx(60.0 + 4 * 2 * 1024**3 / SLOWEST_FLOPS_PER_S)
    assert run_timeout(pkg.manifest, 5.0) == pytest.approx(
        5.0 + pkg.manifest.get("flops", 0) / SLOWEST_FLOPS_PER_S
    )
    with slow.open_session() as s:
        assert s.timeout == pytest.approx(run_timeout(slow.manifest))
        x = {"x": np.random.default_rng(1).standard_normal((1024, 1024)).astype("f4")}
        want = interpret(mod, x)["y"]  # and the model computes what it should
        np.testing.assert_allclose(s.run(x)["y"], want, rtol=1e-3, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.xdist_group("slow-matmuls")  # one worker compiles the model for both
def test_time_budget_covers_every_timed_run() -> None:
    """A per-call timeout longer than one run but shorter than the whole TIME call: TIME still finishes,
    because its budget adds the runs it will make (measured by a calibrating RUN)."""
    _, slow = _slow_matmuls()
    x = {"x": np.ones((1024, 1024), np.float32)}
    with slow.open_session(timeout=None) as s:
        s.run(x, fetch_outputs=False)
        one = s.run_seconds
    with slow.open_session(timeout=max(0.5, 4 * one)) as s:
        s.set_inputs(x)
        secs = s.time(number=4, repeat=3)
    assert len(secs) == 3 and sum(secs) * 4 > max(0.5, 4 * one)  # the call outlasted the per-call timeout
    assert s.run_seconds > 0
