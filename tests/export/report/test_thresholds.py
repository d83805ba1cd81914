"""export.report.thresholds: the pass rule at its boundaries, the precedence of the tables, as the docstring states, and
old (schema 1) threshold files still read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from export.report.compare import error_stats
from export.report.thresholds import DEFAULTS, Threshold, ThresholdError, Thresholds
from tests.helpers import one_line


def test_the_boundary_passes():
    t = Threshold(atol=1e-4, rtol=0.0, min_cosine=0.99, min_row_cosine=0.999)
    assert t.passes(1e-4, 1.0, 0.99, row_cosine=0.999)  # every statistic at its bound: passes
    assert not t.passes(1.0000001e-4, 1.0, 0.99)
    assert not t.passes(1e-4, 1.0, 0.98999)
    assert not t.passes(1e-4, 1.0, 0.99, row_cosine=0.99899)
    scaled = Threshold(atol=0.0, rtol=1e-3, min_cosine=0.0, min_row_cosine=0.0)
    assert scaled.passes(5.0, 1e-3, 0.5)  # scaled_error == rtol passes, whatever max_abs is
    assert not scaled.passes(5.0, 1.0000001e-3, 0.5)


def test_row_cosine_applies_only_to_outputs_with_rows():
    t = Threshold(atol=0.0, rtol=1.0, min_cosine=0.0, min_row_cosine=0.999)
    assert t.passes(0.0, 0.0, 1.0, row_cosine=None)  # logits: no rows, no criterion
    assert not t.passes(0.0, 0.0, 1.0, row_cosine=0.5)


def test_nan_and_nan_counts_fail():
    t = Threshold(atol=1.0, rtol=1.0, min_cosine=0.0, min_row_cosine=0.0)
    assert not t.passes(math.nan, math.nan, 1.0)
    assert not t.passes(0.0, 0.0, math.nan)
    assert not t.passes(0.0, 0.0, 1.0, n_nan=1)
    assert not t.passes(0.0, 0.0, 1.0, row_cosine=math.nan)


def test_a_schema_1_thresholds_file_still_reads():
    """atol, rtol and min_cosine keep their keys; min_row_cosine comes from the precision's default."""
    th = Thresholds.from_data({"fp16": {"*": {"*": {"atol": 0.05, "rtol": 0.01, "min_cosine": 0.999}}}})
    t = th.lookup("fp16", "rope-plugin.fp16", "last_hidden_state")
    assert (t.atol, t.rtol, t.min_cosine) == (0.05, 0.01, 0.999)
    assert t.min_row_cosine == DEFAULTS["fp16"].min_row_cosine


def test_scaled_error_never_exceeds_max_rel():
    """Why an old file's rtol passes everything it passed before: max|e| / max|ref| <= max(|e| / |ref|)."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 9, 16)) * rng.uniform(0.01, 100, (1, 1, 16))
    got = ref + rng.standard_normal(ref.shape) * 1e-3
    s = error_stats(got, ref)
    assert s.scaled_error <= float(np.max(np.abs(got - ref) / np.abs(ref)))


def test_output_wide_table_beats_graph_wide_table():
    th = Thresholds.from_data({"fp16": {"rope-plugin.fp16": {"*": {"atol": 0.3}}, "*": {"logits": {"atol": 0.7}}}})
    assert th.lookup("fp16", "rope-plugin.fp16", "logits").atol == 0.7  # both set atol: the output's wins
    assert th.lookup("fp16", "rope-plugin.fp16", "last_hidden_state").atol == 0.3  # only the graph's applies
    assert th.lookup("fp16", "onnx", "logits").atol == 0.7


def test_precedence_from_weakest_to_strongest():
    th = Thresholds.from_data(
        {
            "*": {"*": {"*": {"atol": 1.0}}},
            "fp32": {"*": {"*": {"atol": 2.0}}, "g": {"o": {"atol": 4.0}, "*": {"atol": 3.0}}},
        }
    )
    assert th.lookup("fp32", "x", "y").atol == 2.0
    assert th.lookup("fp32", "g", "y").atol == 3.0
    assert th.lookup("fp32", "g", "o").atol == 4.0
    assert th.lookup("fp16", "g", "o").atol == 1.0
    flags = Thresholds.from_cli({"fp32": {"g": {"o": {"atol": 4.0}}}}, "t", atol=9.0, rtol=None)
    assert flags.lookup("fp32", "g", "o").atol == 9.0


@pytest.mark.parametrize(
    "data",
    [
        {"int3": {}},
        {"fp32": {"*": {"*": {"atol": -1}}}},
        {"fp32": {"*": {"*": {"cosine": 1}}}},
        {"fp32": {"*": {"*": 1}}},
        {"fp32": {"*": {"*": {"min_row_cosine": 1.5}}}},
        {"fp32": {"*": {"*": {"max_rel": 1}}}},
        # issue 27: a TOML integer of any size reaches check_value (math.isfinite(10**400) is an OverflowError)
        {"fp32": {"*": {"*": {"atol": 10**400}}}},
        {"fp32": {"*": {"*": {"rtol": -(10**400)}}}},
        {"fp32": {"*": {"*": {"rtol": float("nan")}}}},
        {"fp32": {"*": {"*": {"atol": float("inf")}}}},
        {"fp32": {"*": {"*": {"min_cosine": True}}}},
    ],
)
def test_bad_tables_are_refused(data):
    with pytest.raises(ThresholdError):
        Thresholds.from_data(data)


RESULTS = Path(__file__).resolve().parents[3] / "scripts" / "results" / "gate_sensitivity" / "gate_sensitivity.json"


def next_125(x: float) -> float:
    """The smallest m * 10**e (m in 1, 2, 5) at or above x, from the decimal digits (no logarithm)."""
    e = int(f"{x:e}".split("e")[1])
    for m, k in ((1, e), (2, e), (5, e), (1, e + 1)):
        v = float(f"{m}e{k}")
        if v >= x * (1 - 1e-12):
            return v
    raise AssertionError(x)


def test_next_125():
    assert [next_125(x) for x in (7.6e-6, 1e-5, 2.06e-3, 2.78e-6, 0.042, 0.09)] == [1e-5, 1e-5, 5e-3, 5e-6, 5e-2, 0.1]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_the_measured_defaults_are_the_rule_applied_to_the_committed_measurements(precision):
    """DEFAULTS' docstring rule, recomputed from every honest cell of scripts/results/gate_sensitivity/ (not from
    the derivation the script wrote beside them): rtol = 2 x the worst honest scaled_error, 1 - min_row_cosine =
    4 x the worst honest 1 - row_cosine, each rounded up to the next 1-2-5 step. A looser or tighter default, or
    results regenerated without the defaults following them, fails here."""
    data = json.loads(RESULTS.read_text())
    cells = [c for ck in data["checkpoints"].values() for c in ck["cells"]]
    honest = [c for c in cells if c["defect"] == "honest" and c["precision"] == precision]
    assert len(honest) >= 2 and {c["checkpoint"] for c in honest} >= {"demo", "demo-stress"}
    worst_error = max(c["scaled_error"] for c in honest)
    worst_loss = max(1 - c["row_cosine"] for c in honest)
    t = DEFAULTS[precision]
    assert t.rtol == next_125(2 * worst_error)
    assert 1 - t.min_row_cosine == pytest.approx(next_125(4 * worst_loss), rel=1e-6)
    assert t.atol == 0.0


def test_the_quantized_defaults_follow_their_stated_arithmetic():
    """int8 and fp8 come from the formats (thresholds.py's comment), not from measurements: INT8 rounds each of
    the 8 quantized matmul inputs of 12 layers to half a step of 1/254 of its range; independent errors add as
    sqrt(96) / 254, doubled and rounded up 1-2-5 -> rtol; FP8 twice INT8's rtol, its row-cosine loss 4 x
    ModelOpt's (1 - 0.996) rounded up."""
    int8, fp8 = DEFAULTS["int8"], DEFAULTS["fp8"]
    assert int8.rtol == next_125(2 * math.sqrt(12 * 8) / 254)
    assert fp8.rtol == 2 * int8.rtol
    assert 1 - fp8.min_row_cosine == pytest.approx(next_125(4 * (1 - 0.996)), rel=1e-9)
    assert int8.min_row_cosine == int8.min_cosine == 0.999 and fp8.min_cosine == 0.99


@pytest.mark.parametrize("value", ["9" * 400, "9" * 5000, "nan", "inf", "-inf", "1e999"])
def test_thresholds_file_numbers_are_one_line_exit_2(built, tmp_path, capsys, value):
    """Through the gate's CLI: every one was exit 4 (OverflowError, Python's 4300-digit ValueError) or passed
    a NaN before."""
    from engines.gate import main as gate

    t = tmp_path / "t.toml"
    t.write_text(f'[fp32."*"."*"]\natol = {value}\n')
    assert gate([str(built / "report.json"), "--thresholds", str(t)]) == 2
    line = one_line(capsys)
    assert str(t) in line and ("atol" in line or "too long" in line), line
