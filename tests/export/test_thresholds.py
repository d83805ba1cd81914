"""export.thresholds: the pass rule at its boundaries and the precedence of the tables, as the docstring states."""

from __future__ import annotations

import math

import pytest

from export.thresholds import Threshold, ThresholdError, Thresholds


def test_the_boundary_passes():
    t = Threshold(atol=1e-4, rtol=0.0, min_cosine=0.99)
    assert t.passes(1e-4, 1.0, 0.99)  # max_abs == atol and cosine == min_cosine: both pass
    assert not t.passes(1.0000001e-4, 1.0, 0.99)
    assert not t.passes(1e-4, 1.0, 0.98999)
    assert Threshold(atol=0.0, rtol=1e-3, min_cosine=0.0).passes(5.0, 1e-3, 0.5)  # max_rel == rtol passes


def test_nan_and_nan_counts_fail():
    t = Threshold(atol=1.0, rtol=1.0, min_cosine=0.0)
    assert not t.passes(math.nan, math.nan, 1.0)
    assert not t.passes(0.0, 0.0, math.nan)
    assert not t.passes(0.0, 0.0, 1.0, n_nan=1)


def test_output_wide_table_beats_graph_wide_table():
    th = Thresholds.from_data({"fp16": {"rope-plugin.fp16": {"*": {"atol": 0.3}}, "*": {"logits": {"atol": 0.7}}}})
    assert th.lookup("fp16", "rope-plugin.fp16", "logits").atol == 0.7  # both set atol: the output's wins
    assert th.lookup("fp16", "rope-plugin.fp16", "last_hidden_state").atol == 0.3  # only the graph's applies
    assert th.lookup("fp16", "onnx", "logits").atol == 0.7


def test_precedence_from_weakest_to_strongest():
    th = Thresholds.from_data({"*": {"*": {"*": {"atol": 1.0}}}, "fp32": {"*": {"*": {"atol": 2.0}},
                                                                          "g": {"o": {"atol": 4.0}, "*": {"atol": 3.0}}}})
    assert th.lookup("fp32", "x", "y").atol == 2.0
    assert th.lookup("fp32", "g", "y").atol == 3.0
    assert th.lookup("fp32", "g", "o").atol == 4.0
    assert th.lookup("fp16", "g", "o").atol == 1.0
    flags = Thresholds.from_cli({"fp32": {"g": {"o": {"atol": 4.0}}}}, "t", atol=9.0, rtol=None)
    assert flags.lookup("fp32", "g", "o").atol == 9.0


@pytest.mark.parametrize("data", [{"int3": {}}, {"fp32": {"*": {"*": {"atol": -1}}}},
                                  {"fp32": {"*": {"*": {"cosine": 1}}}}, {"fp32": {"*": {"*": 1}}}])
def test_bad_tables_are_refused(data):
    with pytest.raises(ThresholdError):
        Thresholds.from_data(data)
