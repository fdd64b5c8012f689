"""Ex-post samplers of a trained VAE's latent space, and decoding their codes into images.

A VAE generates by decoding z ~ N(0, I). When some variables are inactive and the active ones do
not fill the prior (the aggregate posterior is not N(0, I)), prior samples land where no training
code lies. Two remedies fitted after training on the posterior means of the active variables:

- a Gaussian mixture (scikit-learn's ``GaussianMixture``; the Split-VAE work of Asperti et al.
  fits 100 components), sampled here with NumPy from its weights, means and covariances;
- a second VAE on the codes (Dai & Wipf 2019): :mod:`vaescope.training.two_stage`.

The inactive variables are set to 0 (their prior mean; the decoder ignores them) in every sampler
but the prior one, which draws all D variables from N(0, I).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaescope.core.errors import VaescopeError
from vaescope.measures.generation import decode_means
from vaescope.models.adapters import as_latent_model
from vaescope.models.isolation import untouched


@torch.no_grad()
def posterior_means(model: Any, images: np.ndarray | torch.Tensor, batch_size: int = 2000) -> np.ndarray:
    """The encoder's means over ``images`` ``(N, C, H, W)`` (uint8: value / 255): ``(N, D)`` float32."""
    adapter = as_latent_model(model)
    parts = []
    with untouched(adapter):
        for start in range(0, len(images), batch_size):
            x = torch.as_tensor(np.asarray(images[start : start + batch_size]))
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            mu, _ = adapter.encode(x.to(adapter.device))
            parts.append(mu.float().cpu().numpy())
    return np.concatenate(parts)


@dataclass(frozen=True)
class GaussianMixtureFit:
    """A fitted mixture over the active codes: ``weights`` ``(C,)``, ``means`` ``(C, k)``,
    ``covariances`` ``(C, k, k)`` (full), float64; ``converged`` as scikit-learn reports it."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    converged: bool
    iterations: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "means": self.means, "covariances": self.covariances}


def fit_gaussian_mixture(codes: np.ndarray, components: int = 100, seed: int = 0, max_iter: int = 100,
                         reg_covar: float = 1e-6) -> GaussianMixtureFit:
    """scikit-learn's ``GaussianMixture`` (full covariances, k-means initialisation, ``random_state=seed``)
    fitted on ``codes`` ``(N, k)``; fewer components when there are fewer than 2 codes per component."""
    from sklearn.mixture import GaussianMixture

    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or len(codes) < 2 or codes.shape[1] < 1:
        raise VaescopeError(f"the Gaussian mixture needs codes (N >= 2, k >= 1); got shape {codes.shape}: "
                            "does the model have an active variable?")
    components = max(1, min(components, len(codes) // 2))
    mixture = GaussianMixture(components, covariance_type="full", max_iter=max_iter, reg_covar=reg_covar,
                              random_state=seed)
    mixture.fit(codes)
    return GaussianMixtureFit(mixture.weights_.astype(np.float64), mixture.means_.astype(np.float64),
                              mixture.covariances_.astype(np.float64), bool(mixture.converged_), int(mixture.n_iter_))


def sample_gaussian_mixture(fit: GaussianMixtureFit, n: int, seed: int) -> np.ndarray:
    """``(n, k)`` float64 draws: each from component c with probability weights[c], then
    means[c] + L_c eps with L_c the Cholesky factor of covariances[c] and eps ~ N(0, I)."""
    rng = np.random.default_rng(seed)
    weights = fit.weights / fit.weights.sum()
    component = rng.choice(len(weights), size=n, p=weights)
    eps = rng.standard_normal((n, fit.means.shape[1]))
    factors = np.linalg.cholesky(fit.covariances)                              # (C, k, k)
    return fit.means[component] + np.einsum("nij,nj->ni", factors[component], eps)


def full_codes(active: np.ndarray, values: np.ndarray | torch.Tensor, latent_dim: int) -> torch.Tensor:
    """``(n, D)`` codes: ``values`` ``(n, k)`` in the ``active`` variables (indices or a ``(D,)`` bool
    mask), 0 in the others."""
    active = np.flatnonzero(active) if np.asarray(active).dtype == bool else np.asarray(active, dtype=int)
    values = torch.as_tensor(np.asarray(values), dtype=torch.float32)
    if values.ndim != 2 or values.shape[1] != len(active):
        raise VaescopeError(f"codes of shape {tuple(values.shape)} for {len(active)} active variables; "
                            "give one column per active variable")
    z = torch.zeros(len(values), latent_dim)
    z[:, torch.as_tensor(active, dtype=torch.long)] = values
    return z


def images_of_codes(model: Any, z: torch.Tensor) -> torch.Tensor:
    """The decoder's pixel means at ``z`` ``(n, D)``: ``(n, C, H, W)`` in [0, 1], on the CPU."""
    adapter = as_latent_model(model)
    with untouched(adapter):
        return decode_means(adapter, z.to(adapter.device)).float().cpu()
