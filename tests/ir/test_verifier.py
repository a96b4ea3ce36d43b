"""The IR verifier rejects each malformed construct it knows, with a message naming the place and the problem.

Each test builds one small module that is well formed except for one thing. The IR knows no operators: type
checks use a tiny rule table here (the compiler passes the operator registry's, ``kiln.ops.type_rule``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from kiln.ir import (
    Buffer,
    Constant,
    GraphFunction,
    Module,
    Node,
    TensorFunction,
    TensorType,
    Var,
    VerifyError,
    verify,
)
from kiln.ir import tensor as T
from kiln.ir.verifier import InferFn

F4 = TensorType((4,))


def _same_as_first(inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    return [inputs[0]]


def _fails(inputs: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
    raise ValueError("bad attribute 'k'")


RULES: dict[str, InferFn] = {"relu": _same_as_first, "broken": _fails}


def _graph(nodes: Sequence[Node], params: Sequence[Var], outputs: Sequence[Any], **fns: Any) -> Module:
    main = GraphFunction("main", tuple(params), tuple(nodes), tuple(outputs))
    return Module({"main": main, **fns})


def _tensor(body: T.Stmt, *params: Buffer) -> Module:
    return Module({"k": TensorFunction("k", params, body)})


def _rejects(mod: Module, message: str, infer: Any = None) -> None:
    with pytest.raises(VerifyError) as e:
        verify(mod, infer=infer)
    lines = str(e.value).splitlines()
    assert lines[0] == "IR verification failed:"
    assert [line.strip() for line in lines[1:]] == [message]


# --------------------------------------------------------------------------------------------- graph functions
def test_a_well_formed_graph_passes_with_and_without_type_rules() -> None:
    x, y = Var("x", F4), Var("y", F4)
    mod = _graph([Node("relu", (x,), (y,), name="r")], [x], [y])
    verify(mod)
    verify(mod, infer=RULES.get)


def test_use_before_definition() -> None:
    x, y, z = Var("x", F4), Var("y", F4), Var("z", F4)
    mod = _graph([Node("relu", (y,), (z,), name="first"), Node("relu", (x,), (y,), name="second")], [x], [z])
    _rejects(mod, "main: node first: input %y used before definition")


def test_defined_twice() -> None:
    x, y = Var("x", F4), Var("y", F4)
    mod = _graph([Node("relu", (x,), (y,), name="a"), Node("relu", (x,), (y,), name="b")], [x], [y])
    _rejects(mod, "main: node b: %y defined twice")


def test_a_parameter_redefined_by_a_node() -> None:
    x = Var("x", F4)
    _rejects(_graph([Node("relu", (x,), (x,))], [x], [x]), "main: node relu: %x defined twice")


def test_output_never_defined() -> None:
    x, y = Var("x", F4), Var("y", F4)
    _rejects(_graph([], [x], [y]), "main: output %y is never defined")


def test_output_that_is_not_a_value() -> None:
    x = Var("x", F4)
    _rejects(_graph([], [x], [x, "y"]), "main: output 'y' is not a value")


def test_call_tensor_to_a_missing_function() -> None:
    x, y = Var("x", F4), Var("y", F4)
    mod = _graph([Node("call_tensor", (x,), (y,), {"func": "nope"}, "c")], [x], [y])
    _rejects(mod, "main: node c: call_tensor target 'nope' is not a tensor function")


def test_call_tensor_to_a_graph_function() -> None:
    x, y = Var("x", F4), Var("y", F4)
    sub = GraphFunction("sub", (), (), ())
    mod = _graph([Node("call_tensor", (x,), (y,), {"func": "sub"}, "c")], [x], [y], sub=sub)
    _rejects(mod, "main: node c: call_tensor target 'sub' is not a tensor function")


def _copy_kernel(shape: tuple[int, ...] = (4,), dtype: str = "float32") -> TensorFunction:
    src, dst = Buffer("in0", shape, dtype), Buffer("out0", shape, dtype)
    body = T.loop_nest(shape, lambda idx: T.Store(dst, idx, src[idx]))
    return TensorFunction("copy", (src, dst), body)


def test_call_tensor_with_the_wrong_number_of_buffers() -> None:
    x, w, y = Var("x", F4), Constant("w", np.zeros(4, np.float32)), Var("y", F4)
    mod = _graph([Node("call_tensor", (x, w), (y,), {"func": "copy"}, "c")], [x], [y], copy=_copy_kernel())
    _rejects(mod, "main: node c: copy takes 2 buffers, called with 3")


def test_call_tensor_with_a_value_that_does_not_fit_its_buffer() -> None:
    x, y = Var("x", TensorType((5,))), Var("y", F4)
    mod = _graph([Node("call_tensor", (x,), (y,), {"func": "copy"}, "c")], [x], [y], copy=_copy_kernel())
    _rejects(mod, "main: node c: x float32[5] does not fit buffer in0: float32[4] of copy")


def test_call_tensor_with_another_element_type() -> None:
    x, y = Var("x", TensorType((4,), "int32")), Var("y", F4)
    mod = _graph([Node("call_tensor", (x,), (y,), {"func": "copy"}, "c")], [x], [y], copy=_copy_kernel())
    _rejects(mod, "main: node c: x int32[4] does not fit buffer in0: float32[4] of copy")


def test_call_tensor_accepts_a_buffer_of_another_shape_with_as_many_elements() -> None:
    x, y = Var("x", TensorType((2, 2))), Var("y", TensorType((2, 2)))
    mod = _graph([Node("call_tensor", (x,), (y,), {"func": "copy"}, "c")], [x], [y], copy=_copy_kernel())
    verify(mod)


def test_recorded_types_differ_from_the_inferred_ones() -> None:
    x, y = Var("x", F4), Var("y", TensorType((4,), "int32"))
    mod = _graph([Node("relu", (x,), (y,), name="r")], [x], [y])
    verify(mod)  # structure only: the IR does not know what relu returns
    _rejects(mod, "main: node r: recorded types ['int32[4]'] != inferred ['float32[4]']", RULES.get)


def test_type_inference_that_fails() -> None:
    x, y = Var("x", F4), Var("y", F4)
    mod = _graph([Node("broken", (x,), (y,), name="b")], [x], [y])
    _rejects(mod, "main: node b: broken type inference failed: bad attribute 'k'", RULES.get)


def test_unknown_operator_only_with_type_rules() -> None:
    x, y = Var("x", F4), Var("y", F4)
    mod = _graph([Node("frobnicate", (x,), (y,), name="f")], [x], [y])
    verify(mod)
    _rejects(mod, "main: node f: unknown operator 'frobnicate'", RULES.get)


def test_special_operators_need_no_type_rule() -> None:
    x, y, z = Var("x", F4), Var("y", TensorType((2, 2))), Var("z", F4)
    body = GraphFunction("body", (), (), ())
    mod = _graph(
        [Node("view", (x,), (y,)), Node("call_extern", (y,), (z,), {"symbol": "ext"})],
        [x],
        [z, Var("unused", F4)],
    )
    _rejects(mod, "main: output %unused is never defined", RULES.get)
    fused = _graph([Node("fused", (x,), (z,), {"body": body})], [x], [z])
    verify(fused, infer=RULES.get)


def test_every_problem_is_listed() -> None:
    x, y = Var("x", F4), Var("y", F4)
    mod = _graph([Node("relu", (y,), (x,), name="r")], [x], [y])
    with pytest.raises(VerifyError) as e:
        verify(mod)
    assert str(e.value).splitlines()[1:] == [
        "  main: node r: input %y used before definition",
        "  main: node r: %x defined twice",
        "  main: output %y is never defined",
    ]


def test_at_most_twenty_problems_are_listed() -> None:
    x = Var("x", F4)
    nodes = [Node("relu", (x,), (x,), name=f"n{i}") for i in range(30)]
    with pytest.raises(VerifyError) as e:
        verify(_graph(nodes, [x], [x]))
    assert len(str(e.value).splitlines()) == 21


# -------------------------------------------------------------------------------------------- tensor functions
def test_a_well_formed_tensor_function_passes() -> None:
    a, out = Buffer("a", (2, 3)), Buffer("out", (2, 3))
    tmp = Buffer("tmp", (3,), scope="local")
    body = T.loop(
        2,
        lambda i: T.Allocate(
            tmp,
            T.seq(
                T.loop(3, lambda j: T.Store(tmp, (j,), a[i, j]), name="j"),
                T.loop(3, lambda j: T.Store(out, (i, j), tmp[j]), name="j2", start=0),
            ),
        ),
    )
    verify(_tensor(body, a, out))


def test_loop_variable_outside_its_loop() -> None:
    out = Buffer("out", (4,))
    i = T.LoopVar("i")
    stray = T.LoopVar("stray")
    body = T.For(i, T.IntImm(4), T.Store(out, (i,), T.Cast("float32", stray)))
    _rejects(_tensor(body, out), "k: loop variable stray used outside its loop")


def test_loop_variable_used_after_its_loop() -> None:
    out = Buffer("out", (4,))
    i = T.LoopVar("i")
    body = T.seq(
        T.For(i, T.IntImm(4), T.Store(out, (i,), T.FloatImm(0.0))), T.Store(out, (i,), T.FloatImm(1.0))
    )
    _rejects(_tensor(body, out), "k: loop variable i used outside its loop")


def test_loop_variable_in_a_loop_bound() -> None:
    out = Buffer("out", (4,))
    i, j = T.LoopVar("i"), T.LoopVar("j")
    body = T.For(i, j + 1, T.Store(out, (i,), T.FloatImm(0.0)))
    _rejects(_tensor(body, out), "k: loop variable j used outside its loop")


def test_store_to_an_unknown_buffer() -> None:
    a, ghost = Buffer("a", (4,)), Buffer("ghost", (4,))
    body = T.loop(4, lambda i: T.Store(ghost, (i,), a[i]))
    _rejects(_tensor(body, a), "k: store of unknown buffer ghost")


def test_load_from_an_unknown_buffer() -> None:
    out, ghost = Buffer("out", (4,)), Buffer("ghost", (4,))
    body = T.loop(4, lambda i: T.Store(out, (i,), ghost[i]))
    _rejects(_tensor(body, out), "k: load of unknown buffer ghost")


def test_a_buffer_allocated_in_the_function_is_known() -> None:
    out, tmp = Buffer("out", (4,)), Buffer("tmp", (4,), scope="local")
    body = T.Allocate(tmp, T.loop(4, lambda i: T.Store(out, (i,), tmp[i])))
    verify(_tensor(body, out))


def test_wrong_number_of_indices() -> None:
    a, out = Buffer("a", (2, 3)), Buffer("out", (2, 3))
    i = T.LoopVar("i")
    body = T.For(i, T.IntImm(2), T.Store(out, (i, T.IntImm(0)), T.Load(a, (i,))))
    _rejects(_tensor(body, a, out), "k: load of a with 1 indices, rank 2")


def test_too_many_indices_in_a_store() -> None:
    out = Buffer("out", (2,))
    body = T.Store(out, (T.IntImm(0), T.IntImm(0)), T.FloatImm(0.0))
    _rejects(_tensor(body, out), "k: store of out with 2 indices, rank 1")


def test_constant_index_out_of_bounds() -> None:
    out = Buffer("out", (2, 3))
    body = T.loop(2, lambda i: T.Store(out, (i, T.IntImm(3)), T.FloatImm(0.0)))
    _rejects(_tensor(body, out), "k: store of out index 3 out of bounds in dim 1")


def test_negative_constant_index() -> None:
    a, out = Buffer("a", (4,)), Buffer("out", (4,))
    body = T.loop(4, lambda i: T.Store(out, (i,), T.Load(a, (T.IntImm(-1),))))
    _rejects(_tensor(body, a, out), "k: load of a index -1 out of bounds in dim 0")


def test_checks_reach_into_conditionals() -> None:
    out = Buffer("out", (4,))
    stray = T.LoopVar("stray")
    body = T.loop(
        4,
        lambda i: T.IfThenElse(
            i < 2, T.Store(out, (i,), T.FloatImm(0.0)), T.Store(out, (i,), T.Cast("float32", stray))
        ),
    )
    _rejects(_tensor(body, out), "k: loop variable stray used outside its loop")
