"""The static experiments of ``vaescope reproduce`` on synthetic models with known answers,
and on a tiny trained VAE whose decoder is made to ignore a variable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from vaescope.core.config import StatsConfig
from vaescope.experiments.run_to_run import count_spread
from vaescope.experiments.sparsity_table import article_comparison, variable_rows
from vaescope.measures.gains import reconstruction_gain
from vaescope.measures.generation import generation_check, generation_rows, lowest_kl_active, zeroing_difference
from vaescope.measures.statistics import LatentStatistics, latent_statistics
from vaescope.measures.trace import collapse_points, variance_trace
from vaescope.measures.variance_law import (
    kl_at_fixed_ratio,
    numerical_minimiser,
    stationary_curves,
    stationary_sigma2,
    variance_law,
)
from vaescope.models.objectives import reconstruction_error
from vaescope.runs.files import Trace
from vaescope.training.train import train


class LinearVAE(nn.Module):
    """mu = first D pixels * 4 - 2; logvar = ``logvar`` (D,); logits = z @ W + b, so a zero row of W
    means the decoder ignores that variable exactly."""

    def __init__(self, weight: torch.Tensor, logvar: torch.Tensor, side: int = 4) -> None:
        super().__init__()
        self.side = side
        self.weight = nn.Parameter(weight)  # (D, side * side)
        self.bias = nn.Parameter(torch.zeros(side * side))
        self.logvar = logvar

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.weight.shape[0]
        mu = x.flatten(1)[:, :d] * 4.0 - 2.0
        return mu, self.logvar.expand(len(x), d)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.weight + self.bias).view(-1, 1, self.side, self.side)


def _linear_model(ignored: tuple[int, ...] = (2, 3), dim: int = 4, seed: int = 0) -> LinearVAE:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(dim, 16, generator=g)
    weight[list(ignored)] = 0.0
    return LinearVAE(weight, torch.zeros(dim))


def _images(n: int = 300, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 1, 4, 4)).astype(np.float32)


# ---------------------------------------------------------------------------- eq. (1), eq. (2)

def test_kl_at_fixed_ratio_matches_eq1() -> None:
    sigma2 = np.array([0.01, 0.3, 1.0, 2.5])
    for rho in (0.1, 1.0, 3.0):
        expected = (sigma2 * (1 + rho**2) / rho**2 - np.log(sigma2) - 1) / 2  # eq. (1) written out
        np.testing.assert_allclose(kl_at_fixed_ratio(sigma2, rho), expected, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=0.03, max_value=30.0))
def test_numerical_minimum_is_where_eq2_puts_it(rho: float) -> None:
    assert numerical_minimiser(rho) == pytest.approx(stationary_sigma2(rho), rel=1e-5, abs=1e-9)


def test_stationary_curves_minimum_and_its_value() -> None:
    curves = stationary_curves(points=4000)
    np.testing.assert_allclose(curves.formula_minimiser, [0.1**2 / 1.01, 0.04 / 1.04, 0.2, 0.5, 0.8])
    assert curves.max_abs_error < 1e-6
    # the grid's argmin is within one grid step (log spacing) of the formula
    step = curves.sigma2[1] / curves.sigma2[0]
    assert np.all(np.abs(np.log(curves.grid_minimiser / curves.formula_minimiser)) <= math.log(step))
    # at sigma^2 = rho^2 / (1 + rho^2) eq. (1) reduces to log((1 + rho^2) / rho^2) / 2
    np.testing.assert_allclose(curves.minimum_kl, 0.5 * np.log((1 + curves.rhos**2) / curves.rhos**2), rtol=1e-12)
    assert curves.kl.shape == (5, 4000) and np.all(curves.kl >= curves.minimum_kl[:, None] - 1e-12)


def test_kl_at_fixed_ratio_refuses_nonpositive_rho() -> None:
    with pytest.raises(ValueError, match="rho"):
        kl_at_fixed_ratio(0.5, 0.0)


def _stats(mu_variance: list[float], sigma2: list[float], log_sigma2: list[float] | None = None) -> LatentStatistics:
    d = len(mu_variance)
    return LatentStatistics(n=10, mu_mean=np.zeros(d), mu_variance=np.array(mu_variance),
                            sigma2_mean=np.array(sigma2),
                            log_sigma2_mean=np.log(sigma2) if log_sigma2 is None else np.array(log_sigma2),
                            kl_mean=np.array(mu_variance) / 2, thresholds=StatsConfig())


def test_variance_law_collects_the_law_and_the_log_averages() -> None:
    law = variance_law(_stats([0.9, 0.001], [0.05, 1.02], log_sigma2=[math.log(0.05) - 0.4, 0.0]))
    np.testing.assert_allclose(law.law, [0.95, 1.021])
    assert law.max_abs_deviation == pytest.approx(0.05)
    np.testing.assert_allclose(law.jensen_gap, [0.4, math.log(1.02)])
    assert law.active.tolist() == [True, False]


def test_jensen_gap_of_a_real_encoder_is_nonnegative_and_zero_for_constant_variance() -> None:
    x = torch.as_tensor(_images())
    constant = latent_statistics(_linear_model(), x)
    assert np.allclose(variance_law(constant).jensen_gap, 0.0, atol=1e-12)
    varying = _linear_model()
    varying.logvar = torch.linspace(-3, 1, 300)[:, None]  # (N, 1): sigma^2 differs across images
    law = variance_law(latent_statistics(varying, x, batch_size=300))
    assert np.all(law.jensen_gap > 0.1)


# ---------------------------------------------------------------------------- Table 1, run to run

def test_variable_rows_and_article_comparison() -> None:
    stats = _stats([0.5, 0.001, 0.02], [0.4, 0.99, 0.9])
    rows = variable_rows(stats)
    assert [r.active for r in rows] == [True, False, True]
    assert rows[1].variance_law == pytest.approx(0.991)
    assert article_comparison("dense16", 9, 16).to_dict() == {"model": "dense16", "ours": 9, "article": 8,
                                                           "latent_dim": 16, "difference": 1}
    assert article_comparison("conv16", 1, 16).difference == -2
    no_kl = article_comparison("dense16_no_kl", 0, 16)
    assert no_kl.article is None and no_kl.difference is None


def test_count_spread() -> None:
    spread = count_spread([0, 1, 2], [9, 8, 10])
    assert (spread.minimum, spread.maximum, spread.range, spread.mean) == (8, 10, 2, 9.0)
    assert spread.std == pytest.approx(1.0)
    assert count_spread([0], [3]).std == 0.0
    with pytest.raises(ValueError):
        count_spread([0, 1], [3])


# ---------------------------------------------------------------------------- variance trace

def test_collapse_points_known_answer() -> None:
    values = np.array([[0.5, 0.5, 0.001, 0.5],
                       [0.005, 0.5, 0.001, 0.004],
                       [0.02, 0.5, 0.002, 0.003],
                       [0.003, 0.6, 0.001, 0.002]])
    assert collapse_points(values, 0.01).tolist() == [3, -1, 0, 1]


def test_variance_trace_from_a_recorded_trace() -> None:
    trace = Trace(steps=[0, 10, 20], epochs=[0.0, 0.5, 1.0],
                  mu_variance=[np.array([0.3, 0.3]), np.array([0.5, 0.005]), np.array([0.8, 0.001])],
                  sigma2_mean=[np.array([1.0, 1.0]), np.array([0.4, 0.9]), np.array([0.2, 0.99])])
    data = variance_trace(trace)
    assert data.final_active.tolist() == [True, False]
    assert data.collapse_minibatch.tolist() == [-1, 10]
    assert data.mu_variance.shape == data.sigma2_mean.shape == (3, 2)
    with pytest.raises(ValueError, match="empty"):
        variance_trace(Trace())


# ---------------------------------------------------------------------------- reconstruction gain

@pytest.mark.parametrize("kind", ["bernoulli", "gaussian"])
def test_reconstruction_gain_known_answer(kind: str) -> None:
    model = _linear_model(ignored=(2,))
    x = torch.as_tensor(_images())
    result = reconstruction_gain(model, x, kind, batch_size=70)  # batches of unequal size
    with torch.no_grad():
        mu, _ = model.encode(x)
        base = reconstruction_error(model.decode(mu), x, kind).double().mean()
        code = mu.clone()
        code[:, 0] = 0
        expected0 = reconstruction_error(model.decode(code), x, kind).double().mean() - base
    assert result.gain[2] == 0.0  # the decoder ignores variable 2 exactly
    assert result.gain[0] == pytest.approx(float(expected0), rel=1e-5)
    # the error is -log p(x | mu), normalised: the Gaussian of variance 1/2 adds (P / 2) log(pi) a row
    constant = 0.5 * x[0].numel() * math.log(math.pi) if kind == "gaussian" else 0.0
    assert result.baseline_error == pytest.approx(float(base) + constant, rel=1e-6)
    assert result.variables.tolist() == [0, 1, 2, 3]


def test_reconstruction_gain_subset_and_always_zero() -> None:
    model = _linear_model(ignored=())
    x = torch.as_tensor(_images())
    only = reconstruction_gain(model, x, variables=[1])
    assert only.variables.tolist() == [1] and only.gain.shape == (1,)
    silenced = reconstruction_gain(model, x, always_zero=[1])
    assert silenced.gain[1] == 0.0  # already zero in the baseline
    with torch.no_grad():
        mu, _ = model.encode(x)
        mu[:, 1] = 0
        base = reconstruction_error(model.decode(mu), x).double().mean()
    assert silenced.baseline_error == pytest.approx(float(base), rel=1e-6)


# ---------------------------------------------------------------------------- generation

def test_lowest_kl_active() -> None:
    kl = np.array([5.0, 0.0, 1.0, 3.0, 0.001, 2.0])
    active = np.array([True, False, True, True, False, True])
    assert lowest_kl_active(kl, active, 2).tolist() == [2, 5]
    assert lowest_kl_active(kl, active, 10).tolist() == [0, 2, 3, 5]
    assert lowest_kl_active(kl, active, 0).tolist() == []


def test_generation_check_ignored_variables_change_nothing() -> None:
    model = _linear_model(ignored=(2, 3))
    active = np.array([True, True, False, False])
    check = generation_check(model, active, kl_mean=np.array([2.0, 1.0, 0.0, 0.0]), n_samples=200, random_draws=5)
    assert check.inactive.tolist() == [2, 3] and check.control.tolist() == [0, 1]
    assert check.inactive_zeroed_mean_abs_diff == 0.0
    assert check.active_zeroed_mean_abs_diff > 0.05
    assert check.active_zeroed_random_mean_abs_diff is None  # both active ones are the control: no choice
    assert check.single_active_zeroed_mean_abs_diff > 0
    assert check.to_dict()["n_samples"] == 200


def test_generation_check_without_inactive_variables() -> None:
    check = generation_check(_linear_model(ignored=()), np.ones(4, bool), np.ones(4), n_samples=10)
    assert check.inactive_zeroed_mean_abs_diff == check.active_zeroed_mean_abs_diff == 0.0
    assert check.random_draws == 0


def test_generation_check_control_is_clamped_and_random_draws_when_there_is_a_choice() -> None:
    model = _linear_model(ignored=(3,), dim=5)
    active = np.array([True, True, True, False, True])
    kl = np.array([4.0, 1.0, 3.0, 0.0, 2.0])
    check = generation_check(model, active, kl, n_samples=100, random_draws=7)
    assert check.control.tolist() == [1] and check.random_draws == 7
    assert check.single_active_zeroed_mean_abs_diff == check.active_zeroed_mean_abs_diff
    assert check.active_zeroed_random_mean_abs_diff is not None and check.active_zeroed_random_mean_abs_diff > 0
    many = generation_check(_linear_model(ignored=(1, 2, 3), dim=4), np.array([True, False, False, False]),
                            np.ones(4), n_samples=50)
    assert many.control.tolist() == [0] and many.random_draws == 0


def test_generation_rows() -> None:
    full, zeroed = generation_rows(_linear_model(ignored=(3,)), np.array([True, True, True, False]), n=6)
    assert full.shape == zeroed.shape == (6, 1, 4, 4)
    np.testing.assert_array_equal(full, zeroed)


def test_zeroing_difference_is_zero_for_no_variables() -> None:
    assert zeroing_difference(_linear_model(), torch.randn(5, 4), []) == 0.0


# ---------------------------------------------------------------------------- a tiny trained VAE

def test_trained_model_with_an_ignored_variable(tiny_config, tiny_dataset, tmp_path) -> None:
    result = train(tiny_config, tmp_path / "run", dataset=tiny_dataset, progress=False)
    model = result.model
    with torch.no_grad():  # cut variable 1 off the decoder: its gain and generation effect must vanish
        first = model.decoder[0]
        first.weight[:, 1] = 0.0
    stats = latent_statistics(model, tiny_dataset.x_test)
    gain = reconstruction_gain(model, tiny_dataset.x_test, "bernoulli")
    assert gain.gain[1] == 0.0
    assert gain.gain.shape == (stats.latent_dim,)
    active = np.ones(stats.latent_dim, bool)
    active[1] = False
    check = generation_check(model, active, stats.kl_mean, n_samples=100)
    assert check.inactive_zeroed_mean_abs_diff == 0.0
    assert check.active_zeroed_mean_abs_diff > 0.0
