"""Intrinsic-dimension estimates (scikit-dimension, for real) on point clouds whose dimension is known."""

from __future__ import annotations

import numpy as np
import pytest

from vaescope.core.errors import VaescopeError
from vaescope.data.linear import random_orthogonal
from vaescope.measures.intrinsic import estimate_dimension


def _embed(points: np.ndarray, ambient: int, seed: int) -> np.ndarray:
    """Points (N, m) placed in R^ambient by a random rotation (zeros in the other columns first)."""
    rng = np.random.default_rng(seed)
    padded = np.column_stack([points, np.zeros((len(points), ambient - points.shape[1]))])
    return padded @ random_orthogonal(ambient, rng).T


@pytest.mark.parametrize("d", [2, 5])
def test_a_gaussian_on_a_linear_subspace_has_its_dimension(d):
    rng = np.random.default_rng(d)
    x = _embed(rng.standard_normal((3000, d)), 20, seed=d)
    est = estimate_dimension(x, n=2000, seed=0)
    assert est.n == 2000 and est.n_given == 3000 and est.ambient == 20 and est.duplicates == 0
    # Measured: d = 2 -> TwoNN 2.11, MLE 2.02-2.03; d = 5 -> TwoNN 4.99, MLE 4.99-5.04. Within 10% of d.
    assert est.twonn == pytest.approx(d, rel=0.1)
    for k in (5, 10, 20):
        assert est.mle[k] == pytest.approx(d, rel=0.1)


def test_a_flat_torus_in_thirty_dimensions_has_dimension_three():
    # the 3-torus as (cos t_i, sin t_i), i = 1..3: a flat 3-manifold in R^6, rotated into R^30
    rng = np.random.default_rng(7)
    angles = rng.random((2000, 3)) * 2 * np.pi
    x = _embed(np.column_stack([np.cos(angles), np.sin(angles)]), 30, seed=7)
    est = estimate_dimension(x, ks=(5, 10, 20), n=None)
    assert est.twonn == pytest.approx(3, rel=0.1)  # measured 3.05
    assert all(v == pytest.approx(3, rel=0.1) for v in est.mle.values())  # measured 3.04, 3.06, 3.07


def test_the_subsample_is_stated_and_duplicates_are_dropped():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((500, 2))
    x = np.concatenate([base, base[:100]])  # 100 repeated rows
    est = estimate_dimension(x, n=None, seed=0)
    assert (est.n, est.n_given, est.duplicates) == (500, 600, 100)
    assert "500 of 600 points" in est.settings and "100 duplicates dropped" in est.settings
    # one column: padded with zeros, the line has dimension ~1
    line = estimate_dimension(rng.random((800, 1)), n=None)
    assert line.ambient == 1 and line.twonn == pytest.approx(1, rel=0.1)  # measured 0.94
    with pytest.raises(VaescopeError, match="k up to 20"):
        estimate_dimension(rng.random((15, 3)))
    with pytest.raises(VaescopeError, match="NaN"):
        estimate_dimension(np.full((50, 3), np.nan))


def test_the_dimension_command_prints_the_estimates_with_their_settings():
    from click.testing import CliRunner

    from vaescope.cli import main
    from vaescope.data.sources import load_dataset

    source = "synthetic:linear=4,2,1,dim=8,n=1200,test=10,seed=3"
    result = CliRunner().invoke(main, ["dimension", "--data", source, "--points", "1000", "--k", "5", "--k", "10"])
    assert result.exit_code == 0, result.output
    # the same numbers as the library on the same 1000 of the 1200 training vectors
    expected = estimate_dimension(load_dataset(source).x_train, ks=(5, 10), n=1000, seed=0)
    assert f"TwoNN: {expected.twonn:.2f}" in result.output
    assert f"MLE k=5: {expected.mle[5]:.2f}" in result.output and f"MLE k=10: {expected.mle[10]:.2f}" in result.output
    assert "1000 of 1200 points (seed 0" in result.output and "8 dimensions" in result.output
    assert expected.twonn == pytest.approx(3, rel=0.15)  # a Gaussian of rank 3 in R^8
