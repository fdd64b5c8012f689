"""MIG and DCI on cases worked out by hand, and the binned information against scikit-learn's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from vaescope.core.errors import VaescopeError
from vaescope.measures.factors import (
    dci,
    dci_from_importance,
    discrete_entropy,
    discrete_mutual_information,
    discretize,
    mig_from_labels,
    mutual_information_gap,
)


def test_discrete_information_by_hand_and_against_scikit_learn():
    # v = (0, 0, 1, 1): H = ln 2; a copy of it shares ln 2, an independent (0, 1, 0, 1) shares 0
    v = np.array([0, 0, 1, 1])
    assert discrete_entropy(v) == pytest.approx(math.log(2), abs=1e-15)
    assert discrete_mutual_information(v, v) == pytest.approx(math.log(2), abs=1e-15)
    assert discrete_mutual_information(v, [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-15)
    # a random pair: scikit-learn's plug-in estimate from the contingency table
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 500), rng.integers(0, 3, 500)
    b = np.where(rng.random(500) < 0.5, a % 3, b)
    assert discrete_mutual_information(a, b) == pytest.approx(mutual_info_score(a, b), abs=1e-12)


def test_mig_by_hand():
    # v takes 0, 1, 2, 3 once each: H(v) = ln 4. z1 = v shares ln 4; z2 = v // 2 (0, 0, 1, 1) shares ln 2.
    # MIG = (ln 4 - ln 2) / ln 4 = 1/2.
    v = np.array([0, 1, 2, 3])
    codes = np.column_stack([v, v // 2])
    result = mig_from_labels(codes, v)
    np.testing.assert_allclose(result.information[:, 0], [math.log(4), math.log(2)], rtol=0, atol=1e-15)
    assert result.value == pytest.approx(0.5, abs=1e-15)
    # a second copy of v closes the gap: MIG 0; a constant second code leaves it whole: MIG 1
    assert mig_from_labels(np.column_stack([v, v]), v).value == pytest.approx(0.0, abs=1e-15)
    assert mig_from_labels(np.column_stack([v, np.zeros(4)]), v).value == pytest.approx(1.0, abs=1e-15)
    # two independent factors a = (0, 0, 1, 1), b = (0, 1, 0, 1), each followed by its own code:
    # I(a; a) = ln 2, I(b; a) = 0 -> gap 1 for each -> MIG 1
    a, b = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    assert mig_from_labels(np.column_stack([a, b]), np.column_stack([a, b])).value == pytest.approx(1.0, abs=1e-15)
    # the four-level v with w = v mod 2 = (0, 1, 0, 1), codes (v, w): for v the gap is (ln 4 - ln 2) / ln 4 = 1/2;
    # w is a function of v, so z = v also holds all of H(w) = ln 2: gap 0 -> MIG (1/2 + 0) / 2 = 1/4
    w = v % 2
    assert mig_from_labels(np.column_stack([v, w]), np.column_stack([v, w])).value == pytest.approx(0.25, abs=1e-15)


def test_binning_keeps_distinct_levels_apart_and_is_scale_free():
    # 0, 1, 2, 3 over 20 equal-width bins of [0, 3]: edges every 0.15 -> bins 0, 6, 13, 19
    assert discretize(np.array([0.0, 1.0, 2.0, 3.0]), bins=20)[:, 0].tolist() == [0, 6, 13, 19]
    rng = np.random.default_rng(1)
    factor = rng.random((2000, 1))
    codes = np.column_stack([factor[:, 0] * 1e-3, rng.standard_normal(2000)])  # a tiny copy, and noise
    result = mutual_information_gap(codes, factor)
    # the copy bins exactly like the factor: it carries all of H(binned v) -> the gap is 1 minus the
    # noise code's (small, plug-in) information over H(v)
    assert result.information[0, 0] == pytest.approx(result.factor_entropy[0], abs=1e-12)
    assert result.value == pytest.approx(1.0 - result.information[1, 0] / result.factor_entropy[0], abs=1e-12)
    assert result.information[1, 0] < 0.05 * result.factor_entropy[0]


def test_dci_scores_of_hand_made_importances():
    # identity: each code serves one factor, each factor one code -> D = C = 1
    ident = dci_from_importance(np.eye(2))
    assert ident.disentanglement == pytest.approx(1.0, abs=1e-15)
    assert ident.completeness == pytest.approx(1.0, abs=1e-15)
    # code 0 serves both factors equally, code 1 nothing: H_2(1/2, 1/2) = 1 -> D_0 = 0, weight 1: D = 0;
    # each factor is served by code 0 alone: C = 1
    shared = dci_from_importance([[1.0, 1.0], [0.0, 0.0]])
    assert shared.disentanglement == pytest.approx(0.0, abs=1e-15)
    assert shared.completeness == pytest.approx(1.0, abs=1e-15)
    # R = [[3, 1], [0, 2]]:
    #   code 0: p = (3/4, 1/4), H_2 = 0.811278 -> 0.188722, weight 4/6; code 1: p = (0, 1) -> 1, weight 2/6
    #   D = 0.188722 * 4/6 + 1 * 2/6 = 0.459148
    #   factor 0: p = (1, 0) -> 1, weight 3/6; factor 1: p = (1/3, 2/3), H_2 = 0.918296 -> 0.081704, weight 3/6
    #   C = 0.5 + 0.081704 / 2 = 0.540852
    hand = dci_from_importance([[3.0, 1.0], [0.0, 2.0]])
    h_34 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    h_13 = -(1 / 3 * math.log2(1 / 3) + 2 / 3 * math.log2(2 / 3))
    np.testing.assert_allclose(hand.per_code, [1 - h_34, 1.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(hand.per_factor, [1.0, 1 - h_13], rtol=0, atol=1e-12)
    assert hand.disentanglement == pytest.approx(0.459148, abs=1e-6)
    assert hand.completeness == pytest.approx(0.540852, abs=1e-6)
    # one factor: every code's disentanglement is 1 (no other factor to serve); completeness is base D
    one = dci_from_importance([[1.0], [1.0]])
    assert one.disentanglement == 1.0 and one.completeness == pytest.approx(0.0, abs=1e-15)


def test_dci_of_codes_that_are_the_factors_permuted():
    # z0 = v1, z1 = v0, z2 noise: the forests find each factor in its own code, and predict it well
    rng = np.random.default_rng(2)
    v = rng.random((1500, 2))
    codes = np.column_stack([v[:, 1], v[:, 0], rng.standard_normal(1500)])
    scores = dci(codes, v, seed=0)
    assert scores.importance.argmax(0).tolist() == [1, 0]
    assert scores.disentanglement > 0.9 and scores.completeness > 0.9  # measured 0.98, 0.98
    assert scores.informativeness > 0.95  # R^2 of a forest reading a factor off its copy
    again = dci(codes, v, seed=0)
    np.testing.assert_array_equal(again.importance, scores.importance)  # deterministic for a seed


def test_bad_input_is_one_line():
    with pytest.raises(VaescopeError, match="rows"):
        mutual_information_gap(np.zeros((5, 2)), np.zeros((4, 1)))
    with pytest.raises(VaescopeError, match="importance"):
        dci_from_importance([[1.0, -1.0]])
    with pytest.raises(VaescopeError, match="NaN"):
        dci(np.full((10, 2), np.nan), np.zeros((10, 1)))
