"""Generation with inactive variables zeroed (the sparsity article, Figure 2).

The sparsity article shows digits decoded from normal samples of all variables above the same samples with
the inactive variables set to 0, and calls them indistinguishable. To make that checkable we
measure, over many samples, the mean absolute difference of the decoded pixel means
(sigmoid of the logits, in [0, 1]) caused by zeroing the inactive variables, against a control:
zeroing the same number of *active* variables (all of them when fewer are active), chosen as
the active ones with the lowest mean KL: the least informative active variables, so the control
is the smallest effect that many active variables could have. Beside it: zeroing the single
lowest-KL active variable, and the average over random choices of active variables (when there
is a choice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vaescope.models.adapters import as_latent_model
from vaescope.models.objectives import LatentModel


def _device_of(model: LatentModel) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def decode_means(model: LatentModel, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Pixel means sigmoid(decode(z)): ``(N, D)`` codes -> ``(N, C, H, W)`` in [0, 1]."""
    model = as_latent_model(model)
    parts = [torch.sigmoid(model.decode(z[s : s + batch_size])) for s in range(0, len(z), batch_size)]
    return torch.cat(parts)


def zero_variables(z: torch.Tensor, variables: np.ndarray | list[int]) -> torch.Tensor:
    """Copy of ``z`` ``(N, D)`` with the listed variables set to 0."""
    out = z.clone()
    out[:, list(np.asarray(variables, dtype=int))] = 0.0
    return out


@torch.no_grad()
def zeroing_difference(model: LatentModel, z: torch.Tensor, variables: np.ndarray | list[int]) -> float:
    """Mean over samples and pixels of |sigmoid(decode(z)) - sigmoid(decode(z with variables = 0))|."""
    if len(variables) == 0:
        return 0.0
    full = decode_means(model, z)
    zeroed = decode_means(model, zero_variables(z, variables))
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
        }


def prior_samples(n: int, latent_dim: int, seed: int, device: torch.device | None = None) -> torch.Tensor:
    """``(n, latent_dim)`` standard normal codes from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, latent_dim, generator=generator).to(device or torch.device("cpu"))


def generation_check(model: LatentModel, active: np.ndarray, kl_mean: np.ndarray, n_samples: int = 1000,
                     seed: int = 0, random_draws: int = 20) -> GenerationCheck:
    """Zero the inactive variables of ``n_samples`` prior samples and measure the change in the
    decoded images, against zeroing as many active variables.

    ``active`` ``(D,)`` bool verdicts and ``kl_mean`` ``(D,)`` from :mod:`vaescope.measures.statistics`.
    """
    model = as_latent_model(model)
    active = np.asarray(active, dtype=bool)
    inactive = np.flatnonzero(~active)
    z = prior_samples(n_samples, len(active), seed, _device_of(model))
    control = lowest_kl_active(np.asarray(kl_mean), active, len(inactive))
    single = lowest_kl_active(np.asarray(kl_mean), active, 1)
    candidates = np.flatnonzero(active)
    rng = np.random.default_rng(seed)
    random_diffs = []
    if 0 < len(control) < len(candidates):  # otherwise every draw is the control itself
        for _ in range(random_draws):
            pick = rng.choice(candidates, size=len(control), replace=False)
            random_diffs.append(zeroing_difference(model, z, pick))
    return GenerationCheck(
        n_samples=n_samples,
        inactive=inactive,
        control=control,
        inactive_zeroed_mean_abs_diff=zeroing_difference(model, z, inactive),
        active_zeroed_mean_abs_diff=zeroing_difference(model, z, control),
        single_active_zeroed_mean_abs_diff=zeroing_difference(model, z, single),
        active_zeroed_random_mean_abs_diff=float(np.mean(random_diffs)) if random_diffs else None,
        random_draws=len(random_diffs),
    )


def generation_rows(model: LatentModel, active: np.ndarray, n: int = 10, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The figure's two rows: ``n`` images from prior samples, and the same samples with the
    inactive variables zeroed; each ``(n, C, H, W)`` float in [0, 1]."""
    model = as_latent_model(model)
    active = np.asarray(active, dtype=bool)
    z = prior_samples(n, len(active), seed, _device_of(model))
    full = decode_means(model, z)
    zeroed = decode_means(model, zero_variables(z, np.flatnonzero(~active)))
    return full.cpu().numpy(), zeroed.cpu().numpy()
