"""ONNX models whose weights are stored beside them (ONNX external data: ``location``, ``offset``, ``length``):
one file or many, through ``from_onnx``, ``kiln.compile`` and ``kiln compile``; a model over protobuf's 2 GB
limit; a missing or short weights file is an error naming the tensor and the file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.frontend import ModelLoadError, from_onnx
from models import onnxruntime_outputs

TARGET = "x86_64-linux"


def _small_model() -> onnx.ModelProto:
    """conv (weights, bias) -> relu -> flatten -> matmul (weights) + bias: four initializers."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("f4"), "conv_w"),
        numpy_helper.from_array(rng.standard_normal(4).astype("f4"), "conv_b"),
        numpy_helper.from_array(rng.standard_normal((4 * 6 * 6, 5)).astype("f4") * 0.1, "fc_w"),
        numpy_helper.from_array(rng.standard_normal(5).astype("f4"), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc_w"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "fc_b"], ["y"], name="fc_bias"),
    ]
    g = helper.make_graph(
        nodes,
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _save(tmp: Path, one_file: bool) -> Path:
    path = tmp / "model.onnx"
    onnx.save_model(
        _small_model(),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=one_file,
        location="weights.bin" if one_file else None,
        size_threshold=0,
    )
    return path


def _refer_outside(
    t: TensorProto, location: str, offset: int | None = None, length: int | None = None
) -> None:
    """Tensor ``t`` made a reference to external data (its own data dropped)."""
    for field in ("raw_data", "float_data"):
        t.ClearField(field)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            t.external_data.add(key=key, value=str(value))


def _stored_outside(path: Path) -> list[str]:
    m = onnx.load(str(path), load_external_data=False)
    return [t.name for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL]


@pytest.mark.parametrize("one_file", [True, False], ids=["one-file", "file-per-tensor"])
def test_external_weights_compile_and_match_onnxruntime(tmp_path: Path, one_file: bool) -> None:
    path = _save(tmp_path, one_file)
    assert sorted(_stored_outside(path)) == ["conv_b", "conv_w", "fc_b", "fc_w"]
    files = sorted(p.name for p in tmp_path.iterdir() if p.name != "model.onnx")
    assert files == (["weights.bin"] if one_file else ["conv_b", "conv_w", "fc_b", "fc_w"])
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype("f4")
    want = onnxruntime_outputs(path, {"x": x})["y"]
    got = kiln.compile(path, TARGET).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_imported_constants_are_the_stored_weights(tmp_path: Path) -> None:
    path = _save(tmp_path, one_file=True)
    want = {t.name: numpy_helper.to_array(t) for t in _small_model().graph.initializer}
    consts = {c.name: c.data for c in from_onnx(path).main.constants()}
    for name, w in want.items():
        np.testing.assert_array_equal(consts[name], w)
    # a ModelProto read without its external data: the directory is given as base_dir
    proto = onnx.load(str(path), load_external_data=False)
    consts = {c.name: c.data for c in from_onnx(proto, base_dir=tmp_path).main.constants()}
    np.testing.assert_array_equal(consts["fc_w"], want["fc_w"])
    with pytest.raises(ModelLoadError, match="'conv_w'.*'weights.bin'.*base_dir="):
        from_onnx(proto)
    # a ModelProto read with its external data (onnx.load's default) imports as it is
    consts = {c.name: c.data for c in from_onnx(onnx.load(str(path))).main.constants()}
    np.testing.assert_array_equal(consts["conv_w"], want["conv_w"])


def test_cli_compiles_a_model_with_external_weights(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    path = _save(tmp_path / "m", one_file=False)
    out = tmp_path / "m.kpkg"
    r = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "compile", str(path), "--target", TARGET, "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the model's directory: the weights are found next to the model
    )
    assert r.returncode == 0, r.stderr
    x = np.random.default_rng(2).standard_normal((1, 3, 6, 6)).astype("f4")
    got = kiln.load(out).run({"x": x})["y"]
    np.testing.assert_allclose(got, onnxruntime_outputs(path, {"x": x})["y"], rtol=1e-4, atol=1e-5)


def test_missing_external_file_names_the_tensor_and_the_path(tmp_path: Path) -> None:
    path = _save(tmp_path, one_file=False)
    (tmp_path / "fc_w").unlink()
    with pytest.raises(ModelLoadError, match=f"'fc_w'.*missing: {tmp_path / 'fc_w'}"):
        from_onnx(path)


def test_short_external_file_names_the_tensor_and_the_path(tmp_path: Path) -> None:
    path = _save(tmp_path, one_file=True)
    data = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data[: len(data) - 8])
    with pytest.raises(ModelLoadError, match=f"tensor '(fc_b|fc_w)'.*{tmp_path / 'weights.bin'}.*truncated"):
        from_onnx(path)


def test_external_location_outside_the_model_directory_is_refused(tmp_path: Path) -> None:
    m = _small_model()
    _refer_outside(m.graph.initializer[0], "../elsewhere.bin")
    (tmp_path / "d").mkdir()
    onnx.save(m, str(tmp_path / "d" / "model.onnx"))
    with pytest.raises(ModelLoadError, match="'conv_w'.*'../elsewhere.bin'.*not a file inside"):
        from_onnx(tmp_path / "d" / "model.onnx")


# A model over protobuf's 2 GB: nine 16384x4096 float32 weights (256 MiB each, 2.25 GiB in all) in one
# file, each at its own offset; imported in a separate process whose peak memory shows they were mapped,
# not read. Values are a formula of the flat index, so samples are checked without keeping the data.
_BIG_ROWS, _BIG_COLS, _BIG_COUNT = 16384, 4096, 9


def _big_value(i: int, flat: np.ndarray) -> np.ndarray:
    return (flat % 65521).astype(np.float32) * np.float32(0.25) + np.float32(i)


# run in its own process: imports the model, saves the process's peak memory after the import and samples of
# every constant
_IMPORT_AND_SAMPLE = textwrap.dedent(
    r"""
    import re, sys
    import numpy as np
    from kiln.frontend import from_onnx

    consts = {c.name: c.data for c in from_onnx(sys.argv[1]).main.constants()}
    # before sampling maps pages in. VmHWM is this process's own high-water mark (ru_maxrss would include
    # the memory of the parent it was forked from: Linux keeps the larger of the two across exec)
    status = open("/proc/self/status").read()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
    rng = np.random.default_rng(0)
    samples = {}
    for name, w in consts.items():
        flat = np.concatenate([[0, w.size - 1], rng.integers(0, w.size, 2000)])
        samples[name + "_at"], samples[name] = flat, w.reshape(-1)[flat]
    np.savez(sys.argv[2], peak=peak, nbytes=sum(c.nbytes for c in consts.values()), **samples)
    """
)


def test_model_over_2gb_of_external_weights_imports_memory_mapped(tmp_path: Path) -> None:
    n = _BIG_ROWS * _BIG_COLS
    nbytes = n * 4
    inits, nodes = [], []
    with open(tmp_path / "weights.bin", "wb") as f:
        for i in range(_BIG_COUNT):
            for start in range(0, n, 1 << 24):  # 64 MiB at a time
                f.write(_big_value(i, np.arange(start, min(n, start + (1 << 24)))).tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[_BIG_ROWS, _BIG_COLS])
            _refer_outside(t, "weights.bin", offset=i * nbytes, length=nbytes)
            inits.append(t)
            nodes.append(helper.make_node("Add", ["x", f"w{i}"], [f"y{i}"], name=f"add{i}"))
    assert (tmp_path / "weights.bin").stat().st_size == _BIG_COUNT * nbytes > 2**31
    g = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, _BIG_COLS])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(_BIG_COUNT)],
        inits,
    )
    onnx.save(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx"
    )
    try:
        r = subprocess.run(
            [sys.executable, "-c", _IMPORT_AND_SAMPLE, str(tmp_path / "m.onnx"), str(tmp_path / "s.npz")],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        got = np.load(tmp_path / "s.npz")
        assert int(got["nbytes"]) == _BIG_COUNT * nbytes
        for i in range(_BIG_COUNT):
            assert got[f"w{i}"].dtype == np.float32
            np.testing.assert_array_equal(got[f"w{i}"], _big_value(i, got[f"w{i}_at"]), err_msg=f"w{i}")
        peak = int(got["peak"])
        assert peak < 1 << 30, f"importing read the weights into memory: peak RSS {peak / 2**20:.0f} MiB"
    finally:
        (tmp_path / "weights.bin").unlink()
