"""Ex-post samplers: the Gaussian mixture (scikit-learn) and its draws against the mixture's own
moments, the second stage (Dai & Wipf 2019) on Gaussian codes, the codes of the active variables,
and ``generate`` end to end (fitted once, loaded again, the caller's random state untouched)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_OVERRIDES
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError
from vaescope.generative.samplers import SamplerSettings, fitted_sampler, generate, write_samples
from vaescope.measures.sampling import (
    GaussianMixtureFit,
    fit_gaussian_mixture,
    full_codes,
    sample_gaussian_mixture,
)
from vaescope.models.isolation import rng_fingerprint
from vaescope.training.train import train
from vaescope.training.two_stage import SecondStageSettings, second_stage_codes, train_second_stage


def test_the_mixture_finds_two_separated_clusters():
    rng = np.random.default_rng(0)
    codes = np.concatenate([rng.normal(-5, 0.5, (300, 2)), rng.normal(5, 1.0, (700, 2))])
    fit = fit_gaussian_mixture(codes, components=2, seed=0)
    order = np.argsort(fit.means[:, 0])
    np.testing.assert_allclose(fit.weights[order], [0.3, 0.7], atol=1e-9)  # every point in its own cluster
    np.testing.assert_allclose(fit.means[order], [[-5, -5], [5, 5]], atol=0.15)  # 4 standard errors of 300 points
    np.testing.assert_allclose(fit.covariances[order[1]], np.eye(2), atol=0.15)
    assert fit.converged


def test_mixture_draws_have_the_mixtures_moments():
    fit = GaussianMixtureFit(np.array([0.25, 0.75]), np.array([[0.0, 2.0], [4.0, 0.0]]),
                             np.array([[[1.0, 0.5], [0.5, 2.0]], [[0.5, 0.0], [0.0, 0.25]]]), True, 1)
    draws = sample_gaussian_mixture(fit, 200_000, seed=1)
    mean = (fit.weights[:, None] * fit.means).sum(0)                          # sum_c w_c m_c
    second = sum(w * (c + np.outer(m, m)) for w, m, c in zip(fit.weights, fit.means, fit.covariances))
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.02)               # ~5 standard errors
    np.testing.assert_allclose(np.cov(draws, rowvar=False), second - np.outer(mean, mean), atol=0.05)
    np.testing.assert_array_equal(draws, sample_gaussian_mixture(fit, 200_000, seed=1))  # a seed, the same draws


def test_codes_of_the_active_variables_leave_the_others_at_zero():
    z = full_codes(np.array([False, True, False, True]), np.array([[1.0, 2.0], [3.0, 4.0]]), 4)
    torch.testing.assert_close(z, torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 3.0, 0.0, 4.0]]))
    with pytest.raises(VaescopeError, match="one column per active variable"):
        full_codes(np.array([True, False]), np.zeros((2, 2)), 2)


def test_the_second_stage_learns_the_mean_of_gaussian_codes():
    """Codes from N(m, C): the second stage's codes have mean m (a short fit: its covariance is
    still far from the pPCA optimum C - gamma^2 I; docs/results/objectives.md says so)."""
    generator = torch.Generator().manual_seed(0)
    c = torch.tensor([[1.0, 0.6], [0.6, 0.5]])
    m = torch.tensor([0.5, -1.0])
    codes = m + torch.randn(1000, 2, generator=generator) @ torch.linalg.cholesky(c).T
    stage = train_second_stage(codes, SecondStageSettings(hidden=(16, 16), epochs=8, batch_size=32, seed=0))
    assert stage.losses[-1] < stage.losses[0]
    drawn = second_stage_codes(stage.model, 20_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(drawn.mean(0), m, atol=0.1, rtol=0)  # 3 standard errors of 1000 codes
    with pytest.raises(VaescopeError, match="active variable"):
        train_second_stage(torch.zeros(10, 0))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_npz):
    from conftest import make_images
    from vaescope.data.dataset import Dataset

    x_train, y_train = make_images(512, 0)
    x_test, y_test = make_images(128, 1)
    data = Dataset("tiny", x_train[:, None], y_train, x_test[:, None], y_test)
    config = config_mod.resolve("dense16", overrides=TINY_OVERRIDES + [f"data.source={tiny_npz}", "train.epochs=8",
                                                                  "train.batch_size=16"])
    out = tmp_path_factory.mktemp("gen") / "run"
    train(config, out, dataset=data, progress=False)
    return out, data


SMALL = SamplerSettings(components=4, codes=400, second_stage=SecondStageSettings(hidden=(16, 16), epochs=3))


@pytest.mark.parametrize("kind", ["prior", "gmm", "two-stage"])
def test_generate_fits_once_and_changes_no_random_state(tiny_run, kind, tmp_path):
    run, data = tiny_run
    before = rng_fingerprint()
    images, sampler = generate(run, kind, 50, seed=3, settings=SMALL, dataset=data)
    assert rng_fingerprint() == before
    assert images.shape == (50, 1, 8, 8)
    again, _ = generate(run, kind, 50, seed=3, settings=SMALL, dataset=data)
    assert torch.equal(images, again)
    other, _ = generate(run, kind, 50, seed=4, settings=SMALL, dataset=data)
    assert not torch.equal(images, other)
    if kind != "prior":
        path = run / "samplers" / f"{kind}-seed0.safetensors"
        assert path.is_file()
        assert fitted_sampler(run, kind, SMALL, data).info["seconds"] == sampler.info["seconds"]  # loaded, not refit
        active = sampler.active
        assert 0 < active.sum() < len(active)  # the tiny run has inactive variables: they stay at 0
    files = write_samples(images, tmp_path / kind, {"sampler": kind})
    torch.testing.assert_close(load_file(files[0])["images"], images)
    assert json.loads(files[2].read_text())["n"] == 50
    assert files[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gmm_codes_zero_the_inactive_variables(tiny_run):
    run, data = tiny_run
    sampler = fitted_sampler(run, "gmm", SMALL, data)
    z = sampler.codes(100, seed=0)
    assert torch.count_nonzero(z[:, torch.from_numpy(~sampler.active)]) == 0
    assert torch.count_nonzero(z[:, torch.from_numpy(sampler.active)]) == 100 * int(sampler.active.sum())


def test_an_unknown_sampler_is_one_line(tiny_run):
    run, data = tiny_run
    with pytest.raises(VaescopeError, match="use one of: prior, gmm, two-stage"):
        generate(run, "flow", 5, dataset=data)
