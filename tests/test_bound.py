"""The importance-weighted bound's fast code against a straightforward reference: the same noise, densities
evaluated as written in Burda et al. (log q and log p(z) each from its Gaussian density, the targets
expanded to every code), the same numbers to float32 rounding; and the decoder's own likelihoods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal

from vaescope.core.errors import VaescopeError
from vaescope.measures.bound import importance_weighted_bound
from vaescope.models.likelihoods import Categorical, Gaussian, resolve_likelihood


class Tiny(nn.Module):
    """A small nonlinear VAE: (B, 1, 3, 4) images or (B, 12) vectors, D = 3."""

    def __init__(self, shape: tuple[int, ...] = (1, 3, 4), dim: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shape = shape
        pixels = math.prod(shape)
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 16), nn.Tanh(), nn.Linear(16, 2 * dim))
        self.dec = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, pixels))

    def encode(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z):
        return self.dec(z).reshape(len(z), *self.shape)


def reference(model, x, ks, likelihood, seed, rows):
    """The bound computed the plain way, with the noise drawn as the documented layout says."""
    lik = resolve_likelihood(likelihood)
    pool = max(ks)
    b_max = max(1, rows // pool)
    generator = torch.Generator().manual_seed(seed)
    per_k = {k: [] for k in ks}
    with torch.no_grad():
        for start in range(0, len(x), b_max):
            xb = x[start : start + b_max]
            mu, logvar = model.encode(xb)
            b = len(xb)
            chunk = max(1, rows // b)
            log_w = []
            for k0 in range(0, pool, chunk):
                k = min(chunk, pool - k0)
                eps = torch.randn((k, *mu.shape), generator=generator)
                sigma = torch.exp(0.5 * logvar)
                z = mu + sigma * eps
                log_q = Normal(mu, sigma).log_prob(z).sum(-1).double()
                log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1).double()
                for kk in range(k):
                    log_px = lik.log_likelihood(xb, model.decode(z[kk])).double()
                    log_w.append(log_px + log_prior[kk] - log_q[kk])
            log_w = torch.stack(log_w)  # (pool, b)
            for k in ks:
                groups = pool // k
                grouped = log_w[: groups * k].reshape(groups, k, -1)
                per_k[k].append((torch.logsumexp(grouped, 1) - math.log(k)).mean(0))
    return np.array([float(torch.cat(per_k[k]).mean()) for k in ks])


@pytest.mark.parametrize("rows", [7, 64, 2048])  # codes split across chunks, images across batches
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", Gaussian(0.3, link="identity")])
def test_the_fast_bound_equals_the_reference(rows, likelihood):
    model = Tiny()
    x = torch.rand(9, 1, 3, 4, generator=torch.Generator().manual_seed(1))
    ks = (1, 4, 16)
    fast = importance_weighted_bound(model, x, ks=ks, likelihood=likelihood, seed=3, rows=rows)
    np.testing.assert_allclose(fast.bounds, reference(model, x, ks, likelihood, 3, rows), rtol=2e-6, atol=1e-5)
    assert list(fast.bounds) == sorted(fast.bounds)  # nested groups of one pool: never decreasing


class TokenVAE(nn.Module):
    """Token ids (B, T) over V tokens: mean-pooled embeddings in, logits (B, T, V) out."""

    def __init__(self, vocab: int = 5, length: int = 4, dim: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, 8)
        self.enc = nn.Linear(8, 2 * dim)
        self.dec = nn.Linear(dim, length * vocab)
        self.vocab, self.length = vocab, length

    def encode(self, x):
        mu, logvar = self.enc(self.embed(x).mean(1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z):
        return self.dec(z).reshape(len(z), self.length, self.vocab)


def test_categorical_tokens_reach_the_bound_as_integers():
    model = TokenVAE()
    x = torch.randint(0, 5, (6, 4), generator=torch.Generator().manual_seed(2))
    fast = importance_weighted_bound(model, x, ks=(1, 8), likelihood="categorical", seed=1, rows=16)
    np.testing.assert_allclose(fast.bounds, reference(model, x, (1, 8), "categorical", 1, 16), rtol=2e-6)
    assert fast.likelihood == "categorical" and "categorical over" in fast.to_dict()["likelihood_description"]
    # K = 8 cannot exceed log of the largest mass, 0 nats: a likelihood over tokens is a probability
    assert float(fast.bounds.max()) < 0


def test_a_likelihood_that_does_not_fit_the_data_is_one_line():
    with pytest.raises(VaescopeError, match=r"Bernoulli likelihood needs data in \[0, 1\].*likelihood="):
        importance_weighted_bound(Tiny(), torch.full((3, 1, 3, 4), 2.0), ks=(1,))
    with pytest.raises(VaescopeError, match="categorical likelihood needs integer token ids"):
        importance_weighted_bound(TokenVAE(), torch.rand(3, 4), ks=(1,), likelihood=Categorical())
