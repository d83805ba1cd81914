"""export.report.thresholds: the pass rule at its boundaries, the precedence of the tables, as the docstring states, and
old (schema 1) threshold files still read."""

from __future__ import annotations

import math

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
