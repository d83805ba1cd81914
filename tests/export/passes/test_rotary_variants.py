"""The rotary pass on every task head and config variant (rotary value, embedding size, head dims 32 to 128, multiple
choice), exported by both exporters: counts, accuracy, idempotence (rotary/check.py). Apart from test_rotary.py so
the two halves run on different pytest-xdist workers."""

import onnx
import pytest

from export.spec import ExportSpec
from tests.export.passes.rotary.check import run_pass_and_check

VARIANTS = [
    ("model", dict(rotary_value=True)),
    ("masked-lm", dict(embedding_size=24)),
    ("sequence-classification", dict(hidden_size=64, intermediate_size=64)),  # head dim 32
    ("token-classification", dict(hidden_size=128, intermediate_size=64)),  # head dim 64
    ("question-answering", dict(hidden_size=256, intermediate_size=64)),  # head dim 128
    ("multiple-choice", dict()),
]


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("dynamo", 18)])
@pytest.mark.parametrize("task,overrides", VARIANTS, ids=[v[0] + "-" + "-".join(v[1]) for v in VARIANTS])
def test_variants(exported, exporter, opset, task, overrides):
    path, model, config = exported(exporter, opset, task=task, **overrides)
    assert ExportSpec(task).output_names == tuple(o.name for o in onnx.load(str(path)).graph.output)
    for mode in ("plugin", "onnx"):
        run_pass_and_check(path, model, config, task, "fp32", mode)
