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

This module names and resolves them, and every one is imported from here; they are written in
:mod:`vaescope.models.likelihood_base` (the interface), :mod:`vaescope.models.standard_likelihoods`
(Bernoulli, Gaussian, categorical), :mod:`vaescope.models.count_likelihoods` (Poisson, negative
binomial) and :mod:`vaescope.models.wrapped_likelihoods` (a distribution, a function).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.distributions import Distribution

from vaescope.core.errors import VaescopeError
from vaescope.models.count_likelihoods import NegativeBinomial, Poisson
from vaescope.models.likelihood_base import Likelihood
from vaescope.models.standard_likelihoods import Bernoulli, Categorical, Gaussian
from vaescope.models.wrapped_likelihoods import FromDistribution, FromFunction

__all__ = ["NAMES", "Bernoulli", "Categorical", "FromDistribution", "FromFunction", "Gaussian", "Likelihood",
           "NegativeBinomial", "Poisson", "resolve_likelihood", "run_likelihood"]

NAMES = ("bernoulli", "gaussian", "gaussian:VARIANCE", "gaussian:decoded", "categorical", "poisson",
         "negative-binomial")


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
