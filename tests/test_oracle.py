"""The linear VAE's closed form (probabilistic PCA) and the data with a known spectrum.

Known answers: a spectrum worked out by hand, the exact identities of probabilistic PCA at its
optimum (Tipping and Bishop, "Probabilistic Principal Component Analysis"; Lucas et al., "Don't Blame
the ELBO! A Linear VAE Perspective on Posterior Collapse"), an independent Gaussian density (torch's
MultivariateNormal), and a tiny linear VAE trained in plain PyTorch that must land on the prediction.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from vaescope import latent_statistics, load_dataset
from vaescope.core.errors import VaescopeError
from vaescope.data.linear import LinearSource, linear_gaussian_data, parse_linear_source
from vaescope.measures.oracle import (
    data_spectrum,
    expected_log_likelihood,
    gaussian_log_likelihood,
    linear_oracle,
    marginal_log_likelihood,
    optimal_decoder,
    optimal_encoder,
)
from vaescope.measures.oracle_comparison import collapse_thresholds, compare

# ---------------------------------------------------------------------------- the closed form by hand


def test_hand_computed_spectrum():
    # lambda = (4, 1, 0.25), sigma2 = 0.5, beta = 1, so s^2 = 0.5:
    #   active: 4 > 0.5, 1 > 0.5, 0.25 <= 0.5             -> (T, T, F)
    #   sigma^2 = s^2/lambda = 0.5/4, 0.5/1; inactive 1   -> (0.125, 0.5, 1)
    #   Var(mu) = 1 - sigma^2                             -> (0.875, 0.5, 0)
    #   KL = I = 1/2 ln(lambda/s^2) = 1/2 ln 8, 1/2 ln 2  -> (1.0397, 0.3466, 0)
    #   collapse beta = lambda/sigma2 = 4/0.5, 1/0.5, 0.25/0.5 -> (8, 2, 0.5)
    oracle = linear_oracle([4.0, 1.0, 0.25], sigma2=0.5, beta=1.0, latent_dim=3)
    assert oracle.noise_variance == 0.5
    assert oracle.active.tolist() == [True, True, False]
    assert oracle.inactive_count == 1
    np.testing.assert_allclose(oracle.sigma2_mean, [0.125, 0.5, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(oracle.mu_variance, [0.875, 0.5, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(oracle.kl, [0.5 * math.log(8), 0.5 * math.log(2), 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(oracle.mutual_information, oracle.kl, rtol=0, atol=0)
    np.testing.assert_allclose(oracle.collapse_beta, [8.0, 2.0, 0.5], rtol=0, atol=1e-15)
    # the JSON view carries the same numbers
    variables = json.loads(json.dumps(oracle.to_dict()))["variables"]
    assert [v["active"] for v in variables] == [True, True, False]
    assert variables[0]["sigma2_mean"] == 0.125 and variables[1]["collapse_beta"] == 2.0


def test_beta_raises_the_noise_and_collapses_at_the_threshold():
    # beta = 2 -> s^2 = 1: lambda = 4 stays active (sigma^2 = 1/4, Var(mu) = 3/4, KL = 1/2 ln 4);
    # lambda = 1 sits exactly at its threshold beta_2 = 1/0.5 = 2 and is inactive (strict lambda > s^2).
    oracle = linear_oracle([4.0, 1.0, 0.25], sigma2=0.5, beta=2.0)
    assert oracle.noise_variance == 1.0
    assert oracle.active.tolist() == [True, False, False]
    np.testing.assert_allclose(oracle.sigma2_mean, [0.25, 1.0, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(oracle.mu_variance, [0.75, 0.0, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(oracle.kl, [0.5 * math.log(4), 0.0, 0.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(oracle.collapse_beta, [8.0, 2.0, 0.5], rtol=0, atol=1e-15)  # beta does not move them


def test_latent_dim_beyond_the_spectrum_adds_inactive_variables_and_below_it_keeps_the_first():
    # lambda = (4, 1), latent_dim 4: the two extra variables have eigenvalue 0, inactive, threshold 0
    wide = linear_oracle([4.0, 1.0], sigma2=0.5, latent_dim=4)
    assert wide.latent_dim == 4
    assert wide.eigenvalues.tolist() == [4.0, 1.0, 0.0, 0.0]
    assert wide.active.tolist() == [True, True, False, False]
    np.testing.assert_allclose(wide.sigma2_mean, [0.125, 0.5, 1.0, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(wide.collapse_beta, [8.0, 2.0, 0.0, 0.0], rtol=0, atol=1e-15)
    # latent_dim 1 keeps lambda = 4 only
    narrow = linear_oracle([4.0, 1.0, 0.25], sigma2=0.5, latent_dim=1)
    assert narrow.eigenvalues.tolist() == [4.0] and narrow.mu_variance.tolist() == [0.875]
    # the optimal decoder of the wide case: column 1 = u_1 sqrt(4 - 0.5), column 2 = u_2 sqrt(1 - 0.5), then zeros
    u = np.eye(2)
    w = optimal_decoder(u, [4.0, 1.0], sigma2=0.5, latent_dim=4)
    np.testing.assert_allclose(w, [[math.sqrt(3.5), 0, 0, 0], [0, math.sqrt(0.5), 0, 0]], rtol=0, atol=1e-15)


@pytest.mark.parametrize(("call", "words"), [
    (lambda: linear_oracle([1.0, 4.0], 0.5), "not sorted"),
    (lambda: linear_oracle([4.0, -1.0], 0.5), "negative"),
    (lambda: linear_oracle([4.0, float("nan")], 0.5), "non-finite"),
    (lambda: linear_oracle([[4.0, 1.0]], 0.5), "1-D"),
    (lambda: linear_oracle([4.0, 1.0], 0.0), "sigma2"),
    (lambda: linear_oracle([4.0, 1.0], 0.5, beta=-1.0), "beta"),
    (lambda: linear_oracle([4.0, 1.0], 0.5, latent_dim=0), "latent_dim"),
    (lambda: optimal_decoder(np.eye(3), [4.0, 1.0], 0.5), "columns"),
    (lambda: gaussian_log_likelihood(np.zeros((2, 2)), np.zeros(2), np.diag([1.0, -1.0])), "positive definite"),
    (lambda: gaussian_log_likelihood(np.zeros((2, 2)), np.zeros(2), [[1.0, 0.5], [0.0, 1.0]]), "symmetric"),
    (lambda: gaussian_log_likelihood(np.zeros((2, 2)), np.zeros(3), np.eye(2)), "mean"),
])
def test_bad_input_gets_one_clear_line(call, words):
    with pytest.raises(VaescopeError, match=words) as info:
        call()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- exact identities at the optimum


def _data(spectrum, n=3000, seed=0):
    x, _ = linear_gaussian_data(spectrum, n, seed=seed)
    x = x.astype(np.float64)
    values, vectors = data_spectrum(x)
    return x, values, vectors


def test_optimal_encoder_obeys_the_variance_law_exactly_on_the_training_set():
    # Var(mu) computed from the matrices (mu = A (x - mean) over the very data) and the encoder's
    # variances must equal the oracle's formulas, and so sum to 1 per variable: two routes, one answer.
    x, values, vectors = _data([4.0, 2.0, 1.0, 0.3, 0.1])
    oracle = linear_oracle(values, sigma2=0.5, beta=1.0, latent_dim=5)
    a, variances = optimal_encoder(vectors, values, sigma2=0.5, beta=1.0, latent_dim=5)
    mu = (x - x.mean(0)) @ a.T
    np.testing.assert_allclose(mu.var(0), oracle.mu_variance, rtol=0, atol=1e-12)
    np.testing.assert_allclose(variances, oracle.sigma2_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mu.var(0) + variances, 1.0, rtol=0, atol=1e-12)
    # the mean KL over the data, from its definition, is 1/2 ln(lambda/s^2): the oracle's kl
    kl = 0.5 * (variances + (mu**2).mean(0) - 1.0 - np.log(variances))
    np.testing.assert_allclose(kl, oracle.kl, rtol=0, atol=1e-12)
    assert oracle.active.tolist() == [True, True, True, False, False]


def test_at_beta_1_the_elbo_of_the_optimum_equals_the_exact_log_likelihood():
    # The encoder is then the exact posterior, so the ELBO is tight for every single x:
    # ELBO = -D/2 ln(2 pi sigma2) - (|x - m - W mu|^2 + sum_j |w_j|^2 v_j) / (2 sigma2) - KL(N(mu, v) || N(0, I)).
    x, values, vectors = _data([4.0, 2.0, 1.0, 0.3])
    sigma2, dim = 0.5, x.shape[1]
    w = optimal_decoder(vectors, values, sigma2, 1.0, latent_dim=4)
    a, v = optimal_encoder(vectors, values, sigma2, 1.0, latent_dim=4)
    mean = x.mean(0)
    mu = (x - mean) @ a.T
    residual = x - mean - mu @ w.T
    expected_rec = -0.5 * dim * math.log(2 * math.pi * sigma2) - (
        (residual**2).sum(1) + np.sum((w**2).sum(0) * v)) / (2 * sigma2)
    kl = 0.5 * np.sum(v + mu**2 - 1.0 - np.log(v), axis=1)
    log_p = marginal_log_likelihood(x, mean, w, sigma2)
    np.testing.assert_allclose(expected_rec - kl, log_p, rtol=0, atol=1e-10)
    # and its average over the training set is the closed form E log p = -1/2 sum_j [ln(2 pi S_j) + lambda_j/S_j]
    assert expected_log_likelihood(values, sigma2, 1.0, latent_dim=4) == pytest.approx(log_p.mean(), abs=1e-10)


def test_gaussian_log_likelihood_by_hand_and_against_torch_multivariate_normal():
    # by hand: N(0; 0, I_2) = 1/(2 pi)  -> -ln(2 pi);
    # N((1, 2); 0, diag(1, 4)) -> -1/2 (1^2/1 + 2^2/4) - 1/2 ln(1 * 4) - ln(2 pi) = -1 - ln 2 - ln(2 pi)
    got = gaussian_log_likelihood(np.array([[0.0, 0.0], [1.0, 2.0]]), np.zeros(2), np.diag([1.0, 4.0]))
    assert got[1] == pytest.approx(-1.0 - math.log(2) - math.log(2 * math.pi), abs=1e-14)
    assert gaussian_log_likelihood(np.zeros((1, 2)), np.zeros(2), np.eye(2))[0] == pytest.approx(
        -math.log(2 * math.pi), abs=1e-14)
    # against torch's implementation on a random SPD covariance
    rng = np.random.default_rng(1)
    m = rng.standard_normal((5, 5))
    cov = m @ m.T + 0.1 * np.eye(5)
    mean = rng.standard_normal(5)
    x = rng.standard_normal((40, 5)) * 2
    reference = torch.distributions.MultivariateNormal(torch.tensor(mean), covariance_matrix=torch.tensor(cov))
    np.testing.assert_allclose(gaussian_log_likelihood(x, mean, cov), reference.log_prob(torch.tensor(x)).numpy(),
                               rtol=0, atol=1e-10)


def test_marginal_covariance_of_the_optimum_is_the_data_covariance_where_it_exceeds_the_noise():
    # Every lambda_j > sigma2 and latent_dim = D: W W^T + sigma2 I = U (Lambda - sigma2 + sigma2) U^T = C exactly.
    x, values, vectors = _data([4.0, 2.0, 1.0, 0.8])
    assert values[-1] > 0.5
    w = optimal_decoder(vectors, values, 0.5, 1.0, latent_dim=4)
    centred = x - x.mean(0)
    sample_cov = centred.T @ centred / len(x)
    np.testing.assert_allclose(w @ w.T + 0.5 * np.eye(4), sample_cov, rtol=0, atol=1e-12)
    # lambda = (4, 2, 1, 0.3, 0.1), sigma2 = 0.5: in the eigenbasis the model covariance is
    # diag(max(lambda_j, 0.5)): the data's variance in the 3 active directions, the noise in the other 2.
    x, values, vectors = _data([4.0, 2.0, 1.0, 0.3, 0.1])
    w = optimal_decoder(vectors, values, 0.5, 1.0, latent_dim=5)
    model = vectors.T @ (w @ w.T + 0.5 * np.eye(5)) @ vectors
    np.testing.assert_allclose(model, np.diag(np.maximum(values, 0.5)), rtol=0, atol=1e-12)


def test_data_spectrum_of_a_hand_made_set():
    # x = (+-1, 0), (0, +-2): the 1/N covariance is diag(2/4, 8/4) = diag(0.5, 2); sorted: 2 (axis 2), 0.5 (axis 1)
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    values, vectors = data_spectrum(x)
    np.testing.assert_allclose(values, [2.0, 0.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.abs(vectors), [[0.0, 1.0], [1.0, 0.0]], rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------- measured against predicted


def test_compare_matches_variables_by_measured_variance_and_gives_each_deviation():
    # oracle of (4, 1, 0.25), sigma2 0.5: Var(mu) (0.875, 0.5, 0), sigma^2 (0.125, 0.5, 1), KL (1/2 ln 8, 1/2 ln 2, 0).
    # The "VAE" lists its variables as (inactive, second, first): order by Var(mu) descending = (2, 1, 0).
    # Deviations: Var |0.9-0.875| = 0.025, |0.49-0.5| = 0.01, |0.001-0| = 0.001;
    # sigma^2 |0.1-0.125| = 0.025, |0.52-0.5| = 0.02, |0.99-1| = 0.01;
    # KL |1.0-1.039721| = 0.039721, |0.35-0.346574| = 0.003426, |0.002-0| = 0.002.
    oracle = linear_oracle([4.0, 1.0, 0.25], sigma2=0.5)
    measured = {"mu_variance": [0.001, 0.49, 0.9], "sigma2_mean": [0.99, 0.52, 0.1], "kl_mean": [0.002, 0.35, 1.0]}
    result = compare(measured, oracle)
    assert result.order.tolist() == [2, 1, 0]
    np.testing.assert_allclose(result.deviation["mu_variance"], [0.025, 0.01, 0.001], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.deviation["sigma2_mean"], [0.025, 0.02, 0.01], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.deviation["kl"], [0.5 * math.log(8) - 1.0, 0.35 - 0.5 * math.log(2), 0.002],
                               rtol=0, atol=1e-12)
    assert result.max_deviation["mu_variance"] == pytest.approx(0.025, abs=1e-12)
    assert result.max_deviation["kl"] == pytest.approx(0.5 * math.log(8) - 1.0, abs=1e-12)  # 0.039721
    assert "mutual_information" not in result.max_deviation  # not measured
    assert result.activity_agrees and result.measured_inactive_count == 1  # Var 0.001 < 0.01
    # with mi measured, it is compared too; a wrong activity is reported
    measured_mi = dict(measured, mi=[0.0, 0.3, 1.1], mu_variance=[0.02, 0.49, 0.9])
    result = compare(measured_mi, oracle)
    np.testing.assert_allclose(result.deviation["mutual_information"],
                               [1.1 - 0.5 * math.log(8), 0.5 * math.log(2) - 0.3, 0.0], rtol=0, atol=1e-12)
    assert not result.activity_agrees and result.measured_inactive_count == 0
    assert json.loads(json.dumps(result.to_dict()))["variables"][0]["measured_index"] == 2


def test_compare_rejects_a_measurement_of_another_size_or_without_a_quantity():
    oracle = linear_oracle([4.0, 1.0, 0.25], sigma2=0.5)
    with pytest.raises(VaescopeError, match="kl_mean"):
        compare({"mu_variance": [1, 0, 0], "sigma2_mean": [0, 1, 1]}, oracle)
    with pytest.raises(VaescopeError, match=r"shape \(2,\); expected \(3,\)"):
        compare({"mu_variance": [1, 0], "sigma2_mean": [0, 1], "kl_mean": [1, 0]}, oracle)


# ---------------------------------------------------------------------------- a trained linear VAE lands on the oracle

SPECTRUM = [4.0, 2.0, 1.0, 0.3, 0.1, 0.05]
SIGMA2 = 0.5  # s^2 = 0.5 with beta = 1: lambdas 4, 2, 1 active, 0.3, 0.1, 0.05 inactive


class LinearVAE(nn.Module):
    """mu = A x + a, one log-variance per variable, decoder W z + b: the model of Lucas et al."""

    def __init__(self, dim: int, latent_dim: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, latent_dim)
        self.logvar = nn.Parameter(torch.zeros(latent_dim))
        self.decoder = nn.Linear(latent_dim, dim)
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.encoder(x)
        return mu, self.logvar.expand_as(mu)


def _train(x: np.ndarray, steps: int, lr: float, sampled: bool, seed: int = 0) -> tuple[LinearVAE, float]:
    """Full-batch Adam, learning rate decayed linearly to 0; returns the model and its final mean ELBO
    (with the Gaussian's normaliser, nats per example)."""
    torch.manual_seed(seed)
    model = LinearVAE(x.shape[1], x.shape[1])
    data = torch.as_tensor(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1.0 - t / steps)
    for _ in range(steps + 1):
        mu, logvar = model.encode(data)
        if sampled:  # one reparameterised sample, as a VAE is usually trained
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            squared = (data - model.decoder(z)).square().sum(1)
        else:  # E_q |x - W z - b|^2 = |x - W mu - b|^2 + sum_j |w_j|^2 sigma_j^2, exactly
            squared = (data - model.decoder(mu)).square().sum(1) + (
                model.decoder.weight.square().sum(0) * logvar.exp()).sum(1)
        kl = 0.5 * (mu.square() + logvar.exp() - logvar - 1.0).sum(1)
        loss = (squared / (2 * SIGMA2) + kl).mean()
        if _ == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    elbo = -float(loss.detach()) - 0.5 * x.shape[1] * math.log(2 * math.pi * SIGMA2)
    return model, elbo


def test_a_trained_linear_vae_reaches_the_closed_form():
    x, _ = linear_gaussian_data(SPECTRUM, 4000, seed=0)
    values, vectors = data_spectrum(x)  # the VAE fits its training set: the sample spectrum, 1/N
    oracle = linear_oracle(values, SIGMA2, beta=1.0, latent_dim=6)
    assert oracle.inactive_count == 3
    model, elbo = _train(x, steps=600, lr=0.1, sampled=False)
    stats = latent_statistics(model, x)
    result = compare(stats, oracle)
    # Measured: with the exact expected reconstruction, 600 steps reach every quantity within 9e-6
    # (float32, data seeds 0-3 x init seeds 0-2; 300 steps leave up to 4e-2 where the rotation between the
    # two leading variables is still turning). Tolerance 1e-4.
    assert result.max_deviation["mu_variance"] < 1e-4
    assert result.max_deviation["sigma2_mean"] < 1e-4
    assert result.max_deviation["kl"] < 1e-4
    assert stats.inactive_count == 3 and result.activity_agrees
    # the decoder is the optimum up to a rotation: W W^T is unique
    w = model.decoder.weight.detach().double().numpy()
    w_star = optimal_decoder(vectors, values, SIGMA2, 1.0, latent_dim=6)
    np.testing.assert_allclose(w @ w.T, w_star @ w_star.T, rtol=0, atol=1e-4)
    # and the ELBO is the best possible: the exact average log-likelihood (within 1e-4 nats, measured ~1e-6)
    assert elbo == pytest.approx(expected_log_likelihood(values, SIGMA2, 1.0, latent_dim=6), abs=1e-4)


def test_a_linear_vae_trained_with_sampled_latents_lands_near_the_closed_form():
    x, _ = linear_gaussian_data(SPECTRUM, 4000, seed=0)
    oracle = linear_oracle(data_spectrum(x)[0], SIGMA2, beta=1.0, latent_dim=6)
    model, _ = _train(x, steps=600, lr=0.05, sampled=True)
    result = compare(latent_statistics(model, x), oracle)
    # Measured: one reparameterised sample per step, 600 steps of Adam from lr 0.05 decayed to 0: at most
    # 8.6e-3 on Var(mu), 4e-3 on sigma^2, 6.2e-3 nats on KL (data seeds 0-3 x init seeds 0-2). Tolerance 0.03.
    assert result.max_deviation["mu_variance"] < 0.03
    assert result.max_deviation["sigma2_mean"] < 0.03
    assert result.max_deviation["kl"] < 0.03
    assert result.measured_inactive_count == 3 and result.activity_agrees


# ---------------------------------------------------------------------------- data with a known spectrum


def test_linear_data_has_the_spectrum_within_the_sampling_error():
    # In the eigenbasis Q the sample covariance (1/N, known zero mean would give the same up to 1/N) has
    # entries with standard deviation sqrt((lambda_i lambda_j + [i == j] lambda_i lambda_j) / N) for a Gaussian
    # (Var of a sample covariance: (C_ii C_jj + C_ij^2) / N). Check every entry within 5 of them.
    spectrum = [4.0, 2.0, 1.0, 0.5]
    n = 20000
    x, q = linear_gaussian_data(spectrum, n, dim=6, seed=3)
    assert x.shape == (n, 6) and x.dtype == np.float32
    np.testing.assert_allclose(q.T @ q, np.eye(6), rtol=0, atol=1e-12)
    y = x.astype(np.float64) @ q
    cov = y.T @ y / n
    lam = np.array(spectrum + [0.0, 0.0])
    sd = np.sqrt((np.outer(lam, lam) + np.diag(lam**2)) / n)
    assert np.all(np.abs(cov - np.diag(lam)) <= 5 * sd + 1e-6)
    # the two dimensions beyond the spectrum carry nothing (float32 rounding only)
    assert np.abs(y[:, 4:]).max() < 1e-5


def test_linear_data_is_deterministic_per_seed_and_prefix_stable():
    a, qa = linear_gaussian_data([2.0, 1.0], 10, seed=5)
    b, qb = linear_gaussian_data([2.0, 1.0], 25, seed=5)
    np.testing.assert_array_equal(a, b[:10])  # a larger n adds points after the same ones
    np.testing.assert_array_equal(qa, qb)
    c, qc = linear_gaussian_data([2.0, 1.0], 10, seed=6)
    assert not np.allclose(qa, qc) and not np.allclose(a, c)
    with pytest.raises(VaescopeError, match="descending"):
        linear_gaussian_data([1.0, 2.0], 10)
    with pytest.raises(VaescopeError, match="dim"):
        linear_gaussian_data([2.0, 1.0, 0.5], 10, dim=2)


def test_parse_linear_source():
    source = parse_linear_source("synthetic:linear=4,2,1,0.3")
    assert source == LinearSource(spectrum=(4.0, 2.0, 1.0, 0.3), dim=4, n=10000, test=2000, seed=0)
    # "0.1x3" repeats 0.1 three times; options follow the spectrum
    source = parse_linear_source("synthetic:linear=4,2,0.1x3,dim=8,n=500,test=100,seed=7")
    assert source.spectrum == (4.0, 2.0, 0.1, 0.1, 0.1)
    assert (source.dim, source.n, source.test, source.seed) == (8, 500, 100, 7)
    assert source.eigenvalues.tolist() == [4.0, 2.0, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0]
    assert source.source == "synthetic:linear=4,2,0.1,0.1,0.1,dim=8,n=500,test=100,seed=7"
    x_train, x_test, vectors = source.draw()
    assert x_train.shape == (500, 8) and x_test.shape == (100, 8) and vectors.shape == (8, 8)
    whole, _ = linear_gaussian_data(source.spectrum, 600, dim=8, seed=7)
    np.testing.assert_array_equal(x_test, whole[500:])


@pytest.mark.parametrize(("text", "words"), [
    ("synthetic:factors=3", "not a linear source"),
    ("synthetic:linear=", "not a number"),
    ("synthetic:linear=4,two", "not a number"),
    ("synthetic:linear=1,4", "not descending"),
    ("synthetic:linear=4,2,dim=1", "dim"),
    ("synthetic:linear=4,2,seed=1,1", "after an option"),
    ("synthetic:linear=4,2,size=3", "unknown option"),
    ("synthetic:linear=4,2,n=0", "n="),
    ("synthetic:linear=4,2,n=5,n=6", "twice"),
])
def test_parse_linear_source_errors(text, words):
    with pytest.raises(VaescopeError, match=words) as info:
        parse_linear_source(text)
    assert "\n" not in str(info.value)


def test_the_spectrum_of_an_npz_and_the_dataset_of_a_linear_source(tmp_path):
    # 2x2 images whose first two pixels are (0.5 -+ 0.5, 0.5) and (0.5, 0.5 -+ 0.25), the others 0:
    # 1/N covariance diag(0.5^2 * 2/4, 0.25^2 * 2/4, 0, 0) = diag(0.125, 0.03125, 0, 0)
    x = np.array([[0.0, 0.5, 0, 0], [1.0, 0.5, 0, 0], [0.5, 0.25, 0, 0], [0.5, 0.75, 0, 0]], dtype=np.float32)
    path = tmp_path / "four.npz"
    np.savez(path, x_train=x.reshape(4, 2, 2), x_test=x[:2].reshape(2, 2, 2))
    source = parse_linear_source(f"synthetic:linear={path},n=50,test=10,seed=2")
    np.testing.assert_allclose(source.spectrum, [0.125, 0.03125, 0.0, 0.0], rtol=0, atol=1e-12)
    assert source.file == str(path) and source.dim == 4
    assert parse_linear_source(source.source) == source  # the canonical string names the file
    with pytest.raises(VaescopeError, match="either a file or eigenvalues"):
        parse_linear_source(f"synthetic:linear={path},3")
    # through the ordinary entry point: vectors (n, dim), the draw of linear_gaussian_data
    data = load_dataset("synthetic:linear=4,2,1,dim=5,n=300,test=40,seed=1")
    assert data.x_train.shape == (300, 5) and data.x_test.shape == (40, 5) and data.y_train is None
    whole, _ = linear_gaussian_data([4.0, 2.0, 1.0], 340, dim=5, seed=1)
    np.testing.assert_array_equal(data.x_train, whole[:300])
    np.testing.assert_array_equal(data.x_test, whole[300:])


def test_collapse_thresholds_read_from_active_counts():
    # lambda = (4, 1, 0.25), sigma2 = 0.5: predicted beta_j = 8, 2, 0.5.
    # Swept betas 0.25, 1, 4, 16 with median active counts 3, 2, 1, 0 (the closed form's own counts):
    #   variable 0: active up to 4, off at 16 -> (4, 16], 8 inside; variable 1: (1, 4], 2 inside;
    #   variable 2: (0.25, 1], 0.5 inside.
    counts = {1.0: [2, 2], 0.25: [3], 4.0: [1, 1, 2], 16.0: [0]}
    rows = collapse_thresholds(counts, [4.0, 1.0, 0.25], sigma2=0.5)
    assert [(r["low"], r["high"]) for r in rows] == [(4.0, 16.0), (1.0, 4.0), (0.25, 1.0)]
    assert [r["predicted"] for r in rows] == [8.0, 2.0, 0.5]
    assert all(r["agrees"] and r["consistent"] for r in rows)
    # a variable that collapses too early: counts 3, 1, 1, 0 put variable 1's threshold in (0.25, 1], not at 2
    rows = collapse_thresholds({0.25: [3], 1.0: [1], 4.0: [1], 16.0: [0]}, [4.0, 1.0, 0.25], sigma2=0.5)
    assert (rows[1]["low"], rows[1]["high"], rows[1]["agrees"]) == (0.25, 1.0, False)
    # never collapsed within the sweep: (largest beta, None); never active: (None, smallest beta)
    rows = collapse_thresholds({0.25: [2], 1.0: [1]}, [4.0, 1.0, 0.25], sigma2=0.5)
    assert (rows[0]["low"], rows[0]["high"]) == (1.0, None)
    assert (rows[2]["low"], rows[2]["high"], rows[2]["agrees"]) == (None, 0.25, False)  # 0.5 > 0.25: should be active
