"""Information measures of a VAE's code: the mutual information I(x; z) and I(x; z_j).

**Mutual information** (He et al. 2019, "Lagging Inference Networks and Posterior Collapse in
Variational Autoencoders", section 4): with the aggregate posterior q(z) = (1/N) sum_n q(z|x_n),
the mixture of the encoder's posteriors over the N evaluated images,

    I(x; z) = E_x E_{q(z|x)} [log q(z|x)] - E_x E_{q(z|x)} [log q(z)].

Each image i gets ``samples`` codes z ~ q(z|x_i); both terms are read at the same codes, so the
estimate of one code is log N - log sum_n q(z|x_n) / q(z|x_i), which the n = i term caps at log N:
the estimate can never exceed **log N** (9.21 nats for 10,000 images), whatever the true value.
Per variable, I(x; z_j) uses the one-dimensional marginals q(z_j|x) and q(z_j) the same way.
The mixture is summed in blocks (memory set by ``block_elements``, never N x N at once).

**Large data.** Above ``max_points`` points (10,000 by default) the estimate is made on a random
subsample of M = ``max_points`` of them (drawn from a generator seeded with ``seed``), with its
standard error and its ceiling log M; the result says so (``subsample`` in ``to_dict``).

The importance-weighted bound is in :mod:`vaescope.measures.bound`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaescope.core.errors import VaescopeError
from vaescope.data.batches import BatchKey, DataSource, InputFn, count_rows
from vaescope.measures.reading import encode, gaussian_log_density, model_batches
from vaescope.models.adapters import LatentModelAdapter, as_latent_model
from vaescope.models.isolation import untouched

LOG_2PI = math.log(2.0 * math.pi)
# exp() of arguments below these takes a slow path (~10x) and gives subnormal numbers or 0:
# arguments are clamped here first, each clamped term adding at most e^floor to a sum.
EXP_FLOOR = {torch.float32: -87.0, torch.float64: -708.0}
# Work per step, by device: on a CPU, blocks that stay in cache; on an accelerator, large blocks
# (few kernel launches): pairwise densities of the mixture.
BLOCK_ELEMENTS = {"cpu": 2**18, "accelerator": 2**24}
# Above this many points the mixture (O(N^2) pairs) is estimated on a random subsample of this size.
MAX_POINTS = 10_000


def _per_device(sizes: dict[str, int], device: torch.device) -> int:
    return sizes["cpu" if device.type == "cpu" else "accelerator"]


# ---------------------------------------------------------------------------- results

def _finite_or_none(values: np.ndarray) -> list[float | None]:
    """JSON has no NaN: values not computed (NaN) become null."""
    return [float(v) if math.isfinite(v) else None for v in values]


@dataclass(frozen=True)
class MutualInformation:
    """I(x; z) and I(x; z_j) in nats over ``n`` images, ``samples`` codes each.

    ``per_variable`` and ``per_variable_standard_error`` are ``(D,)``. The standard errors are
    over the n * samples code terms (they leave out the mixture's own finite-N error).
    ``total``: the points of the data; when it exceeds ``n``, the estimate is on a random subsample
    of ``n`` of them drawn with ``subsample_seed`` (None: all points were used).
    """

    n: int
    samples: int
    joint: float
    joint_standard_error: float
    per_variable: np.ndarray
    per_variable_standard_error: np.ndarray
    seconds: float
    total: int | None = None
    subsample_seed: int | None = None

    @property
    def subsampled(self) -> bool:
        return self.total is not None and self.total > self.n

    def describe(self) -> str:
        """Over what the estimate was made, and its ceiling, in one sentence."""
        over = (f"a random subsample of {self.n} of the {self.total} points (seed {self.subsample_seed})"
                if self.subsampled else f"{self.n} points")
        return (f"I(x; z) estimated over {over}, {self.samples} code(s) each (He et al. 2019); no estimate over "
                f"{self.n} points exceeds log {self.n} = {self.log_n:.2f} nats")

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
            "subsample": ({"points": self.n, "of": self.total, "seed": self.subsample_seed}
                          if self.subsampled else None),
            "description": self.describe(),
            "seconds": self.seconds,
        }


# ---------------------------------------------------------------------------- shared plumbing

def _encode_rows(model: LatentModelAdapter, data: DataSource, batch_size: int, batch_key: BatchKey,
                 input_fn: InputFn | None, device: str | torch.device | None,
                 keep: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """mu and logvar ``(M, D)`` of the rows of ``data`` (only the sorted row indices ``keep`` when given),
    float32 (float64 if the encoder gives it); to be called inside ``untouched``."""
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    start = 0
    for x in model_batches(model, data, batch_size=batch_size, batch_key=batch_key, input_fn=input_fn, device=device):
        if keep is not None:
            offset, start = start, start + len(x)
            lo, hi = np.searchsorted(keep, [offset, start])
            if lo == hi:
                continue
            x = x[torch.as_tensor(keep[lo:hi] - offset, device=x.device)]
        parts.append(encode(model, x))
    if not parts:
        raise VaescopeError("the information measures got no data point; give at least one row of data")
    mu, logvar = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if mu.dtype != torch.float64:  # half or bfloat16 encoders: measure in float32
        mu, logvar = mu.float(), logvar.float()
    return mu, logvar


def encode_all(model: Any, data: DataSource, batch_size: int = 2000, device: str | torch.device | None = None, *,
               batch_key: BatchKey = None, input_fn: InputFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """mu and logvar of every row of ``data``, each ``(N, D)`` float32 (float64 if the encoder gives it) on the
    model's device (or ``device``), measured under :func:`vaescope.models.isolation.untouched`."""
    model = as_latent_model(model)
    with untouched(model):
        return _encode_rows(model, data, batch_size, batch_key, input_fn, device)


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


def subsample_rows(total: int, size: int, seed: int) -> np.ndarray | None:
    """Sorted indices of ``size`` of ``total`` rows drawn without replacement from a generator seeded with
    ``seed`` (its own: no global state), or None when ``total <= size`` (every row is used)."""
    if total <= size:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))


def mutual_information(
    model: Any,
    images: DataSource,
    samples: int = 1,
    seed: int = 0,
    per_variable: bool = True,
    batch_size: int = 2000,
    block_elements: int | None = None,
    device: str | torch.device | None = None,
    *,
    max_points: int = MAX_POINTS,
    batch_key: BatchKey = None,
    input_fn: InputFn | None = None,
) -> MutualInformation:
    """I(x; z) and I(x; z_j) of ``model``'s encoder over the data ``images`` (He et al. 2019).

    ``images``: anything :func:`vaescope.data.batches.iter_batches` reads (arrays of images, vectors or
    tokens, a DataLoader, ...; ``batch_key=``, ``input_fn=``). ``samples``: codes drawn from each q(z|x_i)
    (noise from the generator of :func:`vaescope.models.isolation.untouched`, seeded with ``seed``). The
    aggregate posterior is the mixture of all N posteriors, summed in blocks of ``block_elements`` pairwise
    densities (default: :data:`BLOCK_ELEMENTS` for the device). Every estimate is at most log N (see the
    module docstring). Above ``max_points`` points, a random subsample of ``max_points`` of them (seed
    ``seed``) is used, and the result says so. ``per_variable=False`` skips I(x; z_j) (its cost is D
    times the joint's).
    """
    if samples < 1:
        raise VaescopeError(f"mutual_information: samples is {samples}; draw at least 1 code per image")
    if max_points < 2:
        raise VaescopeError(f"mutual_information: max_points is {max_points}; give at least 2")
    model = as_latent_model(model)
    started = time.perf_counter()
    if isinstance(images, Iterator):  # a generator is read once: keep its batches for the second pass
        images = list(images)
    with untouched(model, seed=seed) as generator:  # reading a DataLoader draws its seed from torch's generator
        total = count_rows(images, batch_size=batch_size, batch_key=batch_key, input_fn=input_fn)
        keep = subsample_rows(total, max_points, seed)
        mu, logvar = _encode_rows(model, images, batch_size, batch_key, input_fn, device, keep)
        n, dim = mu.shape
        block_elements = block_elements or _per_device(BLOCK_ELEMENTS, mu.device)
        if generator.device != mu.device:
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
        seconds=time.perf_counter() - started, total=total, subsample_seed=None if keep is None else seed,
    )

