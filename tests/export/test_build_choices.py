"""--choices reaches every shape a multiple-choice build runs: the rotary probe's inputs, calibration's batches, the
fallback's draws, every validation case and the profiles export.build records, and export.diagnose's default shape
read back from the report. (The engine's own validation takes them from the profiles: engines/tensorrt/validate.py.)
A stage that fixes its own number of choices, whatever --choices says, fails here."""

from __future__ import annotations

import argparse

import pytest

from export.build import main as build
from export.report.persist import read_report
from export.validate import Shape
from tests.fixtures.tiny_build import build_args

CHOICES = 3  # not the default, DEFAULT_CHOICES (2)


@pytest.fixture(scope="module")
def mc_int8(make_ckpt, tmp_path_factory):
    """A multiple-choice int8 build with --choices 3 (calibration and the fallback run), with the choices each stage
    was handed recorded on the way."""
    import export.stages.quantize as quantize
    import export.stages.rope as rope

    seen: dict[str, set] = {"rope": set(), "calibrate": set(), "fallback": set()}
    mp = pytest.MonkeyPatch()

    def spy(stage, module, name, pick):
        original = getattr(module, name)

        def wrapped(*args, **kwargs):
            seen[stage].add(pick(*args, **kwargs))
            return original(*args, **kwargs)

        mp.setattr(module, name, wrapped)

    spy("rope", rope, "make_inputs", lambda shape, *a, **k: shape.choices)
    spy("calibrate", quantize, "calibrate", lambda *a, **k: k.get("choices"))
    spy("fallback", quantize, "make_inputs", lambda shape, *a, **k: shape.choices)
    ckpt, _ = make_ckpt(task="multiple-choice")
    out = tmp_path_factory.mktemp("mc") / "int8"
    try:
        code = build(build_args(ckpt, out, "--precision", "int8", "--choices", str(CHOICES)))
    finally:
        mp.undo()
    return code, out, seen


def test_every_stage_runs_the_choices_asked_for(mc_int8):
    code, out, seen = mc_int8
    assert code == 0
    assert seen == {"rope": {CHOICES}, "calibrate": {CHOICES}, "fallback": {CHOICES}}
    report = read_report(out)
    assert report.validation and {c["choices"] for c in report.validation} == {CHOICES}
    assert {tuple(r["choices"]) for r in report.profiles} == {(CHOICES,) * 3}


def test_diagnose_takes_the_builds_choices(mc_int8):
    from export.diagnose.__main__ import _case_shape

    _, out, _ = mc_int8
    report = read_report(out)
    args = argparse.Namespace(batch=2, seq=5)
    assert _case_shape(report, "onnx", args) == Shape(2, 5, 1, CHOICES)
