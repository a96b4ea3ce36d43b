"""examples/nn_transformer.py: a small transformer built from kiln.frontend.nn modules, its weights bound from
a safetensors file, matches a NumPy implementation on x86-64 (natively) and on aarch64 and riscv64 (under
qemu-user: slow). Its exported module also round-trips through the IR's text form."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kiln.ir import constant_table, parse_module, print_module, structural_equal, verify
from kiln.ops import type_rule
from kiln.ops.interpreter import interpret

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import nn_transformer  # noqa: E402


def test_the_exported_transformer_matches_numpy_in_the_interpreter(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    weights = nn_transformer.random_weights(nn_transformer.TinyLM(), seed=3)
    save_file(weights, str(tmp_path / "w.safetensors"))
    mod = nn_transformer.build(tmp_path / "w.safetensors")
    verify(mod, infer=type_rule)
    assert structural_equal(parse_module(print_module(mod), constants=constant_table(mod)), mod)
    ids = np.arange(nn_transformer.SEQ, dtype=np.int64)[None] % nn_transformer.VOCAB
    got = interpret(mod, {"ids": ids})["logits"]
    np.testing.assert_allclose(got, nn_transformer.numpy_reference(ids, weights), rtol=1e-4, atol=1e-4)


def test_the_transformer_natively() -> None:
    assert nn_transformer.run("x86_64-linux") < 1e-4


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("target", ["aarch64-linux", "riscv64-linux"])
def test_the_transformer_emulated(target: str) -> None:
    assert nn_transformer.run(target) < 1e-4
