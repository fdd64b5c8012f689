"""Pruning: the smaller model decodes as the original with the removed variables at 0, and its
run directory is an ordinary one (load, statistics, resume)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vaescope.cli import main as cli
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError
from vaescope.measures.run import run_statistics
from vaescope.prune import latent_layers, parameter_count, prune_model, prune_run, pruning_differences
from vaescope.runs.checkpoint import load_checkpoint, load_run
from vaescope.runs.files import read_trace
from vaescope.runs.manifest import verify_run
from vaescope.training.train import train


def threshold_between(run_dir, n_inactive: int) -> config_mod.StatsConfig:
    """A Var(mu) threshold that makes exactly the ``n_inactive`` lowest-variance variables inactive."""
    stats = run_statistics(run_dir, write=False)
    ordered = np.sort(stats.mu_variance)
    cut = float(np.sqrt(ordered[n_inactive - 1] * ordered[n_inactive]))
    return config_mod.StatsConfig(mu_variance_threshold=cut)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_npz):
    """A tiny dense run and a tiny conv run (8x8 images, 4 latents, 3 epochs)."""
    from conftest import TINY_OVERRIDES

    root = tmp_path_factory.mktemp("prune")
    runs = {}
    for kind, extra in (("dense", []), ("conv", ["model.kind='conv'", "model.conv_channels=[4, 8]",
                                                 "model.conv_dense=16"])):
        cfg = config_mod.resolve("dense16", overrides=[*TINY_OVERRIDES, *extra, f"data.source={tiny_npz}"])
        train(cfg, root / kind, progress=False)
        runs[kind] = root / kind
    return runs


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_pruned_run_decodes_as_the_original_with_zeros(trained, tmp_path, kind):
    source = trained[kind]
    thresholds = threshold_between(source, 2)
    before = run_statistics(source, thresholds=thresholds, write=False)
    expected_removed = np.flatnonzero(~before.active).tolist()
    assert len(expected_removed) == 2

    result = prune_run(source, tmp_path / "pruned", thresholds=thresholds)
    assert result.removed == expected_removed
    assert result.kept == [j for j in range(4) if j not in expected_removed]
    # float rounding only: the removed columns multiplied zeros
    assert result.max_abs_difference["decoded_images"] < 1e-5
    assert result.max_abs_difference["decoded_logits"] < 1e-4
    assert result.max_abs_difference["mu"] < 1e-5
    # the parameters removed: 2 rows of mu, 2 of logvar (weights + biases), 2 decoder columns
    head, first = latent_layers(load_run(source).model)
    assert result.parameters_before - result.parameters_after == 4 * (head.in_features + 1) + 2 * first.out_features
    assert result.test_after["kl"] < result.test_before["kl"]  # the removed variables' KL is gone
    stored = json.loads((tmp_path / "pruned" / "prune.json").read_text())
    assert stored["removed"] == expected_removed and stored["parameters_after"] == result.parameters_after

    # an ordinary run directory: loads, measures, keeps the kept variables' statistics
    run = load_run(tmp_path / "pruned")
    assert run.config.model.latent_dim == 2 and run.config.model.kind == kind
    after = run_statistics(run, thresholds=thresholds, write=False)
    np.testing.assert_allclose(after.mu_variance, before.mu_variance[result.kept], rtol=1e-5)
    np.testing.assert_allclose(after.kl_mean, before.kl_mean[result.kept], rtol=1e-4)
    assert read_trace(tmp_path / "pruned").mu_variance[-1].shape == (2,)
    check = verify_run(tmp_path / "pruned")  # a finished run: its manifest lists its files
    assert check.intact and {"model.safetensors", "config.json", "prune.json"} <= set(check.matching)


def test_pruned_checkpoint_resumes(trained, tmp_path):
    source = trained["dense"]
    out = tmp_path / "pruned"
    result = prune_run(source, out, thresholds=threshold_between(source, 1))
    ckpt, original = load_checkpoint(out), load_checkpoint(source)
    model = load_run(out).model
    # Adam's moments of the kept rows and columns travel with the weights
    for pid, param in enumerate(model.parameters()):
        assert ckpt.optimizer_state["state"][pid]["exp_avg"].shape == param.shape
    head_rows = result.kept + [4 + j for j in result.kept]
    pid_head = len(list(model.encoder.parameters())) - 2  # the encoder's last weight
    torch.testing.assert_close(ckpt.optimizer_state["state"][pid_head]["exp_avg_sq"],
                               original.optimizer_state["state"][pid_head]["exp_avg_sq"][head_rows])
    # train --resume takes the pruned checkpoint: with the final weights removed, it rewrites them
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").unlink()
    train(None, out, resume=True, progress=False)
    assert (out / "model.safetensors").read_bytes() == weights


class Tiny(nn.Module):
    """A VAE of a user's own: mu and logvar from one head, a two-layer decoder."""

    def __init__(self, latent_dim: int = 5, named: bool = True) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh())
        self.head = nn.Linear(16, 2 * latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 16), nn.Tanh(), nn.Linear(16, 64), nn.Unflatten(1, (1, 8, 8)))
        if not named:
            self.latent_layers = None  # type: ignore[assignment]

    def encode(self, x):
        return self.head(self.body(x)).chunk(2, dim=1)

    def decode(self, z):
        return self.decoder(z)

    def latent_layers(self):
        return self.head, self.decoder[0]


def test_a_users_model_that_names_its_layers(tiny_dataset):
    torch.manual_seed(0)
    model = Tiny().eval()
    pruned = prune_model(model, [0, 3])
    assert pruned.latent_dim == 2 and model.latent_dim == 5  # the original is untouched
    assert pruned.head.out_features == 4 and pruned.decoder[0].in_features == 2
    assert parameter_count(model) - parameter_count(pruned) == 3 * 2 * 17 + 3 * 16
    diff = pruning_differences(model, pruned, [0, 3], tiny_dataset.x_test)
    assert diff["decoded_images"] < 1e-6 and diff["logvar"] < 1e-6
    # the removed variables are not merely ignored: other codes decode differently
    with torch.no_grad():
        z = torch.randn(3, 5)
        assert not torch.allclose(model.decode(z), pruned.decode(z[:, [0, 3]]))


class Opaque(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 8)

    def encode(self, x):
        return self.net(x.flatten(1)).chunk(2, dim=1)

    def decode(self, z):
        return z


class WrongLayers(Tiny):
    def latent_layers(self):
        return self.head, self.body[1]  # 64 inputs: not a decoder taking the 5 variables


class ConvHead(Tiny):
    def latent_layers(self):
        return nn.Conv2d(1, 1, 1), self.decoder[0]


def test_models_that_cannot_be_pruned_are_refused_in_one_line():
    with pytest.raises(VaescopeError, match="Opaque cannot be pruned: .*latent_layers") as err:
        prune_model(Opaque(), [0])
    assert "\n" not in str(err.value)
    with pytest.raises(VaescopeError, match="WrongLayers cannot be pruned: .*10 outputs but the decoder takes 64"):
        prune_model(WrongLayers(), [0])
    with pytest.raises(VaescopeError, match="only nn.Linear"):
        prune_model(ConvHead(), [0])
    with pytest.raises(VaescopeError, match="keep at least one"):
        prune_model(Tiny(), [])
    with pytest.raises(VaescopeError, match="distinct indices from 0 to 4"):
        prune_model(Tiny(), [1, 5])


def test_cli_prunes_and_refuses(trained, tmp_path):
    source = trained["dense"]
    cut = threshold_between(source, 1).mu_variance_threshold
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["prune", str(source), "--out", str(out), "--mu-variance-threshold", repr(cut)])
    assert result.exit_code == 0, result.output
    assert "removed 1 of 4 variables" in result.output
    assert json.loads((out / "prune.json").read_text())["latent_dim_after"] == 3
    again = CliRunner().invoke(cli, ["prune", str(source), "--out", str(out), "--mu-variance-threshold", repr(cut)])
    assert again.exit_code == 2 and "already holds a run" in again.output
    none = CliRunner().invoke(cli, ["prune", str(source), "--out", str(tmp_path / "none"),
                                    "--mu-variance-threshold", "1e-12"])
    assert none.exit_code == 2 and "nothing to prune: all 4 variables" in none.output
