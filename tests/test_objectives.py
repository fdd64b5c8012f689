import math

import torch

from vaescope.core.config import LossConfig
from vaescope.models.objectives import kl_per_variable, loss_terms, quadratic_penalty, reconstruction_error


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu = torch.tensor([[0.0, 1.5, -0.7]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, math.log(0.2), math.log(2.5)]], dtype=torch.float64)
    closed = kl_per_variable(mu, logvar)[0]
    # E_q[log q(z) - log p(z)] with z ~ q, one million samples per variable.
    std = (0.5 * logvar).exp()
    z = mu + std * torch.randn(1_000_000, 3, dtype=torch.float64)
    log_q = -0.5 * (((z - mu) / std) ** 2 + logvar + math.log(2 * math.pi))
    log_p = -0.5 * (z**2 + math.log(2 * math.pi))
    monte_carlo = (log_q - log_p).mean(0)
    assert closed[0].item() == 0.0  # q equal to the prior costs nothing
    torch.testing.assert_close(monte_carlo, closed, atol=5e-3, rtol=1e-2)


def test_kl_minimum_over_sigma2_is_the_prior():
    logvar = torch.linspace(-3, 3, 601, dtype=torch.float64)[:, None]
    kl = kl_per_variable(torch.zeros_like(logvar), logvar)[:, 0]
    assert abs(logvar[kl.argmin()].item()) < 1e-9


def test_bernoulli_reconstruction_is_summed_bce():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    x = torch.tensor([[[[0.0, 1.0], [0.5, 1.0]]]])
    p = torch.sigmoid(logits)
    expected = -(x * p.log() + (1 - x) * (1 - p).log()).sum()
    torch.testing.assert_close(reconstruction_error(logits, x)[0], expected)
    torch.testing.assert_close(reconstruction_error(logits, x, "gaussian")[0], ((p - x) ** 2).sum())


class _Fixed(torch.nn.Module):
    """Encoder returns fixed mu/logvar; decoder records the z it was given."""

    def __init__(self, mu, logvar):
        super().__init__()
        self.mu, self.logvar, self.seen = mu, logvar, None

    def encode(self, x):
        return self.mu.expand(len(x), -1), self.logvar.expand(len(x), -1)

    def decode(self, z):
        self.seen = z
        return torch.zeros(len(z), 1, 2, 2)


def test_no_sampling_uses_mu_and_the_quadratic_penalty():
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.3, -0.4]])
    model = _Fixed(mu, logvar)
    x = torch.full((3, 1, 2, 2), 0.5)
    terms = loss_terms(model, x, LossConfig(sampling=False, beta=2.0))
    torch.testing.assert_close(model.seen, mu.expand(3, -1))
    torch.testing.assert_close(terms.regularizer, quadratic_penalty(mu).expand(3, -1))
    expected = reconstruction_error(torch.zeros(3, 1, 2, 2), x).mean() + 2.0 * 0.5 * (1.0 + 4.0)
    torch.testing.assert_close(terms.total, expected)


def test_sampling_draws_z_around_mu_with_sigma():
    mu, logvar = torch.tensor([[1.0, -2.0]]), torch.log(torch.tensor([[0.25, 4.0]]))
    model = _Fixed(mu, logvar)
    generator = torch.Generator().manual_seed(0)
    terms = loss_terms(model, torch.zeros(20000, 1, 2, 2), LossConfig(), generator=generator)
    torch.testing.assert_close(model.seen.mean(0), mu[0], atol=0.05, rtol=0)
    torch.testing.assert_close(model.seen.std(0), torch.tensor([0.5, 2.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(terms.regularizer[0], kl_per_variable(mu, logvar)[0])


def test_beta_zero_without_sampling_is_a_plain_autoencoder():
    model = _Fixed(torch.tensor([[3.0]]), torch.tensor([[0.0]]))
    x = torch.zeros(2, 1, 2, 2)
    terms = loss_terms(model, x, LossConfig(sampling=False, beta=0.0))
    torch.testing.assert_close(terms.total, reconstruction_error(torch.zeros(2, 1, 2, 2), x).mean())
