"""Likelihoods of counts: Poisson, and the negative binomial of scVI for overdispersed counts."""

from __future__ import annotations

from typing import Any

import torch

from vaescope.core.errors import VaescopeError
from vaescope.models.likelihood_base import Likelihood, _as_float_like, _range, _same_size, _two, sum_rows


def _check_counts(x: torch.Tensor, name: str) -> None:
    if x.is_complex() or x.dtype == torch.bool:
        raise VaescopeError(f"the {name} likelihood needs counts; the data are {x.dtype}; pass another likelihood=")
    if x.numel() == 0:
        return
    low, _ = _range(x)
    if not low >= 0:  # NaN fails too
        raise VaescopeError(f"the {name} likelihood needs counts >= 0; the data have min {low:.4g}; "
                            "pass the raw counts, or another likelihood= (e.g. 'gaussian' for normalised values)")
    if x.is_floating_point():
        fractional = x[x != torch.round(x)]
        if fractional.numel():
            raise VaescopeError(f"the {name} likelihood needs whole counts; the data hold non-integers "
                                f"(e.g. {float(fractional[0]):.4g}); pass the raw counts, or another likelihood= "
                                "(e.g. 'gaussian' for normalised values)")


class Poisson(Likelihood):
    """Independent Poisson counts: ``decoded`` is the log-rate ``(B, ...)``.

    log p = x log(rate) - rate - log(x!), rate = exp(decoded).
    """

    name = "poisson"

    def log_likelihood(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        _same_size(x, decoded, self.name)
        counts = _as_float_like(x, decoded).reshape(decoded.shape)
        return sum_rows(counts * decoded - torch.exp(decoded) - torch.lgamma(counts + 1.0))

    def mean(self, decoded: torch.Tensor) -> torch.Tensor:
        return torch.exp(decoded)

    def check(self, x: torch.Tensor) -> None:
        _check_counts(x, self.name)

    def describe(self) -> str:
        return "Poisson counts, decoded log-rate"


class NegativeBinomial(Likelihood):
    """Overdispersed counts in the mean / inverse-dispersion form of scVI (Lopez et al. 2018).

    ``decoded``: ``(mean, log_theta)`` or a dict with "mean"/"mu" and "log_theta"/"log_dispersion";
    ``log_theta`` may be per variable ``(G,)`` (scVI's gene-wise dispersion) and broadcasts. With
    mu the mean and theta the inverse dispersion (variance mu + mu^2 / theta):

        log p = theta (log theta - log(theta + mu)) + x (log mu - log(theta + mu))
                + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)

    which is torch's ``NegativeBinomial(total_count=theta, logits=log(mu / theta))``. The term
    x log mu is written ``xlogy(x, mu)`` (0 when x = 0, also at mu = 0), with no epsilon.
    """

    name = "negative-binomial"

    def _split(self, decoded: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return _two(decoded, (("mean", "mu"), ("log_theta", "log_dispersion")), self.name, "(mean, log_theta)")

    def log_likelihood(self, x: torch.Tensor, decoded: Any) -> torch.Tensor:
        mu, log_theta = self._split(decoded)
        _same_size(x, mu, self.name)
        counts = _as_float_like(x, mu).reshape(mu.shape)
        log_theta = log_theta.expand_as(mu)
        theta = torch.exp(log_theta)
        log_theta_mu = torch.log(theta + mu)
        terms = (theta * (log_theta - log_theta_mu) + torch.xlogy(counts, mu) - counts * log_theta_mu
                 + torch.lgamma(counts + theta) - torch.lgamma(theta) - torch.lgamma(counts + 1.0))
        return sum_rows(terms)

    def mean(self, decoded: Any) -> torch.Tensor:
        return self._split(decoded)[0]

    def check(self, x: torch.Tensor) -> None:
        _check_counts(x, self.name)

    def describe(self) -> str:
        return "negative binomial counts, decoded mean and log inverse-dispersion (scVI)"
