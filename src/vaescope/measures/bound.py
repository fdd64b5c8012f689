"""The importance-weighted bound on log p(x) (Burda et al. 2016, "Importance Weighted Autoencoders", eq. 8):

    log p(x) >= E [ log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) ],  z_k ~ q(z|x),

with the decoder's own likelihood p(x|z) (:mod:`vaescope.models.likelihoods`). One pool of max(K) codes
per example serves every K: it is cut into max(K) // K disjoint groups of K, and the bound for K is the
mean over groups and examples. K = 1 is the Monte Carlo ELBO of the same codes.

**Where the time goes.** For each of the N x max(K) codes the decoder runs once and the likelihood is
summed over the P elements of x: for a dense 784-256-64-32-16 decoder that is ~0.44 MFLOP of matrix
products and ~P = 784 exp/log evaluations a code, i.e. 4.4e12 FLOP for 10,000 MNIST digits at K = 1,000
(a floor of ~24 s at the ~183 GFLOP/s sgemm rate of two cores). Everything else is made small:

- the encoder runs once per example, not once per code;
- log p(z) - log q(z|x) is read from the noise itself, 0.5 sum_j (eps_j^2 - z_j^2 + log sigma_j^2), with no
  density evaluated twice;
- for the Bernoulli on logits, log p(x|z) = x . l - sum softplus(l): the dot products are one batched
  matrix product against each example's x, so the data are never copied max(K) times (the old code
  expanded the targets to (max(K) B, P), a copy as large as the decoder's output);
- codes are decoded ``rows`` at a time, the log-weights kept in float64 and reduced by logsumexp per K.

The noise is drawn as before (``torch.randn((k, b, D))`` per chunk of k codes for each group of b =
max(1, rows // max(K)) examples), so the numbers are those of the straightforward computation
(tests/test_bound.py holds it as the reference) to float32 rounding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vaescope.core.errors import VaescopeError
from vaescope.data.batches import BatchKey, DataSource, InputFn
from vaescope.measures.reading import Decoder, LikelihoodSpec, decoder, encode, measure_device, model_batches
from vaescope.models.adapters import LatentModelAdapter, as_latent_model
from vaescope.models.isolation import untouched
from vaescope.models.likelihoods import Bernoulli, Likelihood

# Codes decoded at once, by device: on a CPU a few MB of activations (cache-sized); on an accelerator many.
IWAE_ROWS = {"cpu": 2048, "accelerator": 2**16}


@dataclass(frozen=True)
class ImportanceWeightedBound:
    """The importance-weighted bound on log p(x), nats per example, for each K of ``ks``.

    ``bounds`` and ``standard_errors`` (over examples) are ``(len(ks),)``; ``samples`` is the pool
    size max(ks); ``likelihood`` the decoder's likelihood by name ("bernoulli", "gaussian",
    "categorical", ...) and ``likelihood_description`` in words; ``binarize`` the ``data.binarize``
    setting of the images (a likelihood is comparable with the literature's binarised-MNIST figures
    only when it is not "none").
    """

    n: int
    samples: int
    ks: tuple[int, ...]
    bounds: np.ndarray
    standard_errors: np.ndarray
    likelihood: str
    binarize: str
    seconds: float
    likelihood_description: str = ""

    def bound(self, k: int) -> float:
        return float(self.bounds[self.ks.index(k)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "samples_per_image": self.samples,
            "likelihood": self.likelihood,
            "likelihood_description": self.likelihood_description,
            "binarize": self.binarize,
            "bounds": {
                str(k): {
                    "log_likelihood_bound": float(b),
                    "negative_log_likelihood": -float(b),
                    "standard_error": float(se),
                    "estimates_per_image": self.samples // k,
                }
                for k, b, se in zip(self.ks, self.bounds, self.standard_errors)
            },
            "seconds": self.seconds,
        }


def _per_device(device: torch.device) -> int:
    return IWAE_ROWS["cpu" if device.type == "cpu" else "accelerator"]


def _log_px(likelihood: Likelihood, x: torch.Tensor, decoded: Any, k: int) -> torch.Tensor:
    """log p(x_i | z_ki) ``(b, k)`` for data ``x`` ``(b, ...)`` and the decoder's output for codes ordered
    example-major, ``(b k, ...)``."""
    b = len(x)
    if isinstance(likelihood, Bernoulli) and likelihood.logits and isinstance(decoded, torch.Tensor):
        logits = decoded.reshape(b, k, -1)                                     # (b, k, P)
        target = x.reshape(b, -1, 1).to(logits.dtype)                          # (b, P, 1)
        # -BCE(l, x) = x l - softplus(l), summed over P; the first term one batched product
        return torch.bmm(logits, target).squeeze(2) - F.softplus(logits).sum(2)
    targets = x.unsqueeze(1).expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
    return likelihood.log_likelihood(targets, decoded).reshape(b, k)


def log_weights(model: LatentModelAdapter, dec: Decoder, x: torch.Tensor, samples: int,
                generator: torch.Generator, rows: int) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for ``samples`` codes of each example of ``x`` ``(b, ...)``:
    ``(samples, b)`` float64. Noise: ``torch.randn((k, b, D))`` per chunk of k <= rows / b codes."""
    mu, logvar = encode(model, x)                                              # (b, D)
    b, dim = mu.shape
    sigma = torch.exp(0.5 * logvar)
    half_log_var = 0.5 * logvar.sum(1)                                         # (b,)
    chunk = max(1, rows // b)
    out = torch.empty(samples, b, dtype=torch.float64, device=x.device)
    for k0 in range(0, samples, chunk):
        k = min(chunk, samples - k0)
        eps = torch.randn((k, b, dim), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + sigma * eps                                                   # (k, b, D)
        # log N(z; 0, I) - log N(z; mu, sigma^2) = 0.5 sum (eps^2 - z^2 + log sigma^2)
        log_ratio = 0.5 * (eps.square() - z.square()).sum(-1) + half_log_var  # (k, b)
        codes = z.transpose(0, 1).reshape(b * k, dim)                          # example-major
        log_px = _log_px(dec.likelihood, x, dec.decode(codes), k).T            # (k, b)
        out[k0 : k0 + k] = (log_px + log_ratio).double()
    return out


def importance_weighted_bound(
    model: Any,
    images: DataSource,
    ks: Sequence[int] = (1, 10, 100, 1000),
    kind: LikelihoodSpec = None,
    binarize: str = "none",
    seed: int = 0,
    rows: int | None = None,
    device: str | torch.device | None = None,
    *,
    likelihood: LikelihoodSpec = None,
    batch_key: BatchKey = None,
    input_fn: InputFn | None = None,
    limit: int | None = None,
) -> ImportanceWeightedBound:
    """The importance-weighted bound (Burda et al. 2016) of each K in ``ks`` over the data ``images``
    (anything :func:`vaescope.data.batches.iter_batches` reads; the first ``limit`` rows when given).

    ``likelihood`` (or ``kind``, a run's ``loss.reconstruction``): the decoder's likelihood, any spec
    :func:`vaescope.models.likelihoods.resolve_likelihood` takes; default: the model's own, else the
    Bernoulli on logits. ``binarize``: how ``images`` were binarised, recorded with the result.
    Examples go ``max(1, rows // max(ks))`` at a time; at most ``rows`` codes are decoded at once
    (default: :data:`IWAE_ROWS` for the device). Noise comes from the generator of
    :func:`vaescope.models.isolation.untouched`, seeded with ``seed``.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise VaescopeError(f"importance_weighted_bound: K values {list(ks)}; give one or more K >= 1")
    if kind is not None and likelihood is not None:
        raise VaescopeError("importance_weighted_bound got both kind= and likelihood=; pass likelihood= only")
    model = as_latent_model(model)
    pool = max(ks)
    device = measure_device(model, device)
    rows = rows or _per_device(device)
    started = time.perf_counter()
    sums = torch.zeros(2, len(ks), dtype=torch.float64, device=device)        # sum and sum of squares
    n = 0
    dec: Decoder | None = None
    with untouched(model, seed=seed) as generator:
        if generator.device != device:
            generator = torch.Generator(device=device).manual_seed(seed)
        for x in model_batches(model, images, batch_size=max(1, rows // pool), batch_key=batch_key,
                               input_fn=input_fn, device=device, limit=limit):
            if dec is None:  # inferring the likelihood needs the latent size: from the first two examples
                spec = likelihood if likelihood is not None else kind
                dim = None if spec is not None or model.latent_dim else encode(model, x[:2])[0].shape[1]
                dec = decoder(model, spec, dim, device)
            dec.likelihood.check(x)
            log_w = log_weights(model, dec, x, pool, generator, rows)         # (pool, b)
            for i, k in enumerate(ks):
                groups = pool // k
                grouped = log_w[: groups * k].reshape(groups, k, -1)
                per_image = (torch.logsumexp(grouped, dim=1) - math.log(k)).mean(0)  # (b,)
                sums[0, i] += per_image.sum()
                sums[1, i] += per_image.square().sum()
            n += len(x)
    if n == 0 or dec is None:
        raise VaescopeError("importance_weighted_bound got no data point; give at least one row of data")
    total, squares = sums.cpu().numpy()
    bounds = total / n
    variance = np.maximum(squares / n - bounds**2, 0.0) * n / max(n - 1, 1)
    return ImportanceWeightedBound(
        n=n, samples=pool, ks=ks, bounds=bounds, standard_errors=np.sqrt(variance / n),
        likelihood=dec.likelihood.name, binarize=binarize, seconds=time.perf_counter() - started,
        likelihood_description=dec.describe(),
    )
