"""The interface every decoder likelihood implements, and the checks of ``x`` and ``decoded`` they share.

The implementations: :mod:`vaescope.models.standard_likelihoods` (Bernoulli, Gaussian, categorical),
:mod:`vaescope.models.count_likelihoods` (Poisson, negative binomial) and
:mod:`vaescope.models.wrapped_likelihoods` (a ``torch.distributions`` object, a function);
:mod:`vaescope.models.likelihoods` names them all and resolves a spec to one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch

from vaescope.core.errors import VaescopeError


def sum_rows(values: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` -> ``(B,)``: the sum over every non-batch dimension (``(B,)`` is returned as it is)."""
    return values.flatten(1).sum(1) if values.ndim > 1 else values


def _range(x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of the data (NaN when they hold a NaN)."""
    values = x.detach().flatten()
    low, high = torch.aminmax(values.to(torch.uint8) if values.dtype == torch.bool else values)
    return float(low), float(high)


def _as_float_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Data (float, or integer counts) in the dtype of the decoder's output."""
    return x if x.dtype == reference.dtype else x.to(reference.dtype)


def _same_size(x: torch.Tensor, decoded: torch.Tensor, name: str) -> None:
    """The decoder gives one value per element of ``x`` (shapes may differ: (B, 784) vs (B, 1, 28, 28))."""
    if decoded.shape[:1] != x.shape[:1] or decoded[0:1].numel() != x[0:1].numel():
        raise VaescopeError(f"the {name} likelihood got decoded {tuple(decoded.shape)} for x {tuple(x.shape)}; "
                            "the decoder must return one value per element of x, or pass another likelihood=")


def _two(decoded: Any, keys: tuple[tuple[str, ...], tuple[str, ...]], name: str,
         what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The two tensors of a (first, second) tuple or a dict with one key of each group."""
    if isinstance(decoded, (tuple, list)) and len(decoded) == 2 and all(isinstance(t, torch.Tensor) for t in decoded):
        return decoded[0], decoded[1]
    if isinstance(decoded, Mapping):
        found = [next((decoded[k] for k in group if k in decoded), None) for group in keys]
        if all(isinstance(t, torch.Tensor) for t in found):
            return found[0], found[1]
    got = (f"a dict with keys {', '.join(map(repr, decoded))}" if isinstance(decoded, Mapping)
           else type(decoded).__name__)
    raise VaescopeError(f"the {name} likelihood reads {what} from the decoder; it returned {got}; "
                        "pass another likelihood= (or return that pair)")


class Likelihood(ABC):
    """log p(x | z) of a decoder; see :mod:`vaescope.models.likelihoods` for ``decoded`` of each implementation."""

    name: str = "likelihood"

    @abstractmethod
    def log_likelihood(self, x: torch.Tensor, decoded: Any) -> torch.Tensor:
        """log p(x | decoded), summed over every non-batch dimension: ``x`` ``(B, ...)`` -> ``(B,)`` nats."""

    @abstractmethod
    def mean(self, decoded: Any) -> torch.Tensor:
        """E[x | decoded], shaped like ``x``."""

    def check(self, x: torch.Tensor) -> None:
        """Raise a one-line VaescopeError when ``x`` ``(B, ...)`` cannot come from this likelihood."""

    @abstractmethod
    def describe(self) -> str:
        """One phrase for reports."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"
