"""The generated tensorrt_plan config, read the way Triton's TensorRT backend reads it: every instance must take
every batch 1..max_batch_size x every length 1..max-len the engine accepts (engines/triton/backend_rules.py holds
the rules, with the backend's source lines)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

try:  # any exception skips: a tritonclient installed without [grpc] raises RuntimeError, not ImportError
    from tritonclient.grpc import model_config_pb2
except Exception as e:
    pytest.skip(f"tritonclient[grpc] not usable (serving extra): {type(e).__name__}: {e}", allow_module_level=True)

from google.protobuf import text_format  # noqa: E402

from engines.tensorrt.profiles import ProfileSet  # noqa: E402
from engines.triton import backend_rules as rules  # noqa: E402
from engines.triton import config as tc  # noqa: E402
from engines.triton.repository import _batch_max, check_engine_outputs, tensorrt_config  # noqa: E402
from export.errors import UsageError, VerificationError  # noqa: E402

MAX_LEN = 2048


@pytest.fixture(scope="module")
def io(pooled):
    """Inputs and outputs of a real TensorRT-bound graph (the pooled tiny build's fp16 file)."""
    return tc.read_onnx_io(pooled / "model.rope-plugin.fp16.onnx")


def generated(io, profiles: ProfileSet, instances: int = 1):
    """The config.pbtxt engines.triton writes for an engine with these profiles, parsed back as Triton would."""
    text = tensorrt_config("m_fp16", io, profiles.batch.max, {}, profiles.to_report(), instances, MAX_LEN)
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def every_shape_refused(cfg, boxes, max_len):
    """Brute force, shape by shape with `accepts` (not the interval shortcut refused_shapes takes)."""
    return [
        (inst.name, b, s)
        for inst in rules.instances_for(cfg, len(boxes))
        for s in range(1, max_len + 1)
        for b in range(1, cfg.max_batch_size + 1)
        if not rules.accepts(inst, boxes, b, s, cfg.max_batch_size)
    ]


@pytest.mark.parametrize("tops", [None, "2048", "512,2048", "128,512,2048", "128,512"])
@pytest.mark.parametrize("instances", [1, 2])
def test_every_instance_takes_every_length(io, tops, instances):
    profiles = ProfileSet.from_cli("1,8,32", tops, MAX_LEN)
    cfg = generated(io, profiles, instances)
    insts = rules.instances_for(cfg, len(profiles))
    assert len(insts) == instances and all(i.profiles == tuple(range(len(profiles))) for i in insts)
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == instances
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    boxes = rules.profile_boxes(profiles.to_report())
    assert every_shape_refused(cfg, boxes, MAX_LEN) == []
    assert rules.refused_shapes(cfg, boxes, MAX_LEN) == []
    # dynamic batching: the queue delay only (requests merge when their shapes are equal); no preferred sizes
    assert list(cfg.dynamic_batching.preferred_batch_size) == []
    assert cfg.dynamic_batching.max_queue_delay_microseconds == tc.QUEUE_DELAY_US


def test_one_group_per_profile_fails_requests_on_the_wrong_instance(io):
    """The layout engines.triton wrote before: instance group i listing profile i only."""
    profiles = ProfileSet.from_cli("1,8,32", "128,512,2048", MAX_LEN)
    cfg = generated(io, profiles)
    del cfg.instance_group[:]
    for p in range(len(profiles)):
        cfg.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, count=1, profile=[str(p)])
    boxes = rules.profile_boxes(profiles.to_report())
    first, second, _ = rules.instances_for(cfg, len(boxes))
    assert not rules.accepts(first, boxes, 1, 1000, 32)  # a 1000-token request on the profile-0 instance
    assert not rules.accepts(second, boxes, 1, 50, 32)  # a 50-token one on profile 1 (its minimum is 129)
    refused = rules.refused_shapes(cfg, boxes, MAX_LEN)
    assert len(refused) == 3 and "refuses batch 1 x sequence 129" in refused[0], refused
    assert len(every_shape_refused(cfg, boxes, MAX_LEN)) == 32 * (3 * MAX_LEN - (128 + 384 + 1536))


def test_instance_rules_of_the_backend():
    cfg = model_config_pb2.ModelConfig(name="m", max_batch_size=4)
    cfg.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU)  # no profile, count unset
    assert [(i.name, i.profiles) for i in rules.instances_for(cfg, 3)] == [("m_0_0", (0,))]  # profile 0 alone
    cfg.instance_group[0].profile.append("3")
    with pytest.raises(UsageError, match="the engine has 3"):
        rules.instances_for(cfg, 3)
    cfg.instance_group[0].profile[:] = ["x"]
    with pytest.raises(UsageError, match="integer index"):
        rules.instances_for(cfg, 3)


def test_interval_shortcut_agrees_with_brute_force():
    """refused_shapes (what engines.triton runs) against `accepts` shape by shape, on boxes with gaps and overlaps."""
    cfg = model_config_pb2.ModelConfig(name="m", max_batch_size=6)
    cfg.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, profile=["0", "1", "2"])
    spans = [(1, 2), (2, 4), (3, 6), (5, 6), (1, 6)]
    for batches in itertools.product(spans, repeat=3):
        boxes = [
            rules.ProfileBox(batches[0], (1, 10)),
            rules.ProfileBox(batches[1], (5, 20)),
            rules.ProfileBox(batches[2], (15, 30)),
        ]
        brute = every_shape_refused(cfg, boxes, 30)
        lines = rules.refused_shapes(cfg, boxes, 30)
        assert bool(brute) == bool(lines)
        if brute:
            assert f"refuses batch {brute[0][1]} x sequence {brute[0][2]} and {len(brute) - 1} more" in lines[0]


def test_generator_refuses_a_config_that_would_fail_requests(io):
    rows = ProfileSet.from_cli("1,8,32", "128,2048", MAX_LEN).to_report()
    rows[1]["sequence"][0] = 200  # lengths 129..199 in no profile
    with pytest.raises(VerificationError, match="m_fp16_0_0 .*refuses batch 1 x sequence 129 and"):
        tensorrt_config("m_fp16", io, 32, {}, rows, 1, MAX_LEN)


def test_an_engine_that_refuses_batch_1_is_refused():
    rows = ProfileSet.from_cli("2,8,32", None, 64).to_report()
    with pytest.raises(UsageError, match="batches from 2 only.*--batch 1,OPT,MAX"):
        _batch_max({"plan": "model.fp16.plan", "profiles": rows}, {})
    assert _batch_max({"plan": "p", "profiles": ProfileSet.from_cli("8", None, 64).to_report()}, {})[0] == 8


def test_sidecar_outputs_must_be_the_graphs(io):
    _, outs = io
    side = {"outputs": [{"name": o.name, "dtype": "DataType.FLOAT"} for o in outs]}
    check_engine_outputs("model.fp16.plan", side, outs)
    check_engine_outputs("model.fp16.plan", {}, outs)  # an older sidecar records none
    with pytest.raises(VerificationError, match="model.fp16.plan has outputs .*last_hidden_state.*rebuild"):
        check_engine_outputs("model.fp16.plan", {"outputs": side["outputs"][:1]}, outs)


def test_a_sidecar_output_without_a_name_is_a_mismatch_not_a_crash():
    """Sorting [None, "x"] raised TypeError (an internal error, exit 4) before the names were sorted as text."""
    outs = [SimpleNamespace(name="last_hidden_state"), SimpleNamespace(name="sentence_embedding")]
    side = {"outputs": [{"dtype": "DataType.FLOAT"}, {"name": "sentence_embedding"}]}
    with pytest.raises(VerificationError, match=r"has outputs \[None, 'sentence_embedding'\]"):
        check_engine_outputs("model.fp16.plan", side, outs)
    with pytest.raises(VerificationError, match=r"has outputs \[7, 'x'\]"):  # a number: the same
        check_engine_outputs("model.fp16.plan", {"outputs": [{"name": 7}, {"name": "x"}]}, outs)
