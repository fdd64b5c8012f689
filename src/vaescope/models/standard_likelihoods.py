"""Likelihoods of pixels, real values and tokens: Bernoulli, Gaussian and categorical.

``Bernoulli(logits=True)`` and ``Gaussian(0.5, link="sigmoid")`` are the "bernoulli" and "gaussian" of
:func:`vaescope.models.objectives.log_likelihood`, written as it writes them: the same numbers, bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F

from vaescope.core.errors import VaescopeError
from vaescope.models.likelihood_base import Likelihood, _as_float_like, _range, _same_size, _two, sum_rows

Link = Literal["identity", "sigmoid"]
LOG_2PI = math.log(2.0 * math.pi)


class Bernoulli(Likelihood):
    """Independent Bernoulli variables: ``decoded`` is logits (or, ``logits=False``, probabilities) ``(B, ...)``.

    ``log_likelihood`` is minus the binary cross-entropy; on grey levels in [0, 1] it is the usual
    cross-entropy "likelihood" (not a probability of the data), as in the VAE literature.
    """

    name = "bernoulli"

    def __init__(self, logits: bool = True) -> None:
        self.logits = bool(logits)

    def log_likelihood(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        _same_size(x, decoded, self.name)
        target = _as_float_like(x, decoded).flatten(1)
        if self.logits:
            # the very expression of objectives.reconstruction_error: same numbers, bit for bit
            return -F.binary_cross_entropy_with_logits(decoded.flatten(1), target, reduction="none").sum(1)
        return -F.binary_cross_entropy(decoded.flatten(1), target, reduction="none").sum(1)

    def mean(self, decoded: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(decoded) if self.logits else decoded

    def check(self, x: torch.Tensor) -> None:
        low, high = _range(x)
        if not (low >= 0.0 and high <= 1.0):  # NaN fails too
            raise VaescopeError(f"the Bernoulli likelihood needs data in [0, 1]; the data have min {low:.4g}, "
                                f"max {high:.4g}; scale them (uint8 bytes are scaled by vaescope) or pass "
                                "likelihood='gaussian'")

    def describe(self) -> str:
        return "Bernoulli on " + ("logits" if self.logits else "probabilities")


class Gaussian(Likelihood):
    """Independent Gaussians around the decoded mean.

    ``variance``: a fixed number, or "decoded" when the decoder returns ``(mean, logvar)`` (or a
    dict with "mean"/"loc" and "logvar"/"log_variance"). ``link``: how the mean is read from the
    decoder's output, "identity" or "sigmoid" (logits; vaescope's own decoders).
    Fixed variance v: log p = -sum (x - m)^2 / (2 v) - (P / 2) log(2 pi v) over P elements.
    """

    name = "gaussian"

    def __init__(self, variance: float | Literal["decoded"] = 0.5, link: Link = "identity") -> None:
        if link not in ("identity", "sigmoid"):
            raise VaescopeError(f"Gaussian link is {link!r}; pass link='identity' or link='sigmoid'")
        if variance != "decoded":
            if isinstance(variance, str) or not math.isfinite(float(variance)) or float(variance) <= 0:
                raise VaescopeError(f"Gaussian variance is {variance!r}; pass a positive number or "
                                    "variance='decoded' (the decoder returns mean and logvar)")
            variance = float(variance)
        self.variance = variance
        self.link: Link = link

    def _mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.link == "sigmoid" else out

    def _split(self, decoded: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.variance == "decoded":
            out, logvar = _two(decoded, (("mean", "loc"), ("logvar", "log_variance")), self.name,
                               "(mean, logvar)")
            return out, logvar
        if not isinstance(decoded, torch.Tensor):
            raise VaescopeError(f"the Gaussian likelihood of fixed variance reads a tensor from the decoder; it "
                                f"returned {type(decoded).__name__}; pass likelihood=Gaussian(variance='decoded') "
                                "for (mean, logvar)")
        return decoded, None

    def log_likelihood(self, x: torch.Tensor, decoded: Any) -> torch.Tensor:
        out, logvar = self._split(decoded)
        _same_size(x, out, self.name)
        mean = self._mean(out.flatten(1))
        target = _as_float_like(x, mean).flatten(1)
        if logvar is None:
            assert isinstance(self.variance, float)
            # written as objectives.log_likelihood writes it (for v = 1/2: the same numbers, bit for bit)
            squares = (mean - target).square().sum(1)
            constant = 0.5 * target[0].numel() * math.log(2.0 * math.pi * self.variance)
            return -(squares / (2.0 * self.variance) + constant)
        logvar = logvar.expand_as(out).flatten(1)
        return -0.5 * ((target - mean).square() * torch.exp(-logvar) + logvar + LOG_2PI).sum(1)

    def mean(self, decoded: Any) -> torch.Tensor:
        return self._mean(self._split(decoded)[0])

    def describe(self) -> str:
        on = "sigmoid(decoded)" if self.link == "sigmoid" else "the decoded mean"
        spread = "decoded variance" if self.variance == "decoded" else f"fixed variance {self.variance:g}"
        return f"Gaussian on {on}, {spread}"


class Categorical(Likelihood):
    """Tokens: ``x`` integer ids ``(B, ...)`` (e.g. ``(B, T)``), ``decoded`` logits ``(B, ..., V)``.

    ``vocab_size``: V, checked by :meth:`check` when given (``log_likelihood`` always checks the ids
    against the decoded V, so that an id out of range is a VaescopeError, not a device assert).
    ``mean`` gives the probabilities ``(B, ..., V)`` (the mean of the one-hot token).
    """

    name = "categorical"

    def __init__(self, vocab_size: int | None = None) -> None:
        self.vocab_size = vocab_size

    def _check_ids(self, x: torch.Tensor, vocab: int | None) -> None:
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise VaescopeError(f"the categorical likelihood needs integer token ids; the data are {x.dtype}; "
                                "pass integer ids (N, T) or another likelihood=")
        if x.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(x.flatten()))
        if low < 0 or (vocab is not None and high >= vocab):
            raise VaescopeError(f"the categorical likelihood over {vocab or 'V'} tokens got ids from {low} to {high}; "
                                "ids must lie in [0, V): check the tokenizer, or pass likelihood=Categorical("
                                "vocab_size=...) with the right V")

    def log_likelihood(self, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        if decoded.shape[:-1] != x.shape:
            raise VaescopeError(f"the categorical likelihood got logits {tuple(decoded.shape)} for ids {tuple(x.shape)}; "
                                "the decoder must return logits (B, ..., V) for ids (B, ...), or pass likelihood=")
        self._check_ids(x, decoded.shape[-1])
        log_probs = torch.log_softmax(decoded, dim=-1)
        return sum_rows(log_probs.gather(-1, x.long().unsqueeze(-1)).squeeze(-1))

    def mean(self, decoded: torch.Tensor) -> torch.Tensor:
        return torch.softmax(decoded, dim=-1)

    def check(self, x: torch.Tensor) -> None:
        self._check_ids(x, self.vocab_size)

    def describe(self) -> str:
        return "categorical over " + (f"{self.vocab_size} tokens" if self.vocab_size else "tokens") + ", decoded logits"
