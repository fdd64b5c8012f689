"""The synthetic rings: deterministic from a seed, each factor recoverable from the pixels, cached once."""

from __future__ import annotations

import numpy as np
import pytest

from vaescope import load_dataset
from vaescope.core.errors import VaescopeError
from vaescope.data import synthetic


def moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mass, centroid (x, y) in pixel-centre coordinates (c + 0.5) and orientation (degrees, clockwise
    on screen) of ``(N, 1, H, W)`` uint8 images."""
    ink = images[:, 0].astype(np.float64) / 255.0
    side = ink.shape[-1]
    centres = np.arange(side) + 0.5
    mass = ink.sum((1, 2))
    cx = (ink * centres[None, None, :]).sum((1, 2)) / mass
    cy = (ink * centres[None, :, None]).sum((1, 2)) / mass
    dx = centres[None, None, :] - cx[:, None, None]
    dy = centres[None, :, None] - cy[:, None, None]
    m20, m02, m11 = ((ink * dx**2).sum((1, 2)), (ink * dy**2).sum((1, 2)), (ink * dx * dy).sum((1, 2)))
    angle = np.degrees(0.5 * np.arctan2(2 * m11, m20 - m02))
    return mass, cx, cy, angle


def test_rendering_is_deterministic_for_a_seed():
    a = synthetic.render(synthetic.draw_factors(4, seed=5, n=300))
    b = synthetic.render(synthetic.draw_factors(4, seed=5, n=300))
    c = synthetic.render(synthetic.draw_factors(4, seed=6, n=300))
    assert a.dtype == np.uint8 and a.shape == (300, 1, 28, 28)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_centroid_is_the_position():
    factors = synthetic.draw_factors(2, seed=1, n=500)
    mass, cx, cy, _ = moments(synthetic.render(factors))
    x, y = (synthetic.FACTORS[j].physical(factors[:, j]) for j in (0, 1))
    # a ring is symmetric about its centre: only pixel sampling separates centroid and centre
    assert np.abs(cx - x).max() < 0.1
    assert np.abs(cy - y).max() < 0.1
    assert np.ptp(mass) / mass.mean() < 0.05  # with only positions varied, the ink is the same


def test_mass_grows_with_size_and_stroke():
    grid = np.linspace(0, 1, 9)
    fixed = np.full((9, 6), 0.5)
    for column in (2, 5):  # size, stroke
        factors = fixed.copy()
        factors[:, column] = grid
        mass, *_ = moments(synthetic.render(factors))
        assert np.all(np.diff(mass) > 0), synthetic.FACTORS[column].name
    factors = synthetic.draw_factors(3, seed=2, n=500)
    mass, *_ = moments(synthetic.render(factors))
    assert np.corrcoef(mass, factors[:, 2])[0, 1] > 0.98


def test_orientation_is_the_angle_and_elongation_its_spread():
    factors = synthetic.draw_factors(5, seed=3, n=400)
    _, _, _, angle = moments(synthetic.render(factors))
    truth = synthetic.FACTORS[4].physical(factors[:, 4])
    assert np.abs(angle - truth).max() < 4.0  # degrees
    fixed = np.full((7, 6), 0.5)
    fixed[:, 4] = 0.0  # major axis horizontal
    fixed[:, 3] = np.linspace(0, 1, 7)
    ink = synthetic.render(fixed)[:, 0].astype(np.float64)
    centred = np.arange(28) - 13.5  # the ring is centred at 14 = 13.5 + 0.5
    spread_x = (ink * centred[None, None, :] ** 2).sum((1, 2))
    spread_y = (ink * centred[None, :, None] ** 2).sum((1, 2))
    assert np.all(np.diff(spread_x / spread_y) > 0)


def test_source_is_parsed_and_bad_ones_refused():
    assert synthetic.parse_source("synthetic:factors=3") == (3, 0)
    assert synthetic.parse_source("Synthetic:factors=6,seed=12") == (6, 12)
    for bad in ("synthetic:factors=0", "synthetic:factors=7", "synthetic:k=2", "synthetic:factors=2,seed=-1"):
        with pytest.raises(VaescopeError, match="synthetic:factors"):
            synthetic.parse_source(bad)
    with pytest.raises(VaescopeError, match="factors must be from 1 to 6"):
        load_dataset("synthetic:factors=9")


def test_dataset_is_cached_once_with_its_factors(tmp_path, monkeypatch):
    monkeypatch.setenv("VAESCOPE_DATA", str(tmp_path))
    data = load_dataset("synthetic:factors=2,seed=4")
    path = synthetic.cache_path(2, 4)
    assert path.parent == tmp_path and path.is_file()
    assert data.name == "synthetic-factors2-seed4"
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.x_train.dtype == np.uint8 and data.y_train is None
    factors = synthetic.load_factors("synthetic:factors=2,seed=4")
    assert factors.names == ("position_x", "position_y")
    # the test split is the last 10,000 rows of the seed's draw, rendered as documented
    drawn = synthetic.draw_factors(2, 4)
    assert np.array_equal(factors.test, drawn[60000:])
    assert np.array_equal(data.x_test[:50], synthetic.render(drawn[60000:60050]))
    stamp = path.stat().st_mtime_ns
    again = load_dataset("synthetic:factors=2,seed=4")
    assert path.stat().st_mtime_ns == stamp  # read from the cache, not rendered again
    assert np.array_equal(again.x_train, data.x_train)
    path.write_bytes(b"not an npz")  # a damaged cache is rebuilt
    rebuilt = load_dataset("synthetic:factors=2,seed=4")
    assert np.array_equal(rebuilt.x_test, data.x_test)


def test_factor_correlations_and_matches():
    rng = np.random.default_rng(0)
    factors = rng.random((2000, 2))
    mu = np.stack([rng.normal(size=2000) * 0.01,   # an inactive variable: noise
                   -3 * factors[:, 1] + 1,          # follows factor 1 (negatively)
                   2 * factors[:, 0],               # follows factor 0
                   np.zeros(2000)], axis=1)         # constant
    corr = synthetic.factor_correlations(mu, factors)
    assert corr.shape == (4, 2)
    np.testing.assert_allclose(corr[1, 1], -1.0, atol=1e-12)
    np.testing.assert_allclose(corr[2, 0], 1.0, atol=1e-12)
    assert corr[3].tolist() == [0.0, 0.0]
    r2 = synthetic.factor_r2(mu[:, 1:3], factors)  # both factors are linear in the two active means
    np.testing.assert_allclose(r2, [1.0, 1.0], atol=1e-12)
    noise = synthetic.factor_r2(rng.normal(size=(2000, 2)), factors)
    assert noise.max() < 0.01  # independent codes explain nothing
    matches = synthetic.factor_matches(corr, np.array([False, True, True, False]))
    assert [m["variable"] for m in matches] == [2, 1]
    assert matches[1]["correlation"] == pytest.approx(-1.0)
    assert synthetic.factor_matches(corr, np.zeros(4, bool))[0]["variable"] is None
