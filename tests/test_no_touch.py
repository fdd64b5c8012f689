"""The instrument never touches what it measures: every analysis, on a model with BatchNorm and Dropout in
train mode (and one with a BatchNorm the user froze in eval inside a train-mode parent), leaves every
parameter, buffer, gradient, per-module mode and the global random states as they were, and two calls give
the same numbers. The control at the end shows the fingerprint sees a plain forward's changes."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vaescope.measures.bound import importance_weighted_bound
from vaescope.measures.criteria import criteria_table
from vaescope.measures.effects import variable_effects
from vaescope.measures.gains import reconstruction_gain
from vaescope.measures.generation import decode_means, generation_check, generation_rows
from vaescope.measures.information import encode_all, mutual_information
from vaescope.measures.reading import decoder
from vaescope.measures.statistics import latent_statistics
from vaescope.models.adapters import as_latent_model
from vaescope.models.isolation import model_fingerprint, rng_fingerprint

D_IN, D_LAT = 6, 3


class Net(nn.Module):
    """A VAE on vectors in [0, 1] with BatchNorm and Dropout in its encoder and decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.latent_dim = D_LAT
        self.enc = nn.Sequential(nn.Linear(D_IN, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(16, 2 * D_LAT))
        self.dec = nn.Sequential(nn.Linear(D_LAT, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                                 nn.Linear(16, D_IN))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)  # Bernoulli logits (B, D_IN)


def make(frozen: bool) -> Net:
    torch.manual_seed(0)
    model = Net()
    model.train()
    if frozen:  # the user froze the decoder's BatchNorm inside a parent that trains
        model.dec[1].eval()
    # a step or two of BatchNorm statistics, so the running buffers are not at their initial values
    model.enc(torch.rand(32, D_IN))
    return model


DATA = torch.rand(120, D_IN, generator=torch.Generator().manual_seed(3))
LOADER = DataLoader(TensorDataset(DATA, torch.zeros(len(DATA))), batch_size=50)  # (x, y) batches


def stats_numbers(model: nn.Module, data=DATA):
    s = latent_statistics(model, data, batch_size=40)
    return np.concatenate([s.mu_variance, s.sigma2_mean, s.kl_mean])


ANALYSES = {
    "latent_statistics": stats_numbers,
    "latent_statistics(DataLoader)": lambda m: stats_numbers(m, LOADER),
    "criteria": lambda m: np.concatenate([
        criteria_table(latent_statistics(m, DATA), mutual_information(m, DATA).per_variable,
                       reconstruction_gain(m, DATA).gain).verdicts["mu_variance@0.01"].astype(float)]),
    "mutual_information": lambda m: np.r_[mutual_information(m, LOADER, samples=2, seed=4).joint,
                                          mutual_information(m, DATA, seed=4).per_variable],
    "mutual_information(subsample)": lambda m: np.r_[mutual_information(m, DATA, max_points=50, seed=1).joint],
    "importance_weighted_bound": lambda m: importance_weighted_bound(m, LOADER, ks=(1, 10), seed=2).bounds,
    "reconstruction_gain": lambda m: reconstruction_gain(m, DATA, batch_size=33).gain,
    "generation_check": lambda m: np.r_[generation_check(m, np.array([True, False, True]), np.ones(3),
                                                         n_samples=40, seed=5).inactive_zeroed_mean_abs_diff],
    "generation_rows": lambda m: generation_rows(m, np.array([True, True, False]), n=4, seed=6)[1],
    "decode_means": lambda m: decode_means(m, torch.ones(5, D_LAT)).numpy(),
    "variable_effects": lambda m: variable_effects(decoder(as_latent_model(m)), np.zeros(D_LAT)).effect,
    "encode_all": lambda m: encode_all(m, LOADER)[0].numpy(),
}


@pytest.fixture(autouse=True)
def global_streams():
    """Global generators at a known state, so that a draw from them would show in their fingerprint."""
    torch.manual_seed(11)
    np.random.seed(11)
    random.seed(11)


@pytest.mark.parametrize("frozen", [False, True], ids=["train-mode", "frozen-batchnorm"])
@pytest.mark.parametrize("name", list(ANALYSES))
def test_every_analysis_leaves_model_and_random_states_as_they_were(name: str, frozen: bool) -> None:
    model = make(frozen)
    before, streams = model_fingerprint(model), rng_fingerprint()
    first = ANALYSES[name](model)
    assert model_fingerprint(model) == before
    assert rng_fingerprint() == streams
    assert [m.training for m in model.modules()] == [m.training for m in make(frozen).modules()]
    second = ANALYSES[name](model)
    np.testing.assert_array_equal(first, second)  # Dropout off, BatchNorm on its running statistics


def test_inspect_and_the_monitor_leave_the_model_as_it_was(tmp_path) -> None:
    from vaescope.inspection import inspect
    from vaescope.integrations.monitor import LatentMonitor

    model = make(frozen=True)
    before, streams = model_fingerprint(model), rng_fingerprint()
    first = inspect(model, DATA, tmp_path / "a", samples=20, mi_images=60, batch_size=50).results
    monitor = LatentMonitor(model, LOADER, every=1, tensorboard=False)
    recorded = [monitor.step(s).mu_variance for s in (1, 2)]
    assert model_fingerprint(model) == before and rng_fingerprint() == streams
    second = inspect(model, DATA, tmp_path / "b", samples=20, mi_images=60, batch_size=50).results
    assert first["statistics"] == second["statistics"] and first["criteria"] == second["criteria"]
    assert first["generation"] == second["generation"]
    np.testing.assert_array_equal(recorded[0], recorded[1])


def test_control_a_plain_forward_changes_what_the_fingerprint_sees() -> None:
    model = make(frozen=True)
    before, streams = model_fingerprint(model), rng_fingerprint()
    mu, _ = model.encode(DATA)  # train mode: BatchNorm updates its running statistics, Dropout draws
    after = model_fingerprint(model)
    assert after["buffers"]["enc.1.num_batches_tracked"] != before["buffers"]["enc.1.num_batches_tracked"]
    assert rng_fingerprint()["torch"] != streams["torch"]
    assert not torch.equal(mu, model.encode(DATA)[0])  # two train-mode calls differ


def test_run_measures_leave_the_random_states_as_they_were(tiny_config, tmp_path) -> None:
    from vaescope.measures.run import run_measures
    from vaescope.training.train import train

    train(tiny_config, tmp_path / "run", progress=False)
    streams = rng_fingerprint()
    first = run_measures(tmp_path / "run", mutual_information=True, iwae_ks=(1, 4), iwae_images=16, write=False)
    assert rng_fingerprint() == streams
    second = run_measures(tmp_path / "run", mutual_information=True, iwae_ks=(1, 4), iwae_images=16, write=False)
    assert first.to_dict()["criteria"] == second.to_dict()["criteria"]
    np.testing.assert_array_equal(first.iwae_bound.bounds, second.iwae_bound.bounds)
    assert first.mutual_information.joint == second.mutual_information.joint
