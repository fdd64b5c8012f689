"""Data that are not images: .npz files of vectors train a dense VAE with a Gaussian decoder whose mean is its
output; stats and inspect measure it with that likelihood; inspect on vectors and tokens draws no image grid
and measures each variable's effect; bad input (a batch that cannot be read, a likelihood that does not fit
the data, a probe of the wrong shape) is one line naming the option that fixes it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vaescope.cli import main
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError
from vaescope.data.readers import load_npz
from vaescope.inspection import inspect
from vaescope.integrations.monitor import LatentMonitor
from vaescope.measures.effects import variable_effects
from vaescope.measures.gains import reconstruction_gain
from vaescope.measures.reading import decoder
from vaescope.measures.statistics import latent_statistics
from vaescope.models.adapters import as_latent_model
from vaescope.models.likelihoods import Gaussian


def vectors(n: int, seed: int) -> np.ndarray:
    """(n, 6) float32 from 2 factors, offset 5: far outside [0, 1]."""
    rng = np.random.default_rng(seed)
    w = np.array([[2.0, 0, 1, 0, 0, 0], [0, 1.5, 0, 0, 1, 0]])
    return (rng.normal(size=(n, 2)) @ w + 0.1 * rng.normal(size=(n, 6)) + 5.0).astype(np.float32)


@pytest.fixture(scope="module")
def vector_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("vec") / "table.npz"
    np.savez(path, x_train=vectors(400, 0), x_test=vectors(100, 1))
    return path


def test_an_npz_of_vectors_is_read_as_vectors_and_flattened_images_stay_images(tmp_path, vector_npz):
    data = load_npz(vector_npz)
    assert data.is_vectors and data.image_shape == (6,) and data.x_train.dtype == np.float32
    np.testing.assert_array_equal(data.x_test, vectors(100, 1))
    square = tmp_path / "square.npz"  # 16 values in [0, 1]: flattened 4x4 images, as before
    np.savez(square, x_train=np.full((3, 16), 0.5), x_test=np.full((2, 16), 0.5))
    assert load_npz(square).image_shape == (1, 4, 4)


def train_args(npz, out, *extra):
    return ["train", "--data", str(npz), "--out", str(out), "--quiet", "--epochs", "2", "--set", "model.latent_dim=3",
            "--set", "model.hidden=[16]", "--set", "train.batch_size=50", "--set", "train.threads=1",
            "--set", "train.trace_subset=50", *extra]


def test_vectors_train_with_a_gaussian_decoder_and_are_measured_with_it(tmp_path, vector_npz):
    runner = CliRunner()
    refused = runner.invoke(main, train_args(vector_npz, tmp_path / "bad"))
    assert refused.exit_code == 2 and "--set loss.reconstruction=gaussian --set loss.link=identity" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    out = tmp_path / "run"
    done = runner.invoke(main, train_args(vector_npz, out, "--set", "loss.reconstruction=gaussian",
                                          "--set", "loss.link=identity", "--set", "loss.variance=0.1"))
    assert done.exit_code == 0, done.output
    stats = runner.invoke(main, ["stats", str(out), "--json"])
    payload = json.loads(stats.output)
    assert payload["reconstruction_likelihood"] == "Gaussian on the decoded mean, fixed variance 0.1"
    assert payload["lesson"]["text"].startswith("What this means: ")
    # the baseline error is -log N(x; decoded mean, 0.1) over the test vectors, by hand
    from vaescope.runs.checkpoint import load_run

    run = load_run(out)
    x = torch.as_tensor(vectors(100, 1))
    with torch.no_grad():
        mean = run.model.decode(run.model.encode(x)[0]).double()
    by_hand = float(((x - mean).square().sum(1) / 0.2 + 3 * math.log(2 * math.pi * 0.1)).mean())
    assert payload["reconstruction_baseline_error"] == pytest.approx(by_hand, rel=1e-5)
    text = runner.invoke(main, ["stats", str(out)]).output
    assert "likelihood of the gains: Gaussian on the decoded mean, fixed variance 0.1" in text
    inspected = runner.invoke(main, ["inspect", str(out), "--samples", "20"])
    assert inspected.exit_code == 0, inspected.output
    results = json.loads((out / "inspect" / "inspect.json").read_text())
    assert results["data"]["kind"] == "vectors" and "variable_effects" in results
    assert results["model"]["likelihood"] == "Gaussian on the decoded mean, fixed variance 0.1"
    assert not (out / "inspect" / "figures" / "generation.png").exists()  # no image grid for vectors


def test_conv_and_binarised_vectors_are_refused_in_one_line(tmp_path, vector_npz):
    runner = CliRunner()
    conv = runner.invoke(main, train_args(vector_npz, tmp_path / "c", "--set", "model.kind=conv", "--set",
                                          "loss.reconstruction=gaussian", "--set", "loss.link=identity"))
    assert conv.exit_code == 2 and "model.kind 'conv' needs images (C, H, W)" in conv.output
    binar = runner.invoke(main, train_args(vector_npz, tmp_path / "b", "--set", "data.binarize=static", "--set",
                                           "loss.reconstruction=gaussian", "--set", "loss.link=identity"))
    assert binar.exit_code == 2 and "set data.binarize = 'none'" in binar.output
    with pytest.raises(VaescopeError, match="loss.link"):
        config_mod.resolve(None, overrides=["loss.link=identity"])  # the link of a Gaussian decoder only


class Shift(nn.Module):
    """Vectors (B, 4): mu = x[:, :2] - 0.5 (the last two ignored), decoder returns (mean, logvar)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def encode(self, x):
        mu = (x @ torch.eye(4)[:, :2] - 0.5) * self.scale
        return mu, torch.full_like(mu, -2.0)

    def decode(self, z):
        mean = torch.cat([z + 0.5, torch.zeros_like(z)], 1)
        return mean, torch.zeros_like(mean)


def test_decoded_mean_effects_of_vectors_by_hand():
    model = as_latent_model(Shift())
    effects = variable_effects(decoder(model, "gaussian:decoded", 2), np.zeros(2), amplitude=2.0)
    # moving z_j from -2 to +2 moves element j of the mean by 4 and nothing else: mean |change| = 4 / 4
    np.testing.assert_allclose(effects.effect, [1.0, 1.0])
    assert effects.top[:, 0].tolist() == [0, 1] and effects.top_change[:, 0].tolist() == [4.0, 4.0]
    assert effects.likelihood == "Gaussian on the decoded mean, decoded variance"


class Tokens(nn.Module):
    """Token ids (B, 3) over 4 tokens; variable 0 moves the first position's logits, variable 1 nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def encode(self, x):
        mu = torch.stack([x[:, 0].float() - 1.5, torch.zeros(len(x))], 1) + self.w
        return mu, torch.zeros_like(mu)

    def decode(self, z):
        logits = torch.zeros(len(z), 3, 4)
        logits[:, 0, 0] = 10 * z[:, 0]  # token 0 at position 0 when z_0 > 0, uniform over 1..3 when z_0 < 0
        return logits


def test_token_distribution_effects_and_an_inspect_report_without_images(tmp_path):
    model = as_latent_model(Tokens())
    effects = variable_effects(decoder(model, "categorical", 2), np.zeros(2), amplitude=2.0)
    p_plus = math.exp(20) / (math.exp(20) + 3)
    # total variation at position 0: |p+(0) - p-(0)| + sum_v>0 |p+(v) - p-(v)|, halved; 0 elsewhere; mean of 3
    p_minus0 = 1 / (1 + 3 * math.exp(20))
    tv0 = 0.5 * (abs(p_plus - p_minus0) + 3 * abs((1 - p_plus) / 3 - (1 - p_minus0) / 3))
    np.testing.assert_allclose(effects.effect, [tv0 / 3, 0.0], rtol=1e-6)  # float32 softmax
    assert effects.kind == "token-distribution" and effects.top[0, 0] == 0
    ids = torch.randint(0, 4, (60, 3), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(ids), batch_size=25)
    result = inspect(model, loader, tmp_path, likelihood="categorical", samples=20, mi_images=40)
    assert result.results["data"]["kind"] == "tokens" and result.results["data"]["dtype"] == "int64"
    assert result.results["statistics"]["n"] == 60
    assert result.results["variable_effects"]["kind"] == "token-distribution"
    html = result.report.read_text()
    assert "What each variable does to the decoded data" in html and "categorical over tokens" in html
    assert "What this means" in html


# ---------------------------------------------------------------------------- bad input

def test_a_batch_that_cannot_be_read_names_batch_key_or_input_fn():
    model = Shift()
    with pytest.raises(VaescopeError, match="holding tensors under 'x', 'mask'; pass batch_key="):
        latent_statistics(model, [{"x": torch.rand(5, 4), "mask": torch.ones(5, 4)}])
    stats = latent_statistics(model, [{"x": torch.rand(5, 4), "mask": torch.ones(5, 4)}], batch_key="x")
    assert stats.n == 5
    with pytest.raises(VaescopeError, match="input_fn="):
        latent_statistics(model, [object()])
    with pytest.raises(VaescopeError, match=r"the encoder of Shift .* failed on a batch \(5, 1\).*batch_key=.*input_fn="):
        latent_statistics(model, torch.rand(5, 1))


def test_a_likelihood_that_does_not_fit_the_data_names_likelihood():
    model = Shift()
    with pytest.raises(VaescopeError, match=r"Bernoulli likelihood needs data in \[0, 1\].*likelihood="):
        reconstruction_gain(model, torch.full((4, 4), 3.0), likelihood="bernoulli")
    with pytest.raises(VaescopeError, match="whole counts.*likelihood="):
        reconstruction_gain(model, torch.rand(4, 4), likelihood="poisson")
    with pytest.raises(VaescopeError, match="integer token ids"):
        reconstruction_gain(model, torch.rand(4, 4), likelihood="categorical")
    with pytest.raises(VaescopeError, match="cannot be inferred; pass likelihood="):
        reconstruction_gain(model, torch.rand(4, 4))  # (mean, logvar) and (mean, log_theta) look alike
    gain = reconstruction_gain(model, torch.rand(6, 4), likelihood=Gaussian("decoded"))
    assert gain.gain.shape == (2,) and gain.likelihood == "Gaussian on the decoded mean, decoded variance"


def test_a_probe_of_the_wrong_shape_is_one_line_at_construction():
    with pytest.raises(VaescopeError, match=r"LatentMonitor probe of shape \(8, 1\) does not fit Shift") as err:
        LatentMonitor(Shift(), torch.rand(8, 1), tensorboard=False)
    assert "\n" not in str(err.value) and "batch_key= / input_fn=" in str(err.value)
    with pytest.raises(VaescopeError, match="LatentMonitor probe: .*pass batch_key="):
        LatentMonitor(Shift(), [{"a": torch.rand(3, 4), "b": torch.rand(3, 4)}], tensorboard=False)
    monitor = LatentMonitor(Shift(), [{"a": torch.rand(3, 4), "b": torch.rand(3, 4)}], batch_key="a",
                            tensorboard=False)
    assert monitor.record(0).n == 3
    assert "What this means" in monitor.summary()
