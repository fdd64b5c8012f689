"""The intrinsic-dimension reading on curves whose answer is known."""

from __future__ import annotations

import pytest

from vaescope.measures.intrinsic import intrinsic_dimension


def test_a_curve_that_levels_off():
    # the K = 3 picture: every variable active up to 2, then 3 whatever the latent size
    reading = intrinsic_dimension({2: [2, 2], 4: [3, 3], 8: [3, 3], 16: [3, 3]})
    assert reading.reached
    assert reading.value == 3 and reading.latent_size == 4
    assert "levels off at latent size 4" in reading.reason
    assert reading.medians == (2.0, 3.0, 3.0, 3.0)


def test_sizes_in_any_order_and_the_smallest_level_wins():
    reading = intrinsic_dimension({16: [5], 4: [4], 8: [5], 32: [5]})
    assert (reading.value, reading.latent_size) == (5, 8)
    assert reading.latent_sizes == (4, 8, 16, 32)


def test_noisy_seeds_are_read_through_their_median():
    # one seed of three strays at each size; the median stays at 4 from size 8 on
    reading = intrinsic_dimension({4: [4, 4, 3], 8: [4, 5, 4], 16: [3, 4, 4], 32: [4, 4, 6]})
    assert (reading.value, reading.latent_size) == (4, 4)
    # two seeds: a median of 4.5 is within the default tolerance of 4, 5.5 is not
    assert intrinsic_dimension({8: [4, 4], 16: [4, 5], 32: [4, 5]}).value == 4
    assert not intrinsic_dimension({8: [4, 4], 16: [4, 5], 32: [5, 6]}).reached


def test_a_curve_still_growing_is_not_reached():
    reading = intrinsic_dimension({2: [2], 4: [3], 8: [4], 16: [5]})
    assert not reading.reached and reading.value is None and reading.latent_size is None
    assert "still grows" in reading.reason and "4 at 8, 5 at 16" in reading.reason
    # a plateau followed by a rise is no level either
    assert not intrinsic_dimension({2: [2], 4: [3], 8: [3], 16: [6]}).reached


def test_every_variable_active_means_enlarge_the_latent_space():
    reading = intrinsic_dimension({2: [2, 2], 4: [4, 4], 8: [8, 8]})
    assert not reading.reached
    assert "every variable is active" in reading.reason


def test_one_size_cannot_show_a_level():
    reading = intrinsic_dimension({16: [7, 7, 6]})
    assert not reading.reached and "only latent size 16" in reading.reason


def test_a_wider_tolerance_accepts_a_drift():
    curve = {4: [4], 8: [5], 16: [5], 32: [6]}
    assert not intrinsic_dimension(curve).reached
    assert intrinsic_dimension(curve, tolerance=1).value == 5  # at 8: 5, within 1 of 5 and 6


def test_refusals():
    with pytest.raises(ValueError, match="at least one"):
        intrinsic_dimension({})
    with pytest.raises(ValueError, match="no active counts"):
        intrinsic_dimension({4: [3], 8: []})
    with pytest.raises(ValueError, match="tolerance"):
        intrinsic_dimension({4: [3], 8: [3]}, tolerance=-1)
