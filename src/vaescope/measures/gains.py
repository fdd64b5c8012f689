"""Reconstruction gain per latent variable (the sparsity article).

The gain of variable j is how much worse the decoder reconstructs the data when j is zeroed:

    gain_j = mean_X [ rec(X; code = mu(X) with mu_j = 0) - rec(X; code = mu(X)) ]

with ``rec`` the reconstruction error of :func:`vaescope.models.objectives.reconstruction_error` (nats per
image for the Bernoulli decoder). The code is the posterior mean, so the measure is deterministic.
A variable the decoder ignores gains exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vaescope.data.batches import as_float
from vaescope.models.adapters import as_latent_model
from vaescope.models.objectives import LatentModel, reconstruction_error


@dataclass(frozen=True)
class ReconstructionGain:
    """``variables`` ``(K,)`` indices, ``zeroed_error`` and ``gain`` ``(K,)``; ``baseline_error`` a number."""

    variables: np.ndarray
    baseline_error: float
    zeroed_error: np.ndarray
    gain: np.ndarray

    def to_dict(self) -> dict[str, object]:
        return {
            "variables": self.variables.tolist(),
            "baseline_error": self.baseline_error,
            "gain": self.gain.tolist(),
        }


@torch.no_grad()
def reconstruction_gain(
    model: LatentModel,
    x: np.ndarray | torch.Tensor,
    kind: str = "bernoulli",
    variables: list[int] | np.ndarray | None = None,
    always_zero: list[int] | np.ndarray = (),
    batch_size: int = 1000,
) -> ReconstructionGain:
    """Reconstruction gain of each of ``variables`` (default: all) over images ``x`` ``(N, C, H, W)``.

    ``always_zero``: variables set to 0 in the baseline and in every intervention (e.g. variables
    kept silenced during an experiment), so the gain of j is measured in their absence.
    ``kind`` is the run's ``loss.reconstruction``. ``model``: anything :func:`vaescope.as_latent_model` accepts.
    """
    model = as_latent_model(model)
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    device = first.device if first is not None else torch.device("cpu")
    if hasattr(model, "eval"):
        model.eval()
    silenced = list(np.asarray(always_zero, dtype=int))
    chosen: np.ndarray | None = None if variables is None else np.asarray(variables, dtype=int)
    baseline_sum = 0.0
    zeroed_sums: np.ndarray | None = None
    n = 0
    for start in range(0, len(x), batch_size):
        batch = as_float(torch.as_tensor(x[start : start + batch_size]).to(device))
        mu, _ = model.encode(batch)  # (B, D)
        if silenced:
            mu[:, silenced] = 0.0
        if chosen is None:
            chosen = np.arange(mu.shape[1])
        if zeroed_sums is None:
            zeroed_sums = np.zeros(len(chosen))
        baseline_sum += float(reconstruction_error(model.decode(mu), batch, kind).double().sum())
        for k, j in enumerate(chosen):
            code = mu.clone()
            code[:, j] = 0.0
            zeroed_sums[k] += float(reconstruction_error(model.decode(code), batch, kind).double().sum())
        n += len(batch)
    if n == 0 or chosen is None or zeroed_sums is None:
        raise ValueError("reconstruction_gain needs at least one image")
    zeroed = zeroed_sums / n
    baseline = baseline_sum / n
    return ReconstructionGain(variables=chosen, baseline_error=baseline, zeroed_error=zeroed,
                              gain=zeroed - baseline)
