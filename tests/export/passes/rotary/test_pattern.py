"""The declarative pattern language: bindings, structure vs condition failures, commutative ops, and
that matching never changes the graph."""

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from export.passes.rotary.pattern import ANY, Match, NoMatch, Op, Var, match, same_value


def small_graph():
    """y = Add(Mul(a, b), Neg(a)); z = Mul(a, c)."""
    a, b, c = (gs.Variable(n, np.float32, [4]) for n in "abc")
    g = gs.Graph(inputs=[a, b, c], opset=17)
    ab = g.layer(op="Mul", inputs=[a, b], outputs=["ab"], name="mul_ab")[0]
    na = g.layer(op="Neg", inputs=[a], outputs=["na"], name="neg_a")[0]
    y = g.layer(op="Add", inputs=[ab, na], outputs=["y"], name="add")[0]
    z = g.layer(op="Mul", inputs=[a, c], outputs=["z"], name="mul_ac")[0]
    y.dtype = z.dtype = np.float32
    g.outputs = [y, z]
    return g, {"a": a, "b": b, "c": c, "y": y, "z": z, "ab": ab}


def test_var_binds_and_a_second_occurrence_must_be_the_same_tensor():
    _, t = small_graph()
    got = match(Op("Add", Op("Mul", Var("p"), Var("q")), Op("Neg", Var("p")), name="add"), t["y"])
    assert isinstance(got, Match) and got["p"] is t["a"] and got["q"] is t["b"] and got["add"].name == "add"
    got = match(
        Op("Add", Op("Mul", Var("p"), Var("q")), Op("Neg", Var("q", differs="Neg reads another tensor"))), t["y"]
    )
    assert isinstance(got, NoMatch) and got.reasons == ["Neg reads another tensor"]
    got = match(Op("Add", Op("Mul", Var("p"), Var("q")), Op("Neg", Var("q"))), t["y"])
    assert got.reasons == ["q is 'b' in one place and 'a' in another"]


def test_given_bindings_constrain_the_match():
    _, t = small_graph()
    assert isinstance(match(Op("Mul", Var("p"), ANY), t["z"], {"p": t["a"]}), Match)
    assert isinstance(match(Op("Mul", Var("p"), ANY), t["z"], {"p": t["b"]}), NoMatch)


def test_structure_that_is_not_there_is_no_candidate_and_gives_no_reason():
    _, t = small_graph()
    for p in (Op("Sub", ANY, ANY), Op("Add", Op("Neg", ANY), ANY), Op("Mul", Op("Mul", ANY, ANY), ANY)):
        got = match(p, t["y"])
        assert isinstance(got, NoMatch) and got.reasons == [], p
    assert match(Op("Add", ANY, ANY), t["a"]).reasons == []  # a graph input has no producer


def test_a_failed_condition_is_a_near_miss_naming_the_node():
    _, t = small_graph()
    calls = []

    def never(node):
        calls.append(node.name)
        return "the check says no"

    got = match(Op("Add", Op("Mul", ANY, ANY), ANY, where=never), t["y"])
    assert got.reasons == ["Add 'add': the check says no"] and calls == ["add"]
    assert isinstance(match(Op("Add", Op("Mul", ANY, ANY), ANY, where=lambda n: None), t["y"]), Match)
    # conditions run only once the inputs matched: structure first
    calls.clear()
    assert match(Op("Add", Op("Neg", ANY), ANY, where=never), t["y"]).reasons == [] and calls == []


def test_commutative_tries_both_orders_and_the_first_full_match_wins():
    _, t = small_graph()
    pat = Op("Add", Op("Neg", Var("p")), Op("Mul", Var("p"), ANY))
    assert isinstance(match(pat, t["y"]), NoMatch)  # Neg is the second input
    got = match(Op("Add", Op("Neg", Var("p")), Op("Mul", Var("p"), ANY), commutative=True), t["y"])
    assert isinstance(got, Match) and got["p"] is t["a"]
    # backtracking: in the first order p binds b (wrong), then Neg(a) fails; the second order binds a
    got = match(Op("Add", Op("Mul", ANY, Var("p"), commutative=True), Op("Neg", Var("p"))), t["y"])
    assert isinstance(got, Match) and got["p"] is t["a"]


def test_n_inputs_is_exact_and_extra_inputs_are_otherwise_allowed():
    _, t = small_graph()
    assert isinstance(match(Op("Mul", Var("p")), t["z"]), Match)
    assert isinstance(match(Op("Mul", Var("p"), n_inputs=1), t["z"]), NoMatch)
    assert isinstance(match(Op("Mul", Var("p"), ANY, n_inputs=2), t["z"]), Match)


def test_op_may_name_alternatives():
    _, t = small_graph()
    assert isinstance(match(Op(("Sub", "Mul"), ANY, ANY), t["z"]), Match)


def test_matching_changes_nothing():
    g, t = small_graph()
    before = gs.export_onnx(g).SerializeToString()
    for p in (
        Op("Add", Op("Mul", Var("p"), Var("q")), Op("Neg", Var("p")), commutative=True),
        Op("Add", Op("Mul", ANY, ANY), ANY, where=lambda n: "no"),
    ):
        match(p, t["y"])
    assert gs.export_onnx(g).SerializeToString() == before


def test_a_commutative_pattern_takes_two_inputs():
    with pytest.raises(ValueError, match="two inputs"):
        Op("Concat", ANY, ANY, ANY, commutative=True)


def test_same_value_sees_through_what_the_exporter_did_not_merge():
    """TorchScript traces `q.float()` per use: Cast(q) and Cast(Cast(q)) of an fp32 q hold q itself; two
    identical Transposes of one tensor hold one value; a Cast to another type or another perm does not."""
    q = gs.Variable("q", np.float32, [1, 2, 3, 4])
    g = gs.Graph(inputs=[q], opset=17)
    fp32, fp16 = 1, 10  # TensorProto FLOAT, FLOAT16
    c1 = g.layer(op="Cast", inputs=[q], outputs=["c1"], attrs={"to": fp32})[0]
    c1.dtype = np.float32
    c2 = g.layer(op="Cast", inputs=[c1], outputs=["c2"], attrs={"to": fp32})[0]
    half = g.layer(op="Cast", inputs=[q], outputs=["half"], attrs={"to": fp16})[0]
    ident = g.layer(op="Identity", inputs=[q], outputs=["ident"])[0]
    t1, t2, t3 = (g.layer(op="Transpose", inputs=[q], outputs=[f"t{i}"], attrs={"perm": p})[0]
                  for i, p in enumerate(([0, 2, 1, 3], [0, 2, 1, 3], [0, 1, 3, 2])))  # fmt: skip
    assert same_value(c2, q) and same_value(c1, c2) and same_value(ident, q) and same_value(t1, t2)
    assert not same_value(half, q) and not same_value(t1, t3) and not same_value(t1, q)
    got = match(Op("Add", Var("x"), Var("x", differs="not one x")), g.layer(op="Add", inputs=[c2, q], outputs=["s"])[0])
    assert isinstance(got, Match) and got["x"] is c2
