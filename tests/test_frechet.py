"""The generation score's science: the Frechet distance (closed form; torchmetrics' FID with a custom
feature extractor) and precision / recall / density / coverage (hand-worked cases; the published
formulas written out with NumPy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vaescope.core.errors import VaescopeError
from vaescope.measures.frechet import (
    feature_statistics,
    frechet_distance,
    frechet_distance_of,
    kth_neighbour_distance,
    precision_recall_density_coverage,
)


def test_frechet_distance_of_two_known_gaussians():
    # diagonal covariances commute: tr(C1 + C2 - 2 (C1 C2)^(1/2)) = sum (sqrt(a) - sqrt(b))^2
    m1, m2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    c1, c2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 9.0, 1.0])
    expected = (1 + 0 + 4) + ((1 - 2) ** 2 + (2 - 3) ** 2 + (3 - 1) ** 2)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-9)
    # a rotation of both covariances leaves the distance as it is (non-commuting case, same answer)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    assert frechet_distance(q @ m1, q @ c1 @ q.T, q @ m2, q @ c2 @ q.T) == pytest.approx(expected, rel=1e-9)


class FixedFeatures(nn.Module):
    """Images (N, 1, 4, 4) -> 6 features by a fixed random projection and a tanh."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.projection = nn.Linear(16, 6)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(3)
            self.projection.weight.copy_(torch.randn(6, 16, generator=generator))
            self.projection.bias.copy_(torch.randn(6, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.projection(x.float().flatten(1)))


def test_frechet_distance_matches_torchmetrics_with_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    generator = torch.Generator().manual_seed(0)
    real = torch.rand(300, 1, 4, 4, generator=generator)
    fake = torch.rand(250, 1, 4, 4, generator=generator) ** 2  # another distribution
    features = FixedFeatures()
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    expected = float(metric.compute())
    with torch.no_grad():
        ours = frechet_distance_of(features(real).double().numpy(), features(fake).double().numpy())
    assert ours == pytest.approx(expected, rel=1e-4)  # torchmetrics' features are float32 sums
    assert expected > 0.05  # the two distributions differ: a distance that could have been 0


def test_feature_statistics_are_the_unbiased_moments():
    x = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    mean, cov = feature_statistics(x)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(cov, [[4.0, 3.0], [3.0, 3.0]])  # (N - 1) denominators, by hand
    with pytest.raises(VaescopeError, match="at least 2 feature rows"):
        feature_statistics(x[:1])


def test_prdc_on_a_hand_worked_case():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])       # k = 1: every real radius is 1
    fake = np.array([[0.5], [0.6], [3.02], [3.1]])      # radii 0.1, 0.1, 0.08, 0.08
    np.testing.assert_allclose(kth_neighbour_distance(real, 1), [1, 1, 1, 1])
    np.testing.assert_allclose(kth_neighbour_distance(fake, 1), [0.1, 0.1, 0.08, 0.08], rtol=1e-5)
    got = precision_recall_density_coverage(real, fake, nearest_k=1)
    assert got.precision == 1.0          # every fake point lies within 1 of a real one
    assert got.recall == 0.25            # only 3 lies in a fake ball (0.02 from 3.02)
    assert got.density == 1.5            # balls holding each fake point: 2, 2, 1, 1; / (k M) = 6 / 4
    assert got.coverage == 0.75          # the ball of 2 holds none (nearest fake 1.02 away)


def _reference_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float, float, float]:
    """Naeem et al.'s formulas, written out with NumPy on full distance matrices."""
    def kth(a: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    r_real, r_fake = kth(real), kth(fake)
    d = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # (N, M)
    precision = (d < r_real[:, None]).any(0).mean()
    recall = (d < r_fake[None, :]).any(1).mean()
    density = (d < r_real[:, None]).sum(0).mean() / k
    coverage = (d.min(1) < r_real).mean()
    return precision, recall, density, coverage


def test_prdc_matches_the_published_formulas_on_random_features():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((300, 5))
    fake = 1.3 * rng.standard_normal((200, 5)) + 0.4
    got = precision_recall_density_coverage(real, fake, nearest_k=5)
    expected = _reference_prdc(real.astype(np.float32).astype(np.float64), fake.astype(np.float32).astype(np.float64), 5)
    assert (got.precision, got.recall, got.density, got.coverage) == pytest.approx(expected, abs=1e-9)
    assert 0 < got.precision < 1 and 0 < got.coverage < 1  # a case where each could have been another value


def test_prdc_refuses_mismatched_features():
    with pytest.raises(VaescopeError, match="of one d"):
        precision_recall_density_coverage(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(VaescopeError, match="nearest_k is 4"):
        precision_recall_density_coverage(np.zeros((4, 2)), np.zeros((4, 2)), nearest_k=4)
