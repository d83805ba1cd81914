"""The rotary pass run on an exported graph and checked end to end: every expected site rewritten into the expected
nodes, no rotary chain left, the checker's full check, the plugin nodes' declared outputs, ONNX Runtime against
PyTorch on two shapes, and a second run that changes nothing. Shared by test_rotary.py and test_rotary_variants.py."""

import onnx

from export.passes.lowering import with_rotary_function
from export.passes.rotary import fuse_rotary
from export.report.thresholds import Thresholds
from export.stages.rope import expected_sites
from export.validate import Shape, TorchReference, grade, make_inputs, ort_session
from plugins.identity import PLUGIN_OP

SHAPES = [Shape(1, 1), Shape(3, 13, 2)]


def run_pass_and_check(path, model, config, task, precision, mode, max_len=96):
    src = onnx.load(str(path))
    layers = config.num_hidden_layers
    new, rep = fuse_rotary(
        src,
        mode,
        expected=expected_sites(config),
        expected_nodes=layers,
        max_len=max_len,
        head_dim=config.hidden_size // config.num_attention_heads,
    )
    assert rep.coverage_error() is None, rep.to_dict()
    assert rep.rewritten == rep.expected == layers * (3 if config.rotary_value else 2)
    ops = [n.op_type for n in new.graph.node]
    assert ops.count(PLUGIN_OP if mode == "plugin" else "RotaryEmbedding") == (
        layers if mode == "plugin" else rep.expected
    )
    assert not any(n.op_type == "Neg" for n in new.graph.node), "a rotary chain survived the rewrite"
    assert not new.functions  # the TensorRT-bound file carries no function
    onnx.checker.check_model(new, full_check=True)
    if mode == "plugin":  # value_info (dtype + shape) for every output of our nodes
        vi = {v.name for v in new.graph.value_info}
        assert all(o in vi for n in new.graph.node if n.op_type == PLUGIN_OP for o in n.output)
        k = 3 if config.rotary_value else 2
        for n in new.graph.node:
            if n.op_type == PLUGIN_OP:  # TensorRT asks getNbOutputs() before it sees inputs: the count is an attribute
                assert {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["num_tensors"] == k
                assert len(n.input) == k + 1 and len(n.output) == k
    graph = with_rotary_function(new) if mode == "plugin" else new
    sess, ref = ort_session(graph), TorchReference(model, task)
    th = Thresholds.defaults()
    for shape in SHAPES:
        if task == "multiple-choice":
            shape = Shape(shape.batch, shape.seq, shape.padded_rows, choices=2)
        inputs = make_inputs(shape, config.vocab_size, config.type_vocab_size)
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs), strict=True))
        case = grade(f"rope-{mode}", precision, shape, got, ref(shape, inputs), th)
        assert case["passed"], case
    again, rep2 = fuse_rotary(
        new,
        mode,
        expected=rep.expected,
        expected_nodes=layers,
        max_len=max_len,
        head_dim=config.hidden_size // config.num_attention_heads,
    )
    assert rep2.found == 0 and rep2.rewritten == rep.expected and rep2.coverage_error() is None
    assert again.graph.SerializeToString() == new.graph.SerializeToString(), "pass is not idempotent"
    return rep
