"""The customization examples end to end (issue 11): a user target whose convolutions run in its own C kernel
(examples/custom_target), a hand-written C library behind dispatch rewrites (examples/byok_gemm), a custom
operator written in kiln script inside a small transformer (examples/custom_op), also imported from an ONNX
custom-domain node by the CLI. x86-64 runs natively; the emulated targets are marked slow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kiln
from graphs import conv_bn_relu, residual_block
from kiln.ops.interpreter import interpret
from kiln.transform import Pipeline, default_pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CUSTOM_TARGETS = EXAMPLES / "custom_target" / "targets"
for d in ("byok_gemm", "custom_op"):
    if str(EXAMPLES / d) not in sys.path:
        sys.path.insert(0, str(EXAMPLES / d))


def _session(pkg):  # noqa: ANN001, ANN202 - emulated runs have no per-call limit (their speed varies)
    return pkg.open_session() if pkg.target.runs_natively() else pkg.open_session(timeout=None)


def _inputs(mod, seed: int = 0) -> dict[str, np.ndarray]:  # noqa: ANN001
    rng = np.random.default_rng(seed)
    return {p.name: rng.standard_normal(p.type.static_shape).astype("f4") for p in mod.main.params}


# ------------------------------------------------------------------------------- a user target with hooks
def _custom_target(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_TARGET_PATH", str(CUSTOM_TARGETS))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the hooks module's directory joins sys.path
    mod = residual_block()
    pkg = kiln.compile(mod, target)
    m = pkg.manifest
    assert [e["name"] for e in m["externs"]] == ["convc", "kiln_cg_relu_0"]
    assert {e["kind"] for e in m["externs"]} == {"c", "llvm"}
    assert sum(k.startswith("convc_conv2d_f32") for k in m["kernels"]) == 2  # two conv shapes, three calls
    assert Pipeline.parse(m["pipeline"], target) == default_pipeline(target)
    x = _inputs(mod)
    with _session(pkg) as s:
        got = s.run(x)
        rows = {r.kernel: r.calls for r in s.profile().rows()}
    want = interpret(mod, x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4, err_msg=f"{target}: {k}")
    assert sum(c for k, c in rows.items() if k.startswith("convc_conv2d_f32")) == 3


def test_a_user_target_sends_every_convolution_to_its_c_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    _custom_target("convc-x86_64", monkeypatch)
    # the CLI lists its hooks and pipeline
    out = subprocess.run(
        [sys.executable, "-m", "kiln.cli", "passes", "--target", "convc-x86_64"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "convc_hooks:conv2d_to_c  legalize (before)" in out
    assert "convc_hooks:relu_in_llvm  before_codegen (after)" in out


@pytest.mark.slow
@pytest.mark.qemu
def test_a_user_target_sends_every_convolution_to_its_c_kernel_on_aarch64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _custom_target("convc-aarch64", monkeypatch)


# ----------------------------------------------------------------------------------------- library dispatch
def test_a_hand_written_gemm_library_matches_and_shows_in_the_profile() -> None:
    import byok_cnn as byok

    times = byok.main(["--target", "x86_64-linux"])  # asserts the numbers match NumPy
    assert sorted(k.rsplit("_", 1)[0] for k in times if k.startswith("handgemm")) == [
        "handgemm_conv2d_bias_relu_f32",
        "handgemm_conv2d_bias_relu_f32",
        "handgemm_nt_f32",
        "handgemm_nt_f32",
    ]
    # and kiln's own code for the same model computes the same numbers
    mod = byok.build_model()
    x = _inputs(mod, 1)
    with_lib = kiln.compile(mod, "x86_64-linux", pipeline=byok.pipeline("x86_64-linux")).run(x)["logits"]
    without = kiln.compile(mod, "x86_64-linux").run(x)["logits"]
    np.testing.assert_allclose(with_lib, without, rtol=1e-4, atol=1e-4)


def test_dispatch_leaves_what_the_library_cannot_do_to_kiln() -> None:
    import handgemm_dispatch

    mod = conv_bn_relu()  # conv -> (folded batch norm) -> relu: matches conv_bias_relu after fold-batch-norm
    pipe = default_pipeline("x86_64-linux", extra=[handgemm_dispatch.conv_bias_relu])
    pkg = kiln.compile(mod, "x86_64-linux", pipeline=pipe)
    assert pkg.manifest["kernels"] == ["handgemm_conv2d_bias_relu_f32_0"]
    x = _inputs(mod)
    np.testing.assert_allclose(pkg.run(x)["z"], interpret(mod, x)["z"], rtol=1e-4, atol=1e-4)
    grouped = residual_block()  # its stride-2 1x1 conv has no relu: stays with kiln
    kernels = kiln.compile(grouped, "x86_64-linux", pipeline=pipe).manifest["kernels"]
    assert any(k.startswith("handgemm") for k in kernels) and any(k.startswith("conv2d") for k in kernels)


@pytest.mark.slow
@pytest.mark.qemu
def test_a_hand_written_gemm_library_on_aarch64() -> None:
    import byok_cnn as byok

    byok.main(["--target", "aarch64-linux"])


# ------------------------------------------------------------------------------------------ custom operators
def test_a_custom_operator_in_a_transformer_natively() -> None:
    import transformer

    assert transformer.run("x86_64-linux") < 1e-4


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("target", ["aarch64-linux", "riscv64-linux"])
def test_a_custom_operator_in_a_transformer_emulated(target: str) -> None:
    import transformer

    assert transformer.run(target) < 1e-4


def _rope_onnx(path: Path) -> Path:
    w = np.random.default_rng(0).standard_normal((16, 16)).astype("f4")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["q"]),
        helper.make_node("RotaryEmbedding", ["q"], ["y"], domain="com.example", base=500.0),
    ]
    g = helper.make_graph(
        nodes,
        "rope",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 16])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(g, opset_imports=opsets, ir_version=8), str(path))
    return path


def _rope_reference(q: np.ndarray, base: float) -> np.ndarray:
    d = q.shape[-1]
    theta = np.arange(q.shape[1])[:, None] * base ** (-2.0 * np.arange(d // 2) / d)
    out = np.empty_like(q, dtype=np.float64)
    out[..., 0::2] = q[..., 0::2] * np.cos(theta) - q[..., 1::2] * np.sin(theta)
    out[..., 1::2] = q[..., 0::2] * np.sin(theta) + q[..., 1::2] * np.cos(theta)
    return out


def test_an_onnx_custom_domain_node_compiles_with_custom_op(tmp_path: Path) -> None:
    model = _rope_onnx(tmp_path / "rope.onnx")
    spec = f"com.example:RotaryEmbedding={EXAMPLES / 'custom_op' / 'rope_op.py'}:rotary_embedding"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln.cli",
            "compile",
            str(model),
            "-t",
            "x86_64-linux",
            "-o",
            str(tmp_path / "rope.kpkg"),
            "--custom-op",
            spec,
            "--print-ir-after",
            "legalize",
            "--time-passes",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "// ----- IR after legalize" in proc.stderr and "tensor rotary_embedding_0(" in proc.stderr
    assert "plan-memory" in proc.stderr and proc.stderr.rstrip().splitlines()[-1].startswith("total")
    pkg = kiln.load(tmp_path / "rope.kpkg")
    assert "rotary_embedding" in pkg.manifest["operators"]
    x = np.random.default_rng(1).standard_normal((2, 6, 16)).astype("f4")
    got = pkg.run({"x": x})["y"]
    w = onnx.numpy_helper.to_array(onnx.load(str(model)).graph.initializer[0])
    np.testing.assert_allclose(got, _rope_reference(x @ w, 500.0), rtol=1e-4, atol=1e-4)
    # without the mapping the node is an unsupported operator, named as such
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln.cli",
            "compile",
            str(model),
            "-t",
            "x86_64-linux",
            "-o",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "com.example.RotaryEmbedding" in bad.stderr


# ------------------------------------------------------------------------------ a codegen override in C
def test_a_codegen_override_in_c_is_compiled_for_the_target_and_linked() -> None:
    from kiln.frontend.nn import GraphBuilder
    from kiln.transform.codegen_override import CCode, codegen_override

    @codegen_override
    def relu_in_c(req):  # noqa: ANN001, ANN202
        if req.func.attrs.get("ops") != ["relu"]:
            return None
        n = req.func.outputs[0].numel
        return CCode(
            f"{req.c_signature} {{\n  for (long i = 0; i < {n}; i++) out0[i] = in0[i] > 0 ? in0[i] : 0;\n}}\n"
        )

    g = GraphBuilder("cg")
    x = g.input("x", (3, 7))
    r = g.relu(x)
    g.output(g.exp(r), "e")
    g.output(r, "r")
    mod = g.build()
    pkg = kiln.compile(mod, "x86_64-linux", pipeline=default_pipeline("x86_64-linux", extra=[relu_in_c]))
    assert [e["kind"] for e in pkg.manifest["externs"]] == ["c"]
    xv = _inputs(mod)
    got, want = pkg.run(xv), interpret(mod, xv)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
