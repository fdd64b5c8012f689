"""The decoder's own likelihood, log p(x | z), behind one interface.

A :class:`Likelihood` reads what the decoder returned for a batch of codes (``decoded``) and
the data ``x`` ``(B, ...)``:

- ``log_likelihood(x, decoded) -> (B,)``: log p(x | z) in nats, normalised, summed over every
  non-batch dimension;
- ``mean(decoded)``: E[x | z], shaped like ``x`` (for generation and decoded-mean effects;
  :class:`Categorical` adds the category axis: the probabilities ``(B, ..., V)``);
- ``check(x)``: raises a one-line :class:`~vaescope.core.errors.VaescopeError` when the data cannot
  come from this likelihood (pixels outside [0, 1] for a Bernoulli, negative counts for a Poisson);
- ``describe()``: one phrase for reports, e.g. "Gaussian on sigmoid(decoded), fixed variance 0.5".

Implementations and what ``decoded`` must be:

================================  ==========================================================
``Bernoulli(logits=True)``        logits ``(B, ...)`` (``logits=False``: probabilities)
``Gaussian(variance=v)``          the mean ``(B, ...)``; ``link="sigmoid"`` reads logits
``Gaussian(variance="decoded")``  ``(mean, logvar)`` or ``{"mean": ..., "logvar": ...}``
``Categorical()``                 logits ``(B, ..., V)`` for integer ids ``x`` ``(B, ...)``
``Poisson()``                     the log-rate ``(B, ...)``
``NegativeBinomial()``            ``(mean, log_theta)`` or ``{"mean": ..., "log_theta": ...}``
``FromDistribution()``            a ``torch.distributions.Distribution`` over ``x``
``FromFunction(fn)``              anything ``fn(x, decoded) -> (B,)`` reads
================================  ==========================================================

The names of :func:`resolve_likelihood` keep vaescope's convention that the decoder returns
logits (``LatentModelAdapter.decode`` does): ``"bernoulli"`` is ``Bernoulli(logits=True)`` and
``"gaussian"`` is ``Gaussian(0.5, link="sigmoid")``, the Gaussian of variance 1/2 around
sigmoid(logits). With them :meth:`Likelihood.log_likelihood` gives exactly (bit for bit) the numbers of
``vaescope.models.objectives.log_likelihood(logits, x, kind)`` for ``kind`` "bernoulli" and "gaussian".
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.distributions import Distribution

from vaescope.core.errors import VaescopeError

Link = Literal["identity", "sigmoid"]
LOG_2PI = math.log(2.0 * math.pi)
NAMES = ("bernoulli", "gaussian", "gaussian:VARIANCE", "gaussian:decoded", "categorical", "poisson",
         "negative-binomial")


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
    """log p(x | z) of a decoder; see the module docstring for ``decoded`` of each implementation."""

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


def _from_name(spec: str) -> Likelihood:
    name, _, arg = spec.strip().lower().partition(":")
    name = name.replace("_", "-")
    if name == "gaussian":
        if not arg:
            return Gaussian(0.5, link="sigmoid")
        if arg == "decoded":
            return Gaussian("decoded", link="identity")
        try:
            variance = float(arg)
        except ValueError:
            variance = math.nan
        if not math.isfinite(variance) or variance <= 0:
            raise VaescopeError(f"likelihood {spec!r}: the variance {arg!r} is not a positive number; pass "
                                "likelihood='gaussian:0.1' or 'gaussian:decoded'")
        return Gaussian(variance, link="sigmoid")
    if arg:
        raise VaescopeError(f"likelihood {spec!r}: only 'gaussian' takes an argument; pass likelihood= one of "
                            f"{', '.join(NAMES)}")
    simple: dict[str, Callable[[], Likelihood]] = {
        "bernoulli": Bernoulli, "categorical": Categorical, "poisson": Poisson,
        "negative-binomial": NegativeBinomial, "nb": NegativeBinomial}
    if name not in simple:
        raise VaescopeError(f"likelihood {spec!r} is not known; pass likelihood= one of {', '.join(NAMES)}, "
                            "a Likelihood, or a function (x, decoded) -> (B,)")
    return simple[name]()


def resolve_likelihood(spec: str | Likelihood | Callable[..., torch.Tensor] | None,
                       decoded_example: Any = None) -> Likelihood:
    """The :class:`Likelihood` that ``spec`` names.

    ``spec``: a Likelihood (returned as it is); a name: "bernoulli" (logits), "gaussian" (variance
    1/2 on sigmoid(logits), vaescope's "gaussian"), "gaussian:V" (variance V on sigmoid(logits)),
    "gaussian:decoded" (the decoder returns (mean, logvar)), "categorical", "poisson",
    "negative-binomial" (case and "_" vs "-" do not matter); a function (x, decoded) -> (B,)
    (:class:`FromFunction`); or None: inferred from ``decoded_example`` (what the decoder
    returned for a few codes): a Distribution -> :class:`FromDistribution`; a tensor, or nothing
    to look at -> ``Bernoulli(logits=True)``, vaescope's default; a tuple or dict -> an error,
    since (mean, logvar) and (mean, log_theta) look alike.
    """
    if isinstance(spec, Likelihood):
        return spec
    if isinstance(spec, type):
        raise VaescopeError(f"likelihood is the class {spec.__name__}; pass an instance, e.g. "
                            f"likelihood={spec.__name__}()")
    if isinstance(spec, str):
        return _from_name(spec)
    if callable(spec):
        return FromFunction(spec)
    if spec is not None:
        raise VaescopeError(f"likelihood is a {type(spec).__name__}; pass likelihood= a name "
                            f"({', '.join(NAMES)}), a Likelihood or a function (x, decoded) -> (B,)")
    if isinstance(decoded_example, Distribution):
        return FromDistribution()
    if decoded_example is None or isinstance(decoded_example, torch.Tensor):
        return Bernoulli(logits=True)
    got = (f"a dict with keys {', '.join(map(repr, decoded_example))}" if isinstance(decoded_example, Mapping)
           else f"a {type(decoded_example).__name__}")
    raise VaescopeError(f"the decoder returned {got}, and its likelihood cannot be inferred; pass likelihood= "
                        "('gaussian:decoded' for (mean, logvar), 'negative-binomial' for (mean, log_theta), ...)")


def run_likelihood(loss: Any) -> Likelihood:
    """The likelihood of a run trained with the loss config ``loss``: ``loss.reconstruction`` "bernoulli"
    is the Bernoulli on logits; "gaussian" the Gaussian of variance ``loss.variance`` (1/2 when the
    config has none) around sigmoid(output) (``loss.link`` "sigmoid", images) or the output itself
    ("identity", vectors)."""
    kind = loss.reconstruction
    if kind == "bernoulli":
        return Bernoulli(logits=True)
    if kind == "gaussian":
        return Gaussian(float(getattr(loss, "variance", 0.5)), link=getattr(loss, "link", "sigmoid"))
    raise VaescopeError(f"loss.reconstruction is {kind!r}; use 'bernoulli' or 'gaussian'")
