"""as_latent_model: every accepted form gives the same (mu, logvar) and logits, with known answers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import vaescope
from vaescope.core.errors import VaescopeError
from vaescope.measures.gains import reconstruction_gain
from vaescope.measures.generation import generation_check
from vaescope.models.adapters import LatentModelAdapter, as_latent_model, fold, variable_position
from vaescope.models.isolation import untouched
from vaescope.models.networks import DenseVAE
from vaescope.models.objectives import reconstruction_error


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_module_with_encode_decode_is_passed_through_unchanged(x):
    torch.manual_seed(0)
    model = DenseVAE((1, 8, 8), (16,), 4)
    adapter = as_latent_model(model)
    mu, logvar = adapter.encode(x)
    want_mu, want_logvar = model.encode(x)
    assert torch.equal(mu, want_mu) and torch.equal(logvar, want_logvar)
    assert torch.equal(adapter.decode(mu), model.decode(mu))
    assert adapter.latent_shape == (4,) and adapter.module is model
    assert as_latent_model(adapter) is adapter  # idempotent


def test_adapter_reaches_the_module_for_mode_and_parameters(x):
    model = nn.Sequential()
    model.encode = lambda v: (v.flatten(1)[:, :2], torch.zeros(len(v), 2))  # type: ignore[attr-defined]
    model.layer = nn.Linear(2, 2)
    adapter = as_latent_model(model)
    adapter.eval()
    assert not model.training and not model.layer.training
    adapter.train()
    assert model.training and model.layer.training
    assert [p.data_ptr() for p in adapter.parameters()] == [p.data_ptr() for p in model.parameters()]
    with untouched(adapter):  # the one policy: every submodule in eval, then each as it was
        assert not model.layer.training
    assert model.layer.training


def test_normal_posterior_gives_loc_and_twice_log_scale(x):
    class Encoder(nn.Module):
        def encode(self, v):
            loc = v.flatten(1)[:, :3]
            return Normal(loc, torch.full_like(loc, 0.5))

    mu, logvar = as_latent_model(Encoder()).encode(x)
    assert torch.equal(mu, x.flatten(1)[:, :3])
    assert torch.allclose(logvar, torch.full_like(mu, np.log(0.25)))


def test_independent_normal_over_a_latent_map_is_flattened_and_folded_back(x):
    seen = {}

    class ConvLatents(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)  # (B, 3, 4, 4) latents

        def encode(self, v):
            h = self.conv(v)
            return Independent(Normal(h, torch.exp(0.5 * h)), 3)  # logvar = h

        def decode(self, z):
            seen["shape"] = tuple(z.shape)
            return z.mean(1, keepdim=True).repeat_interleave(2, 2).repeat_interleave(2, 3)

    model = ConvLatents()
    adapter = as_latent_model(model)
    mu, logvar = adapter.encode(x)
    h = model.conv(x)
    assert mu.shape == (6, 48) and adapter.latent_shape == (3, 4, 4)
    assert torch.allclose(mu, h.reshape(6, -1)) and torch.allclose(logvar, h.reshape(6, -1), atol=1e-6)
    assert adapter.decode(mu).shape == (6, 1, 8, 8) and seen["shape"] == (6, 3, 4, 4)
    folded = fold(mu.detach().numpy(), adapter.latent_shape)
    assert np.array_equal(folded, h.detach().numpy())
    assert variable_position(1 * 16 + 2 * 4 + 3, (3, 4, 4)) == "1,2,3" and variable_position(7, (16,)) == "7"
    stats = vaescope.latent_statistics(model, x)  # every element is a variable
    assert stats.latent_dim == 48
    assert np.allclose(stats.mu_variance, h.detach().double().reshape(6, -1).var(0, unbiased=False).numpy())


def test_pythae_vae_is_read_without_user_code(x):
    from pythae.models import VAE, VAEConfig

    torch.manual_seed(0)
    model = VAE(VAEConfig(input_dim=(1, 8, 8), latent_dim=3, reconstruction_loss="bce"))
    adapter = as_latent_model(model)
    assert adapter.kind == "pythae VAE" and adapter.reconstruction == "bernoulli" and adapter.latent_shape == (3,)
    out = model.encoder(x)
    mu, logvar = adapter.encode(x)
    assert torch.equal(mu, out.embedding) and torch.equal(logvar, out.log_covariance)
    with torch.no_grad():
        mean = model.decoder(mu)["reconstruction"]
        logits = adapter.decode(mu)
        # the Bernoulli error of the adapter's logits is pythae's own BCE of its mean
        pythae_bce = F.binary_cross_entropy(mean.reshape(6, -1), x.reshape(6, -1), reduction="none").sum(1)
        assert torch.allclose(reconstruction_error(logits, x), pythae_bce, rtol=1e-4)
        assert torch.allclose(torch.sigmoid(logits), mean, atol=1e-6)
    mse = VAE(VAEConfig(input_dim=(1, 8, 8), latent_dim=3))  # pythae's default loss is "mse"
    assert as_latent_model(mse).reconstruction == "gaussian"


def test_pythae_autoencoder_is_refused_for_lack_of_variance(x):
    from pythae.models import AE, AEConfig

    adapter = as_latent_model(AE(AEConfig(input_dim=(1, 8, 8), latent_dim=3)))
    with pytest.raises(VaescopeError, match="no log_covariance"):
        adapter.encode(x)


def test_a_pair_of_functions(x):
    net = nn.Linear(64, 4)

    def encode_fn(v):
        mu, logvar = net(v.flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def decode_fn(z):
        return z.sum(1).reshape(-1, 1, 1, 1).expand(-1, 1, 8, 8)

    for adapter in (as_latent_model((encode_fn, decode_fn)),
                    as_latent_model(encode_fn=encode_fn, decode_fn=decode_fn, module=net)):
        mu, _ = adapter.encode(x)
        assert mu.shape == (6, 2)
        assert torch.equal(adapter.decode(mu), decode_fn(mu))
    assert adapter.module is net and next(adapter.parameters()) is net.weight


def test_decoder_returning_means_is_turned_into_logits():
    adapter = as_latent_model(encode_fn=lambda v: (v, v), decode_fn=lambda z: torch.sigmoid(z), decoder_output="mean",
                              latent_shape=(3,))
    z = torch.tensor([[-2.0, 0.0, 3.0]])
    assert torch.allclose(adapter.decode(z), z, atol=1e-5)
    bernoulli = as_latent_model(encode_fn=lambda v: (v, v), decode_fn=lambda z: Bernoulli(logits=z), latent_shape=(3,))
    assert torch.equal(bernoulli.decode(z), z)


def test_refusals_are_one_line(x):
    with pytest.raises(VaescopeError, match="accepts a module with encode") as err:
        as_latent_model(42)
    assert "\n" not in str(err.value)

    class ThreeOutputs(nn.Module):
        def encode(self, v):
            return v, v, v

    with pytest.raises(VaescopeError, match="a tuple of 3"):
        as_latent_model(ThreeOutputs()).encode(x)
    with pytest.raises(VaescopeError, match="pixel means in"):
        as_latent_model(encode_fn=lambda v: (v, v), decode_fn=lambda z: 3 * z, decoder_output="mean",
                        latent_shape=(1,)).decode(torch.ones(2, 1))
    encode_only = as_latent_model(encode_fn=lambda v: (v.flatten(1), v.flatten(1)))
    with pytest.raises(VaescopeError, match="has no decode"):
        encode_only.decode(torch.zeros(2, 64))
    with pytest.raises(VaescopeError, match=r"expected \(B, 4\)"):
        as_latent_model(encode_fn=lambda v: (v, v), decode_fn=lambda z: z, latent_shape=(4,)).decode(torch.zeros(2, 3))
    with pytest.raises(VaescopeError, match="decoder_output"):
        as_latent_model(encode_fn=lambda v: (v, v), decoder_output="probabilities")  # type: ignore[arg-type]


def test_every_analysis_accepts_the_forms_alike(x):
    """latent_statistics gives the same numbers for a (mu, logvar) module, a Normal encoder and functions."""
    torch.manual_seed(0)
    model = DenseVAE((1, 8, 8), (16,), 4)

    class AsNormal(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def encode(self, v):
            mu, logvar = model.encode(v)
            return Normal(mu, torch.exp(0.5 * logvar))

    plain = vaescope.latent_statistics(model, x)
    for form in (AsNormal(), (model.encode, model.decode), as_latent_model(model)):
        other = vaescope.latent_statistics(form, x)
        assert np.allclose(other.mu_variance, plain.mu_variance) and np.allclose(other.sigma2_mean, plain.sigma2_mean,
                                                                                 rtol=1e-5)
    assert isinstance(as_latent_model(model), LatentModelAdapter)
    pair = (model.encode, model.decode)  # the interventions decode too
    assert np.array_equal(reconstruction_gain(pair, x).gain, reconstruction_gain(model, x).gain)
    active = np.array([True, True, False, False])
    check = generation_check(pair, active, plain.kl_mean, n_samples=50)
    assert check.to_dict() == generation_check(model, active, plain.kl_mean, n_samples=50).to_dict()
    assert check.inactive_zeroed_mean_abs_diff > 0
