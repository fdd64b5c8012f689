import numpy as np
import pytest
import torch

from vaescope.core.config import StatsConfig
from vaescope.measures.statistics import latent_statistics


class SyntheticEncoder(torch.nn.Module):
    """Variables 0..2 are active: mu_j = c_j * u_j with u standardised over the data, and
    sigma_j^2 = 1 - c_j^2, so Var(mu) + mean sigma^2 = 1 exactly. Variables 3..7 are inactive:
    mu = 0 and sigma^2 = 1 for every input."""

    scales = torch.tensor([0.99, 0.9, 0.5], dtype=torch.float64)

    def encode(self, x):
        u = x.flatten(1).double()[:, :3]  # (B, 3)
        mu = torch.zeros(len(x), 8, dtype=torch.float64)
        mu[:, :3] = u * self.scales
        logvar = torch.zeros_like(mu)
        logvar[:, :3] = torch.log(1 - self.scales**2)
        return mu, logvar


@pytest.fixture(scope="module")
def standardised() -> torch.Tensor:
    u = np.random.default_rng(0).normal(size=(5000, 3))
    u = (u - u.mean(0)) / u.std(0)  # population std: Var_X(u) = 1 exactly
    return torch.tensor(u).reshape(5000, 1, 1, 3)


def test_known_active_variables_and_exact_variance_law(standardised):
    stats = latent_statistics(SyntheticEncoder(), standardised, batch_size=333)
    # Inputs reach the encoder as float32 (as a real model needs), hence rtol 1e-6, not 1e-12.
    c2 = SyntheticEncoder.scales.numpy() ** 2
    np.testing.assert_allclose(stats.mu_variance[:3], c2, rtol=1e-6)
    np.testing.assert_allclose(stats.mu_variance[3:], 0.0, atol=1e-15)
    np.testing.assert_allclose(stats.sigma2_mean, np.r_[1 - c2, np.ones(5)], rtol=1e-12)
    np.testing.assert_allclose(stats.variance_law, 1.0, rtol=1e-6)
    np.testing.assert_allclose(stats.mu_mean, 0.0, atol=1e-6)
    assert stats.active.tolist() == [True] * 3 + [False] * 5
    assert stats.inactive_count == 5
    assert stats.inactive_by_sigma2.tolist() == [False, False, False] + [True] * 5
    assert stats.inactive_by_kl.tolist() == [False, False, False] + [True] * 5
    # KL of an active variable: (c^2 u^2 + 1 - c^2 - log(1 - c^2) - 1)/2, averaged: -log(1-c^2)/2
    np.testing.assert_allclose(stats.kl_mean[:3], -0.5 * np.log(1 - c2), rtol=1e-6)
    np.testing.assert_allclose(stats.log_sigma2_mean[:3], np.log(1 - c2), rtol=1e-12)
    assert stats.variance_law_max_abs_dev < 1e-6


def test_streaming_does_not_depend_on_batch_size(standardised):
    whole = latent_statistics(SyntheticEncoder(), standardised, batch_size=5000)
    pieces = latent_statistics(SyntheticEncoder(), standardised, batch_size=7)
    iterable = latent_statistics(SyntheticEncoder(), (standardised[i : i + 900] for i in range(0, 5000, 900)))
    for other in (pieces, iterable):
        np.testing.assert_allclose(other.mu_variance, whole.mu_variance, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(other.kl_mean, whole.kl_mean, rtol=1e-12)
    assert whole.n == pieces.n == iterable.n == 5000


def test_thresholds_are_configurable(standardised):
    stats = latent_statistics(SyntheticEncoder(), standardised,
                              thresholds=StatsConfig(mu_variance_threshold=0.5))
    assert stats.active.tolist()[:3] == [True, True, False]  # 0.25 < 0.5
    assert stats.to_dict("test")["inactive_count"] == 6


def test_json_contract(standardised):
    payload = latent_statistics(SyntheticEncoder(), standardised).to_dict("train")
    assert {"split", "n", "latent_dim", "inactive_count", "variables"} <= set(payload)
    assert payload["split"] == "train" and payload["n"] == 5000 and payload["latent_dim"] == 8
    first = payload["variables"][0]
    assert {"index", "mu_mean", "mu_variance", "sigma2_mean", "variance_law", "kl_mean", "active"} <= set(first)
    assert isinstance(first["active"], bool) and first["index"] == 0


def test_uint8_images_are_scaled_to_unit_interval():
    class Mean(torch.nn.Module):
        def encode(self, x):
            m = x.flatten(1).mean(1, keepdim=True)
            return m, torch.zeros_like(m)

    x = np.full((4, 1, 2, 2), 255, dtype=np.uint8)
    assert latent_statistics(Mean(), x).mu_mean[0] == pytest.approx(1.0)
