"""Dynamic shapes: a model compiled once with run-time dimensions and their bounds (``--shape ids=1x?:512``)
runs at every size up to the bound, matching onnxruntime at that size: a BERT-style encoder at sequence lengths
1, 7, 64 and 512, a CNN at several image sizes (natively, and lighter cases under QEMU on aarch64 and
riscv64). A size past the bound, inputs that disagree on a size, and an operator without a lowering for
run-time sizes are clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import running

import kiln
from kiln.device.protocol import DeviceError, InputError
from kiln.ops.base import OpError
from models import DYNAMIC_SEQ_MAX, dynamic_onnx_path, onnxruntime_outputs

NATIVE = "x86_64-linux"
SEQ = {"ids": (1, f"seq:{DYNAMIC_SEQ_MAX}"), "mask": (1, f"seq:{DYNAMIC_SEQ_MAX}")}
IMAGE = {"x": (1, 3, "h:96", "w:96")}


def bert_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((1, n), np.float32)
    mask[0, n - n // 4 :] = 0.0  # the last quarter is padding: its keys are masked out
    return {"ids": rng.integers(0, 100, (1, n)).astype(np.int64), "mask": mask}


def check(sess: kiln.device.Executable, path: object, feed: dict[str, np.ndarray], tol: float) -> None:
    want = onnxruntime_outputs(path, feed)["y"]  # type: ignore[arg-type]
    got = sess.run(feed)["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_one_encoder_package_runs_every_sequence_length_up_to_its_bound() -> None:
    path = dynamic_onnx_path("bert_dyn")
    pkg = kiln.compile(path, target=NATIVE, shapes=SEQ)
    assert pkg.manifest["dims"] == [{"name": "seq", "bound": DYNAMIC_SEQ_MAX}]
    assert [(t["shape"], t["dims"]) for t in pkg.manifest["inputs"]] == [([1, DYNAMIC_SEQ_MAX], [-1, 0])] * 2
    with pkg.open_session() as sess:
        for n in (7, 64, DYNAMIC_SEQ_MAX, 1, 7):  # back to a short one: nothing left over from a longer run
            check(sess, path, bert_inputs(n, seed=n), 2e-5)
        assert sess.dims() == (7,)

        with pytest.raises(InputError, match=r"dimension 1 is 513; the model was compiled for 1\.\.512"):
            sess.run(bert_inputs(DYNAMIC_SEQ_MAX + 1))
        bad = bert_inputs(9)
        bad["mask"] = np.ones((1, 8), np.float32)
        with pytest.raises(InputError, match="gives the same run-time dimension the size 9"):
            sess.run(bad)
        # the device checks too (a host that skips the checks): out of range, and the wrong count
        with pytest.raises(
            DeviceError, match="run-time dimension 0 is 600; it must be between 1 and its bound 512"
        ):
            sess.dims([600])
        with pytest.raises(DeviceError, match="DIMS sent 2 sizes; the model has 1 named run-time dimensions"):
            sess.dims([3, 4])
        check(sess, path, bert_inputs(33, seed=3), 2e-5)  # and it still serves


def test_one_cnn_package_runs_several_image_sizes() -> None:
    path = dynamic_onnx_path("cnn_dyn")
    pkg = kiln.compile(path, target=NATIVE, shapes=IMAGE)
    names = [d["name"] for d in pkg.manifest["dims"]]
    assert names[:2] == ["h", "w"] and len(names) > 2  # and the sizes computed from them (conv, pool outputs)
    rng = np.random.default_rng(0)
    with pkg.open_session() as sess:
        for hw in ((32, 32), (96, 64), (17, 45), (96, 96)):
            check(sess, path, {"x": rng.standard_normal((1, 3, *hw)).astype(np.float32)}, 1e-5)


@pytest.mark.qemu
@pytest.mark.parametrize("target", ["aarch64-linux", "riscv64-linux-rvv"])
def test_dynamic_models_under_qemu(target: str) -> None:
    bert = dynamic_onnx_path("bert_dyn")
    with running.open_session(kiln.compile(bert, target=target, shapes=SEQ)) as sess:
        for n in (5, 40):
            check(sess, bert, bert_inputs(n, seed=n), 2e-5)
    cnn = dynamic_onnx_path("cnn_dyn")
    rng = np.random.default_rng(1)
    with running.open_session(kiln.compile(cnn, target=target, shapes=IMAGE)) as sess:
        for hw in ((16, 16), (24, 40)):
            check(sess, cnn, {"x": rng.standard_normal((1, 3, *hw)).astype(np.float32)}, 1e-5)


def test_a_dimension_without_size_or_bound_is_a_clear_error() -> None:
    with pytest.raises(OpError, match=r"1x\?:512 for a size known at run time"):
        kiln.compile(dynamic_onnx_path("bert_dyn"), target=NATIVE)
    with pytest.raises(ValueError, match=r"write \?:MAX or NAME:MAX"):
        kiln.compile(dynamic_onnx_path("bert_dyn"), target=NATIVE, shapes={"ids": (1, "?:"), "mask": (1, 8)})


def test_an_operator_without_a_run_time_lowering_names_itself() -> None:
    from onnx import TensorProto, helper

    node = helper.make_node("CumSum", ["x", "axis"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])],
        [helper.make_tensor("axis", TensorProto.INT64, [], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(OpError, match=r"operator cumsum has no lowering for run-time dimensions yet"):
        kiln.compile(model, target=NATIVE, shapes={"x": (1, "?:64")})


def test_bare_metal_targets_refuse_run_time_sizes() -> None:
    with pytest.raises(ValueError, match="bare metal: its firmware runs fixed shapes"):
        kiln.compile(dynamic_onnx_path("cnn_dyn"), target="mps2-an386", shapes=IMAGE)


def test_cli_max_shape_compiles_the_open_dimensions_as_run_time_ones(tmp_path: object) -> None:
    from pathlib import Path

    from kiln.cli import main as cli_main

    out = Path(str(tmp_path))
    path = dynamic_onnx_path("bert_dyn")
    kpkg = out / "enc.kpkg"
    args = ["compile", str(path), "--target", NATIVE, "--max-shape", "ids=1x64", "--max-shape", "mask=1x64"]
    assert cli_main([*args, "-o", str(kpkg)]) == 0
    feed = bert_inputs(5, seed=1)
    for name, value in feed.items():
        np.save(out / f"{name}.npy", value)
    inputs = [f"--input={n}={out / n}.npy" for n in feed]
    assert cli_main(["run", str(kpkg), *inputs, "--output", str(out / "res")]) == 0
    got = np.load(out / "res" / "y.npy")
    np.testing.assert_allclose(got, onnxruntime_outputs(path, feed)["y"], rtol=2e-5, atol=2e-5)
    assert kiln.load(kpkg).manifest["dims"] == [{"name": "seq", "bound": 64}]
