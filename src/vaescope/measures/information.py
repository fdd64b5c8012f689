"""Information measures of a VAE's code: the mutual information I(x; z) and the importance-weighted bound.

**Mutual information** (He et al. 2019, "Lagging Inference Networks and Posterior Collapse in
Variational Autoencoders", section 4): with the aggregate posterior q(z) = (1/N) sum_n q(z|x_n),
the mixture of the encoder's posteriors over the N evaluated images,

    I(x; z) = E_x E_{q(z|x)} [log q(z|x)] - E_x E_{q(z|x)} [log q(z)].

Each image i gets ``samples`` codes z ~ q(z|x_i); both terms are read at the same codes, so the
estimate of one code is log N - log sum_n q(z|x_n) / q(z|x_i), which the n = i term caps at log N:
the estimate can never exceed **log N** (9.21 nats for 10,000 images), whatever the true value.
Per variable, I(x; z_j) uses the one-dimensional marginals q(z_j|x) and q(z_j) the same way.
The mixture is summed in blocks (memory set by ``block_elements``, never N x N at once).

**Importance-weighted bound** (Burda et al. 2016, "Importance Weighted Autoencoders", eq. 8):

    log p(x) >= E [ log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) ],  z_k ~ q(z|x),

with the decoder's likelihood :func:`vaescope.models.objectives.log_likelihood`. One pool of
max(K) codes per image serves every K: it is cut into max(K) // K disjoint groups of K, and the
bound for K is the mean over groups and images. K = 1 is the Monte Carlo ELBO of the same codes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaescope.core.errors import VaescopeError
from vaescope.data.batches import as_float
from vaescope.models.adapters import LatentModelAdapter, as_latent_model
from vaescope.models.objectives import log_likelihood

LOG_2PI = math.log(2.0 * math.pi)
# exp() of arguments below these takes a slow path (~10x) and gives subnormal numbers or 0:
# arguments are clamped here first, each clamped term adding at most e^floor to a sum.
EXP_FLOOR = {torch.float32: -87.0, torch.float64: -708.0}
# Work per step, by device: on a CPU, blocks that stay in cache; on an accelerator, large blocks
# (few kernel launches). BLOCK: pairwise densities of the mixture; ROWS: codes decoded at once.
BLOCK_ELEMENTS = {"cpu": 2**18, "accelerator": 2**24}
IWAE_ROWS = {"cpu": 2048, "accelerator": 2**16}


def _per_device(sizes: dict[str, int], device: torch.device) -> int:
    return sizes["cpu" if device.type == "cpu" else "accelerator"]


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) of each variable, elementwise (broadcasting): ``(..., D)`` nats."""
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar + LOG_2PI)


# ---------------------------------------------------------------------------- results

def _finite_or_none(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: values not computed (NaN) become null."""
    return [float(v) if math.isfinite(v) else None for v in values]


@dataclass(frozen=True)
class MutualInformation:
    """I(x; z) and I(x; z_j) in nats over ``n`` images, ``samples`` codes each.

    ``per_variable`` and ``per_variable_standard_error`` are ``(D,)``. The standard errors are
    over the n * samples code terms (they leave out the mixture's own finite-N error).
    """

    n: int
    samples: int
    joint: float
    joint_standard_error: float
    per_variable: np.ndarray
    per_variable_standard_error: np.ndarray
    seconds: float

    @property
    def log_n(self) -> float:
        """The estimator's ceiling: no estimate over n images exceeds log n."""
        return math.log(self.n)

    @property
    def per_variable_sum(self) -> float:
        """sum_j I(x; z_j): equals I(x; z) only when the variables are independent given nothing."""
        return float(self.per_variable.sum())

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "samples_per_point": self.samples,
            "joint": self.joint,
            "joint_standard_error": self.joint_standard_error,
            "log_n_upper_bound": self.log_n,
            "per_variable": _finite_or_none(self.per_variable),
            "per_variable_standard_error": _finite_or_none(self.per_variable_standard_error),
            "per_variable_sum": self.per_variable_sum if math.isfinite(self.per_variable_sum) else None,
            "estimator": "He et al. 2019: aggregate posterior = mixture of the n posteriors",
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class ImportanceWeightedBound:
    """The importance-weighted bound on log p(x), nats per image, for each K of ``ks``.

    ``bounds`` and ``standard_errors`` (over images) are ``(len(ks),)``; ``samples`` is the pool
    size max(ks); ``likelihood`` the decoder's ("bernoulli" or "gaussian"); ``binarize`` the
    ``data.binarize`` setting of the images (a likelihood is comparable with the literature's
    binarised-MNIST figures only when it is not "none").
    """

    n: int
    samples: int
    ks: tuple[int, ...]
    bounds: np.ndarray
    standard_errors: np.ndarray
    likelihood: str
    binarize: str
    seconds: float

    def bound(self, k: int) -> float:
        return float(self.bounds[self.ks.index(k)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "samples_per_image": self.samples,
            "likelihood": self.likelihood,
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


# ---------------------------------------------------------------------------- shared plumbing

@contextlib.contextmanager
def _evaluating(model: LatentModelAdapter) -> Iterator[None]:
    """Eval mode and no gradients for the block, then the model's mode as it was."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _image_batches(images: np.ndarray | torch.Tensor, batch_size: int,
                   device: torch.device) -> Iterator[torch.Tensor]:
    """Float32 batches in [0, 1] on ``device`` (uint8 = value / 255)."""
    if len(images) == 0:
        raise VaescopeError("the measures need at least one image; the images given are empty")
    for start in range(0, len(images), batch_size):
        yield as_float(torch.as_tensor(images[start : start + batch_size]).to(device))


def encode_all(model: Any, images: np.ndarray | torch.Tensor, batch_size: int = 2000,
               device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """mu and logvar of every image, each ``(N, D)`` float32 (float64 if the encoder gives it) on the
    model's device (or ``device``)."""
    model = as_latent_model(model)
    device = torch.device(device) if device is not None else model.device
    with _evaluating(model):
        parts = [model.encode(x) for x in _image_batches(images, batch_size, device)]
    mu, logvar = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if mu.dtype != torch.float64:  # half or bfloat16 encoders: measure in float32
        mu, logvar = mu.float(), logvar.float()
    return mu, logvar


def _mean_and_error(terms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over dim 0 of ``(R, ...)`` terms."""
    mean = terms.mean(0)
    spread = terms.std(0) if len(terms) > 1 else torch.zeros_like(mean)
    return mean, spread / math.sqrt(len(terms))


# ---------------------------------------------------------------------------- mutual information

def _log_mixture_ratio_joint(z: torch.Tensor, own: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                             block_elements: int) -> torch.Tensor:
    """log sum_n q(z_r|x_n) / q(z_r|x_own(r)) for codes ``z`` ``(R, D)`` with their own log density
    ``own`` ``(R,)``: ``(R,)``, in float64.

    log q(z|x_n) is expanded as [z^2, z] . [-1/(2 v_n), mu_n / v_n] + c_n (one matrix product per
    block); float64 keeps the cancellation of those large terms harmless (~1e-16 mu^2 / sigma^2).
    Shifting by the code's own density makes the n = own term 1 (to that rounding), so blocks add
    up without a running maximum and the sum is at least 1.
    """
    z, own, mu, logvar = z.double(), own.double(), mu.double(), logvar.double()
    inv_var = torch.exp(-logvar)
    weights = torch.cat([-0.5 * inv_var, mu * inv_var], dim=1)                 # (N, 2D)
    offsets = -0.5 * (mu.square() * inv_var + logvar + LOG_2PI).sum(1)        # (N,)
    features = torch.cat([z.square(), z], dim=1)                               # (R, 2D)
    n, r = len(mu), len(z)
    cols = min(n, max(1, block_elements // 64))
    rows = max(1, block_elements // cols)
    sums = torch.zeros(r, dtype=torch.float64, device=z.device)
    for r0 in range(0, r, rows):
        shift = own[r0 : r0 + rows, None]
        for n0 in range(0, n, cols):
            block = torch.addmm(offsets[None, n0 : n0 + cols], features[r0 : r0 + rows], weights[n0 : n0 + cols].T)
            sums[r0 : r0 + rows] += block.sub_(shift).clamp_(min=EXP_FLOOR[torch.float64]).exp_().sum(1)
    log_sums = sums.log()
    for row in (~torch.isfinite(sums)).nonzero().squeeze(1).tolist():  # a density e^709 times the own one
        full = torch.addmv(offsets, weights, features[row]) - own[row]       # rare: the whole row at once
        log_sums[row] = torch.logsumexp(full, dim=0)
    return log_sums


def _log_mixture_ratio_per_variable(z: torch.Tensor, own: torch.Tensor, mu: torch.Tensor,
                                    logvar: torch.Tensor, block_elements: int) -> torch.Tensor:
    """log sum_n q(z_rj|x_nj) / q(z_rj|x_own(r)j) of each variable: ``(R, D)`` from codes ``(R, D)``
    and their own per-variable log densities ``own`` ``(R, D)``.

    Centred form, precise in float32: t = (z - mu_n) / sigma_n (z - mu_n first: exact for the near
    components that matter, where the expanded square would cancel terms of size mu^2 / sigma^2), then
    sum_n exp(log w_n - t^2 / 2) with w_n = 1 / sqrt(2 pi v_n) scaled by its largest value, so that
    no term exceeds 1.
    """
    dim = z.shape[1]
    mu_t = mu.T.unsqueeze(1).contiguous()                                      # (D, 1, N)
    inv_sigma = torch.exp(-0.5 * logvar).T.unsqueeze(1).contiguous()          # (D, 1, N)
    log_w = -0.5 * (logvar.T + LOG_2PI)                                        # (D, N)
    log_w_max = log_w.amax(1, keepdim=True)                                    # (D, 1)
    log_w = (log_w - log_w_max).unsqueeze(1)                                   # (D, 1, N), <= 0
    n, r = mu.shape[0], len(z)
    cols = min(n, max(1, block_elements // dim))
    rows = max(1, block_elements // (dim * cols))
    zt = z.T.unsqueeze(2)                                                      # (D, R, 1)
    floor = EXP_FLOOR[z.dtype]
    sums = torch.zeros(dim, r, dtype=z.dtype, device=z.device)
    for r0 in range(0, r, rows):
        zr = zt[:, r0 : r0 + rows]
        for n0 in range(0, n, cols):
            t = (zr - mu_t[:, :, n0 : n0 + cols]).mul_(inv_sigma[:, :, n0 : n0 + cols])  # (D, rows, cols)
            terms = torch.addcmul(log_w[:, :, n0 : n0 + cols], t, t, value=-0.5)
            sums[:, r0 : r0 + rows] += terms.clamp_(min=floor).exp_().sum(2)
    log_sum = sums.double().log().T + log_w_max.double().T                     # (R, D)
    # A sum near n e^floor is made of clamped terms: the code lies far out of every component
    # (only possible in float32, for codes > 13 sigma from their own mean); again in float64.
    underflow = (sums <= 2 * n * math.exp(floor)).any(0).nonzero().squeeze(1)
    if len(underflow) and z.dtype != torch.float64:
        log_sum[underflow] = _log_mixture_ratio_per_variable(
            z[underflow].double(), torch.zeros_like(own[underflow], dtype=torch.float64), mu.double(),
            logvar.double(), block_elements)
    return log_sum - own.double()


def mutual_information(
    model: Any,
    images: np.ndarray | torch.Tensor,
    samples: int = 1,
    seed: int = 0,
    per_variable: bool = True,
    batch_size: int = 2000,
    block_elements: int | None = None,
    device: str | torch.device | None = None,
) -> MutualInformation:
    """I(x; z) and I(x; z_j) of ``model``'s encoder over ``images`` ``(N, C, H, W)`` (He et al. 2019).

    ``samples``: codes drawn from each q(z|x_i) (noise from a generator seeded with ``seed`` on
    the model's device). The aggregate posterior is the mixture of all N posteriors, summed in
    blocks of ``block_elements`` pairwise densities (default: :data:`BLOCK_ELEMENTS` for the device). Every estimate is at most log N (see the
    module docstring). ``per_variable=False`` skips I(x; z_j) (its cost is D times the joint's).
    """
    if samples < 1:
        raise VaescopeError(f"mutual_information: samples is {samples}; draw at least 1 code per image")
    model = as_latent_model(model)
    started = time.perf_counter()
    mu, logvar = encode_all(model, images, batch_size, device)
    n, dim = mu.shape
    block_elements = block_elements or _per_device(BLOCK_ELEMENTS, mu.device)
    generator = torch.Generator(device=mu.device).manual_seed(seed)
    eps = torch.randn((samples, n, dim), generator=generator, device=mu.device, dtype=mu.dtype)
    z = (mu + torch.exp(0.5 * logvar) * eps).reshape(samples * n, dim)         # (S N, D)
    # log q(z|x_own) at the code as stored (rounded), so that the n = own ratio is 1
    own = gaussian_log_density(z.double(), mu.double().repeat(samples, 1), logvar.double().repeat(samples, 1))
    joint_terms = math.log(n) - _log_mixture_ratio_joint(z, own.sum(1), mu, logvar, block_elements)
    joint, joint_error = _mean_and_error(joint_terms)
    if per_variable:
        per_terms = math.log(n) - _log_mixture_ratio_per_variable(z, own, mu, logvar, block_elements)
        per, per_error = _mean_and_error(per_terms)
    else:
        per = per_error = torch.full((dim,), float("nan"), dtype=torch.float64)
    return MutualInformation(
        n=n, samples=samples, joint=float(joint), joint_standard_error=float(joint_error),
        per_variable=per.cpu().numpy(), per_variable_standard_error=per_error.cpu().numpy(),
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------- importance-weighted bound

def _log_weights(model: LatentModelAdapter, x: torch.Tensor, samples: int, kind: str,
                 generator: torch.Generator, rows: int) -> torch.Tensor:
    """log p(x, z_k) - log q(z_k|x) for ``samples`` codes of each image of ``x`` ``(b, C, H, W)``:
    ``(samples, b)`` float64. Noise: ``torch.randn((k, b, D))`` per chunk of k <= rows / b codes."""
    mu, logvar = model.encode(x)                                               # (b, D)
    b = len(x)
    chunk = max(1, rows // b)
    out = torch.empty(samples, b, dtype=torch.float64, device=x.device)
    for k0 in range(0, samples, chunk):
        k = min(chunk, samples - k0)
        eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps                                 # (k, b, D)
        log_q = gaussian_log_density(z, mu, logvar).sum(-1)
        log_prior = gaussian_log_density(z, z.new_zeros(()), z.new_zeros(())).sum(-1)
        logits = model.decode(z.reshape(k * b, -1))
        targets = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        log_px = log_likelihood(logits, targets, kind).reshape(k, b)
        out[k0 : k0 + k] = (log_px + log_prior - log_q).double()
    return out


def importance_weighted_bound(
    model: Any,
    images: np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 10, 100, 1000),
    kind: str | None = None,
    binarize: str = "none",
    seed: int = 0,
    rows: int | None = None,
    device: str | torch.device | None = None,
) -> ImportanceWeightedBound:
    """The importance-weighted bound (Burda et al. 2016) of each K in ``ks`` over ``images`` ``(N, C, H, W)``.

    ``kind``: the decoder's likelihood ("bernoulli" or "gaussian"; default: what the model says,
    else "bernoulli"). ``binarize``: how ``images`` were binarised, recorded with the result.
    Images go ``max(1, rows // max(ks))`` at a time; at most ``rows`` codes are decoded at once
    (default: :data:`IWAE_ROWS` for the device).
    Noise comes from a generator seeded with ``seed`` on the model's device.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise VaescopeError(f"importance_weighted_bound: K values {list(ks)}; give one or more K >= 1")
    model = as_latent_model(model)
    kind = kind or model.reconstruction or "bernoulli"
    pool = max(ks)
    device = torch.device(device) if device is not None else model.device
    rows = rows or _per_device(IWAE_ROWS, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    started = time.perf_counter()
    sums = torch.zeros(2, len(ks), dtype=torch.float64, device=device)        # sum and sum of squares
    n = 0
    with _evaluating(model):
        for x in _image_batches(images, max(1, rows // pool), device):
            log_w = _log_weights(model, x, pool, kind, generator, rows)       # (pool, b)
            for i, k in enumerate(ks):
                groups = pool // k
                grouped = log_w[: groups * k].reshape(groups, k, -1)
                per_image = (torch.logsumexp(grouped, dim=1) - math.log(k)).mean(0)  # (b,)
                sums[0, i] += per_image.sum()
                sums[1, i] += per_image.square().sum()
            n += len(x)
    total, squares = sums.cpu().numpy()
    bounds = total / n
    variance = np.maximum(squares / n - bounds**2, 0.0) * n / max(n - 1, 1)
    return ImportanceWeightedBound(
        n=n, samples=pool, ks=ks, bounds=bounds, standard_errors=np.sqrt(variance / n),
        likelihood=kind, binarize=binarize, seconds=time.perf_counter() - started,
    )
