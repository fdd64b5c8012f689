"""The Gaussian decoder's variance (loss.objective): fixed, balanced (Asperti & Trentin 2020),
optimal and learned (Rybkin et al. 2021). Known answers: the balanced gamma^2 recomputed by hand
from the same batches, the closed-form optimum of the variance, resume against no interruption,
a stacked group against its separate runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import TINY_OVERRIDES
from vaescope.core import config as config_mod
from vaescope.core.config import LossConfig, replace
from vaescope.core.errors import VaescopeError
from vaescope.models.networks import DenseVAE
from vaescope.models.objectives import (
    DecoderVariance,
    gaussian_reconstruction,
    log_likelihood,
    loss_terms,
    optimal_variance,
)
from vaescope.runs.checkpoint import load_run
from vaescope.runs.variance import read_record
from vaescope.training import train as train_mod
from vaescope.training.engine import make_optimizer, train_epoch
from vaescope.training.multi import train_many
from vaescope.training.train import train

QUIET = {"progress": False}


def gaussian_config(tiny_npz, objective: str, *extra: str) -> config_mod.Config:
    return config_mod.resolve("dense16", overrides=TINY_OVERRIDES + [
        f"data.source={tiny_npz}", "loss.reconstruction=gaussian", f"loss.objective={objective}", *extra])


def test_gaussian_reconstruction_is_the_normal_density():
    error = torch.tensor([3.0, 0.5], dtype=torch.float64)
    pixels, variance = 4, 0.3
    # -log N(x; m, v I) = |x - m|^2 / (2 v) + (P / 2) log(2 pi v); ours drops (P / 2) log(pi)
    expected = error / (2 * variance) + 0.5 * pixels * math.log(2 * math.pi * variance) - 0.5 * pixels * math.log(math.pi)
    torch.testing.assert_close(gaussian_reconstruction(error, variance, pixels), expected)
    assert torch.equal(gaussian_reconstruction(error, 0.5, pixels), error)  # vaescope's "gaussian": the squared error
    x, mean = torch.rand(2, 4, dtype=torch.float64), torch.rand(2, 4, dtype=torch.float64)
    logits = torch.logit(mean)
    reference = torch.distributions.Normal(mean, math.sqrt(variance)).log_prob(x).sum(1)
    torch.testing.assert_close(log_likelihood(logits, x, "gaussian", variance=variance), reference)


def test_optimal_variance_is_the_batch_mse_and_minimises_the_loss():
    error = torch.tensor([2.0, 4.0, 9.0], dtype=torch.float64)  # squared errors of 3 images of 10 pixels
    pixels = 10
    mse = 15.0 / 30.0
    # exact up to the soft floor at log variance -12: softplus(log 0.5 + 12) - (log 0.5 + 12) = 1.1e-5
    assert float(optimal_variance(error, pixels)) == pytest.approx(mse, rel=2e-5)
    grid = torch.linspace(0.05, 3.0, 600, dtype=torch.float64)
    losses = torch.stack([gaussian_reconstruction(error, v, pixels).mean() for v in grid])
    assert float(grid[losses.argmin()]) == pytest.approx(mse, abs=3.0 / 600)
    at_optimum = gaussian_reconstruction(error, optimal_variance(error, pixels), pixels).mean()
    assert float(at_optimum) <= float(losses.min()) + 1e-9


def test_the_learned_variance_converges_to_the_batch_mse():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 4, 4)
    logits = torch.randn(32, 1, 4, 4)
    loss = LossConfig(reconstruction="gaussian", objective="learned-variance", variance=1.0)
    variance = DecoderVariance(loss)
    optimizer = torch.optim.Adam(variance.parameters(), lr=0.05)
    error = (torch.sigmoid(logits) - x).square().flatten(1).sum(1)
    for _ in range(2000):
        optimizer.zero_grad()
        gaussian_reconstruction(error, variance.variance(error, 16), 16).mean().backward()
        optimizer.step()
    batch_mse = float(((torch.sigmoid(logits) - x) ** 2).mean())
    assert variance.current() == pytest.approx(batch_mse, rel=1e-3)


def test_balanced_gamma_is_the_running_mse_of_the_same_batches(tiny_dataset):
    """Full-batch steps without sampling: the MSE of each step is computed here, by hand, from a
    copy of the model before the step, and gamma^2 follows min(g, 0.99 g + 0.01 MSE) from 1."""
    torch.manual_seed(0)
    model = DenseVAE((1, 8, 8), (32, 16), 4)
    loss = LossConfig(reconstruction="gaussian", objective="balanced", variance=1.0, balance_rate=0.01, sampling=False)
    variance = DecoderVariance(loss)
    optimizer = make_optimizer(model, 1e-2)
    x = torch.from_numpy(tiny_dataset.x_train[:64]).float() / 255.0
    gamma2, gammas, step = 1.0, [], 0
    for _ in range(30):
        with torch.no_grad():
            mean = torch.sigmoid(model.decoder(model.encoder(x).chunk(2, dim=1)[0]))
            mse = float(((mean.double() - x.double()) ** 2).mean())
        used = gamma2
        expected_loss = None
        with torch.no_grad():
            terms = loss_terms(model, x, loss, variance=variance)
            expected_loss = float(((mean - x) ** 2).flatten(1).sum(1).mean() / (2 * used) + 32 * math.log(2 * used)
                                  + float(terms.regularizer.sum(1).mean()))
        step, means = train_epoch(model, optimizer, x, loss, 64, torch.Generator().manual_seed(0),
                                  torch.Generator(), step, variance=variance)
        assert means["loss"] == pytest.approx(expected_loss, rel=1e-5)
        gamma2 = min(gamma2, 0.99 * gamma2 + 0.01 * mse)
        gammas.append(gamma2)
        assert float(variance.gamma2) == pytest.approx(gamma2, rel=1e-6)
    history = variance.history().numpy()
    np.testing.assert_allclose(history[:, 0], [1.0] + gammas[:-1], rtol=1e-6)  # each step scored with the gamma before it
    assert gammas[-1] < 0.93  # it moved: 30 steps of weight 0.01 towards an MSE near 0.1


def test_a_stateful_objective_needs_its_state():
    loss = LossConfig(reconstruction="gaussian", objective="balanced")
    with pytest.raises(ValueError, match="keeps a state"):
        loss_terms(DenseVAE((1, 2, 2), (3,), 2), torch.rand(2, 1, 2, 2), loss)


@pytest.mark.parametrize("text, fix", [
    ("loss.objective=balanced", "set loss.reconstruction = 'gaussian'"),
    ("loss.objective=sigma", "use one of: elbo, balanced"),
    ("loss.variance=0", "give a positive variance"),
    ("loss.balance_rate=1.5", "give a weight in (0, 1]"),
])
def test_bad_objective_keys_are_one_line(text, fix):
    with pytest.raises(VaescopeError, match=fix.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        config_mod.resolve("dense16", overrides=[text])


@pytest.mark.parametrize("objective", ["balanced", "learned-variance"])
def test_resume_gives_the_same_gamma_as_no_interruption(tmp_path, tiny_npz, tiny_dataset, monkeypatch, objective):
    config = gaussian_config(tiny_npz, objective, "loss.variance=1.0")
    train(config, tmp_path / "whole", dataset=tiny_dataset, **QUIET)
    real_save = train_mod.save_checkpoint
    calls = []

    def interrupt_after_first(*args, **kwargs):
        path = real_save(*args, **kwargs)
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", dataset=tiny_dataset, **QUIET)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    train(config, tmp_path / "cut", resume=True, dataset=tiny_dataset, **QUIET)
    for name in ("objective.csv", "model.safetensors", "metrics.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
    whole = read_record(tmp_path / "whole")
    steps = int(whole.steps[-1])
    assert len(whole.variance) == steps == 3 * 8  # 3 epochs of 512 / 64 batches
    assert load_run(tmp_path / "cut").decoder_variance == load_run(tmp_path / "whole").decoder_variance


def test_a_stacked_group_keeps_each_models_variance(tmp_path, tiny_npz, tiny_dataset):
    configs = [gaussian_config(tiny_npz, "learned-variance", f"train.seed={s}") for s in (0, 1)]
    configs.append(gaussian_config(tiny_npz, "balanced", "train.seed=0"))
    train_many(configs, [tmp_path / f"group{i}" for i in range(3)], dataset=tiny_dataset, **QUIET)
    for i, config in enumerate(configs):
        train(config, tmp_path / f"alone{i}", dataset=tiny_dataset, **QUIET)
        alone, grouped = read_record(tmp_path / f"alone{i}"), read_record(tmp_path / f"group{i}")
        np.testing.assert_allclose(grouped.variance, alone.variance, rtol=1e-5)  # test_multi's tolerance
        np.testing.assert_allclose(grouped.batch_mse, alone.batch_mse, rtol=1e-5)
    first, second = read_record(tmp_path / "group0"), read_record(tmp_path / "group1")
    assert not np.allclose(first.batch_mse, second.batch_mse)  # two seeds: two models, not one copied


def test_the_final_variance_goes_with_the_weights(tmp_path, tiny_npz, tiny_dataset):
    for objective, start in (("elbo", 0.25), ("optimal-variance", 0.5)):
        config = gaussian_config(tiny_npz, objective, f"loss.variance={start}")
        train(config, tmp_path / objective, dataset=tiny_dataset, **QUIET)
        run = load_run(tmp_path / objective)
        record = read_record(tmp_path / objective)
        if objective == "elbo":
            assert run.decoder_variance == 0.25 and set(record.variance) == {0.25}
        else:  # the running mean of the batches' MSE, bias-corrected, recomputed from the record
            weights = 0.99 ** np.arange(len(record.batch_mse))[::-1]
            expected = float((weights * record.batch_mse).sum() / weights.sum())
            assert run.decoder_variance == pytest.approx(expected, rel=1e-9)
            np.testing.assert_allclose(record.variance, record.batch_mse, rtol=2e-4)  # each batch's own MSE
    bernoulli = replace(config, **{"loss.reconstruction": "bernoulli", "loss.objective": "elbo"})
    train(bernoulli, tmp_path / "bce", dataset=tiny_dataset, **QUIET)
    assert load_run(tmp_path / "bce").decoder_variance is None
    assert not (tmp_path / "bce" / "objective.csv").exists()
