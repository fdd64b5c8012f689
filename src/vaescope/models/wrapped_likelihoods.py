"""Likelihoods written elsewhere: the decoder's own ``torch.distributions`` object, or the user's function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import Distribution

from vaescope.core.errors import VaescopeError
from vaescope.models.likelihood_base import Likelihood, sum_rows


class FromDistribution(Likelihood):
    """The decoder returns a ``torch.distributions.Distribution`` over x: its ``log_prob``, summed
    over every non-batch dimension (``Independent`` distributions already sum their event dims).

    :meth:`check` cannot see the distribution; out-of-support data are refused by its own argument
    validation at ``log_likelihood`` time, raised here as a VaescopeError.
    """

    name = "distribution"

    def _distribution(self, decoded: Any) -> Distribution:
        if not isinstance(decoded, Distribution):
            raise VaescopeError(f"the distribution likelihood reads a torch.distributions.Distribution from the "
                                f"decoder; it returned {type(decoded).__name__}; pass another likelihood=")
        return decoded

    def log_likelihood(self, x: torch.Tensor, decoded: Any) -> torch.Tensor:
        dist = self._distribution(decoded)
        try:
            log_prob = dist.log_prob(x)
        except ValueError as err:  # argument validation: x outside the support, or a shape it cannot take
            first = str(err).splitlines()[0][:160]
            raise VaescopeError(f"the decoder's {type(dist).__name__} refused the data ({first}); "
                                "pass another likelihood= or data in its support") from err
        if log_prob.ndim == 0 or len(log_prob) != len(x):
            raise VaescopeError(f"the decoder's {type(dist).__name__} gave log_prob {tuple(log_prob.shape)} for x "
                                f"{tuple(x.shape)}; expected (B, ...) with B = {len(x)}; pass likelihood=")
        return sum_rows(log_prob)

    def mean(self, decoded: Any) -> torch.Tensor:
        return self._distribution(decoded).mean

    def describe(self) -> str:
        return "the decoder's own torch distribution (log_prob)"


class FromFunction(Likelihood):
    """The user's ``log_likelihood(x, decoded) -> (B,)``; ``mean_fn(decoded)`` optional (else no mean)."""

    def __init__(self, fn: Callable[[torch.Tensor, Any], torch.Tensor],
                 mean_fn: Callable[[Any], torch.Tensor] | None = None, name: str | None = None) -> None:
        if not callable(fn):
            raise VaescopeError(f"FromFunction got a {type(fn).__name__}; pass likelihood= a function "
                                "(x, decoded) -> (B,) log-likelihoods")
        self.fn = fn
        self.mean_fn = mean_fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def log_likelihood(self, x: torch.Tensor, decoded: Any) -> torch.Tensor:
        out = self.fn(x, decoded)
        if not isinstance(out, torch.Tensor) or out.shape != (len(x),):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise VaescopeError(f"the likelihood function {self.name} returned {got} for x {tuple(x.shape)}; "
                                f"likelihood= must return one log-likelihood per example, shape ({len(x)},)")
        return out

    def mean(self, decoded: Any) -> torch.Tensor:
        if self.mean_fn is None:
            raise VaescopeError(f"the likelihood function {self.name} has no mean; pass "
                                "likelihood=FromFunction(fn, mean_fn=...) for analyses that decode means")
        return self.mean_fn(decoded)

    def describe(self) -> str:
        return f"the user's function {self.name}"
