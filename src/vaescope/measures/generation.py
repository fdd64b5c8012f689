"""Generation with inactive variables zeroed (the sparsity article, Figure 2).

The sparsity article shows digits decoded from normal samples of all variables above the same samples with
the inactive variables set to 0, and calls them indistinguishable. To make that checkable we
measure, over many samples, the mean absolute difference of the decoded pixel means
(sigmoid of the logits, in [0, 1]) caused by zeroing the inactive variables, against a control:
zeroing the same number of *active* variables (all of them when fewer are active), chosen as
the active ones with the lowest mean KL: the least informative active variables, so the control
is the smallest effect that many active variables could have. Beside it: zeroing the single
lowest-KL active variable, and the average over random choices of active variables (when there
is a choice). For data that are not images, the means compared are E[x | z] of the decoder's own
likelihood (decoded vectors, counts, or token probabilities ``(T, V)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaescope.measures.reading import Decoder, LikelihoodSpec, decoder, floating_dtype
from vaescope.models.adapters import LatentModelAdapter, as_latent_model
from vaescope.models.isolation import untouched
from vaescope.models.objectives import LatentModel


def _decoder(model: LatentModelAdapter, latent_dim: int, likelihood: LikelihoodSpec | Decoder) -> Decoder:
    return likelihood if isinstance(likelihood, Decoder) else decoder(model, likelihood, latent_dim)


def decode_means(model: LatentModel | Any, z: torch.Tensor, batch_size: int = 1000,
                 likelihood: LikelihoodSpec | Decoder = None) -> torch.Tensor:
    """The decoder's means E[x | z] of codes ``z`` ``(N, D)``: ``(N, ...)`` (pixel means sigmoid(logits)
    in [0, 1] for vaescope's image models; ``(N, T, V)`` token probabilities for a categorical
    likelihood), under :func:`vaescope.models.isolation.untouched`."""
    model = as_latent_model(model)
    with untouched(model):
        dec = _decoder(model, z.shape[1], likelihood)
        z = z.to(device=model.device, dtype=floating_dtype(model) or z.dtype)
        parts = [dec.mean(z[s : s + batch_size]) for s in range(0, len(z), batch_size)]
    return torch.cat(parts)


def zero_variables(z: torch.Tensor, variables: np.ndarray | list[int]) -> torch.Tensor:
    """Copy of ``z`` ``(N, D)`` with the listed variables set to 0."""
    out = z.clone()
    out[:, list(np.asarray(variables, dtype=int))] = 0.0
    return out


def zeroing_difference(model: LatentModel | Any, z: torch.Tensor, variables: np.ndarray | list[int],
                       likelihood: LikelihoodSpec | Decoder = None) -> float:
    """Mean over samples and elements of |E[x | z] - E[x | z with variables = 0]| (pixel means for images)."""
    if len(variables) == 0:
        return 0.0
    full = decode_means(model, z, likelihood=likelihood)
    zeroed = decode_means(model, zero_variables(z, variables), likelihood=likelihood)
    return float((full - zeroed).abs().double().mean())


def lowest_kl_active(kl_mean: np.ndarray, active: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` active variables with the smallest mean KL (fewer if fewer are active)."""
    candidates = np.flatnonzero(active)
    order = candidates[np.argsort(kl_mean[candidates], kind="stable")]
    return np.sort(order[:count])


@dataclass(frozen=True)
class GenerationCheck:
    """Result of :func:`generation_check`; index arrays list latent variables."""

    n_samples: int
    inactive: np.ndarray
    control: np.ndarray
    inactive_zeroed_mean_abs_diff: float
    active_zeroed_mean_abs_diff: float           # control: the lowest-KL active variables
    single_active_zeroed_mean_abs_diff: float    # the one lowest-KL active variable alone
    active_zeroed_random_mean_abs_diff: float | None  # random active variables, averaged; None: no choice
    random_draws: int
    likelihood: str = "Bernoulli on logits"  # whose means are compared

    def to_dict(self) -> dict[str, object]:
        return {
            "n_samples": self.n_samples,
            "inactive_variables": self.inactive.tolist(),
            "control_variables": self.control.tolist(),
            "control": "the active variables with the lowest mean KL, as many as are inactive "
                       "(all active ones when fewer are active)",
            "inactive_zeroed_mean_abs_diff": self.inactive_zeroed_mean_abs_diff,
            "active_zeroed_mean_abs_diff": self.active_zeroed_mean_abs_diff,
            "single_active_zeroed_mean_abs_diff": self.single_active_zeroed_mean_abs_diff,
            "active_zeroed_random_mean_abs_diff": self.active_zeroed_random_mean_abs_diff,
            "random_draws": self.random_draws,
            "likelihood": self.likelihood,
        }


def prior_samples(n: int, latent_dim: int, seed: int, device: torch.device | None = None) -> torch.Tensor:
    """``(n, latent_dim)`` standard normal codes from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, latent_dim, generator=generator).to(device or torch.device("cpu"))


def generation_check(model: LatentModel | Any, active: np.ndarray, kl_mean: np.ndarray, n_samples: int = 1000,
                     seed: int = 0, random_draws: int = 20, *, likelihood: LikelihoodSpec = None) -> GenerationCheck:
    """Zero the inactive variables of ``n_samples`` prior samples and measure the change in the
    decoded means (pixel means of images; E[x | z] of the decoder's ``likelihood`` in general),
    against zeroing as many active variables.

    ``active`` ``(D,)`` bool verdicts and ``kl_mean`` ``(D,)`` from :mod:`vaescope.measures.statistics`.
    The samples come from their own seeded generator; the model runs under ``untouched``.
    """
    model = as_latent_model(model)
    active = np.asarray(active, dtype=bool)
    inactive = np.flatnonzero(~active)
    with untouched(model):
        dec = decoder(model, likelihood, len(active))
    z = prior_samples(n_samples, len(active), seed, model.device)
    control = lowest_kl_active(np.asarray(kl_mean), active, len(inactive))
    single = lowest_kl_active(np.asarray(kl_mean), active, 1)
    candidates = np.flatnonzero(active)
    rng = np.random.default_rng(seed)
    random_diffs = []
    if 0 < len(control) < len(candidates):  # otherwise every draw is the control itself
        for _ in range(random_draws):
            pick = rng.choice(candidates, size=len(control), replace=False)
            random_diffs.append(zeroing_difference(model, z, pick, dec))
    return GenerationCheck(
        n_samples=n_samples,
        inactive=inactive,
        control=control,
        inactive_zeroed_mean_abs_diff=zeroing_difference(model, z, inactive, dec),
        active_zeroed_mean_abs_diff=zeroing_difference(model, z, control, dec),
        single_active_zeroed_mean_abs_diff=zeroing_difference(model, z, single, dec),
        active_zeroed_random_mean_abs_diff=float(np.mean(random_diffs)) if random_diffs else None,
        random_draws=len(random_diffs),
        likelihood=dec.describe(),
    )


def generation_rows(model: LatentModel | Any, active: np.ndarray, n: int = 10, seed: int = 0, *,
                    likelihood: LikelihoodSpec = None) -> tuple[np.ndarray, np.ndarray]:
    """The figure's two rows: the decoded means of ``n`` prior samples, and of the same samples with
    the inactive variables zeroed; each ``(n, ...)`` (``(n, C, H, W)`` in [0, 1] for images)."""
    model = as_latent_model(model)
    active = np.asarray(active, dtype=bool)
    z = prior_samples(n, len(active), seed, model.device)
    full = decode_means(model, z, likelihood=likelihood)
    zeroed = decode_means(model, zero_variables(z, np.flatnonzero(~active)), likelihood=likelihood)
    return full.cpu().numpy(), zeroed.cpu().numpy()
