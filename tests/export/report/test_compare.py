"""export.report.compare: the statistics report.json stores, each on a case whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from export.report.compare import error_stats, row_mask
from export.validate import Shape, padding_mask


def hidden(shape=(2, 5, 8), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_scaled_error_does_not_depend_on_the_outputs_scale():
    ref = hidden()
    got = ref.copy()
    got[0, 1, 2] += 0.01
    s = error_stats(got, ref)
    big = error_stats(got * 1000, ref * 1000)
    assert s.scaled_error == pytest.approx(0.01 / np.abs(ref).max(), rel=1e-4)
    assert big.scaled_error == pytest.approx(s.scaled_error, rel=1e-6) and big.max_abs == pytest.approx(
        1000 * s.max_abs
    )


def test_an_outlier_channel_sets_the_scale():
    """Two channels 300x larger, as in the stress checkpoint: an error of the rounding size of those channels
    is small, the same error on an ordinary element of a model without them is not."""
    ref = hidden()
    ref[..., [2, 5]] *= 300
    got = ref + 1e-3
    assert error_stats(got, ref).scaled_error < 1e-5 < error_stats(got[..., :2], ref[..., :2]).scaled_error


def test_all_zero_reference_stays_finite():
    z = np.zeros((2, 3), np.float32)
    assert error_stats(z, z).scaled_error == 0.0
    s = error_stats(z + 1, z)
    assert np.isfinite(s.scaled_error) and s.scaled_error > 1e30


def test_row_cosine_is_the_worst_non_padded_row():
    ref = hidden((2, 50, 8))
    got = ref.copy()
    got[1, 49] = -ref[1, 49]  # one token flipped: cosine -1 on that row, the whole tensor's still above 0.95
    mask = np.ones((2, 50), bool)
    assert error_stats(got, ref, mask).row_cosine == pytest.approx(-1.0)
    assert error_stats(got, ref).cosine > 0.95
    mask[1, 49] = False  # that token is padding: it no longer counts
    assert error_stats(got, ref, mask).row_cosine == pytest.approx(1.0)
    assert error_stats(got, ref).row_cosine is None and "row_cosine" not in error_stats(got, ref).to_dict()


def test_row_masks_per_token_per_choice_and_per_sentence():
    mask = padding_mask(Shape(3, 8, padded_rows=2))
    assert row_mask("last_hidden_state", (3, 8, 16), mask).tolist() == (mask == 1).tolist()
    assert row_mask("sentence_embedding", (3, 16), mask).tolist() == [True, True, True]
    mc = padding_mask(Shape(2, 6, padded_rows=1, choices=3))
    assert row_mask("last_hidden_state", (2, 3, 6, 16), mc).shape == (2, 3, 6)
    assert row_mask("logits", (3, 2), mask) is None
    with pytest.raises(ValueError, match="do not match"):
        row_mask("last_hidden_state", (3, 9, 16), mask)


def test_zero_rows_compare_as_the_whole_tensor_does():
    ref, got = np.zeros((1, 2, 4)), np.zeros((1, 2, 4))
    got[0, 1] = 1.0
    assert error_stats(got, ref, np.ones((1, 2), bool)).row_cosine == 0.0
    assert error_stats(ref, ref, np.ones((1, 2), bool)).row_cosine == 1.0
