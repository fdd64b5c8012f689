"""Reconstruction gain per latent variable (the sparsity article).

The gain of variable j is how much worse the decoder reconstructs the data when j is zeroed:

    gain_j = mean_X [ rec(X; code = mu(X) with mu_j = 0) - rec(X; code = mu(X)) ]

with ``rec`` = -log p(X | code), the decoder's own likelihood (:mod:`vaescope.models.likelihoods`;
by default the Bernoulli on logits of vaescope's image models, nats per example, which is exactly
:func:`vaescope.models.objectives.reconstruction_error`). The code is the posterior mean, so the
measure is deterministic. A variable the decoder ignores gains exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vaescope.core.errors import VaescopeError
from vaescope.data.batches import BatchKey, DataSource, InputFn
from vaescope.measures.reading import LikelihoodSpec, decoder, encode, model_batches
from vaescope.models.adapters import as_latent_model
from vaescope.models.isolation import untouched
from vaescope.models.objectives import LatentModel


@dataclass(frozen=True)
class ReconstructionGain:
    """``variables`` ``(K,)`` indices, ``zeroed_error`` and ``gain`` ``(K,)``; ``baseline_error`` a number;
    ``likelihood``: the phrase of the likelihood the errors are -log of."""

    variables: np.ndarray
    baseline_error: float
    zeroed_error: np.ndarray
    gain: np.ndarray
    likelihood: str = "Bernoulli on logits"

    def to_dict(self) -> dict[str, object]:
        return {
            "variables": self.variables.tolist(),
            "baseline_error": self.baseline_error,
            "gain": self.gain.tolist(),
            "likelihood": self.likelihood,
        }


def reconstruction_gain(
    model: LatentModel | Any,
    x: DataSource,
    kind: LikelihoodSpec = None,
    variables: list[int] | np.ndarray | None = None,
    always_zero: list[int] | np.ndarray = (),
    batch_size: int = 1000,
    *,
    likelihood: LikelihoodSpec = None,
    batch_key: BatchKey = None,
    input_fn: InputFn | None = None,
) -> ReconstructionGain:
    """Reconstruction gain of each of ``variables`` (default: all) over the data ``x`` (anything
    :func:`vaescope.data.batches.iter_batches` reads: images, vectors, tokens, a DataLoader, ...).

    ``likelihood`` (or, positionally, ``kind``: a run's ``loss.reconstruction``): the decoder's
    likelihood, any spec :func:`vaescope.models.likelihoods.resolve_likelihood` takes; default: the
    model's own, else the Bernoulli on logits. ``always_zero``: variables set to 0 in the baseline and
    in every intervention (e.g. variables kept silenced during an experiment), so the gain of j is
    measured in their absence. ``model``: anything :func:`vaescope.as_latent_model` accepts; it runs
    under :func:`vaescope.models.isolation.untouched`.
    """
    if kind is not None and likelihood is not None:
        raise VaescopeError("reconstruction_gain got both kind= and likelihood=; pass likelihood= only")
    model = as_latent_model(model)
    silenced = list(np.asarray(always_zero, dtype=int))
    chosen: np.ndarray | None = None if variables is None else np.asarray(variables, dtype=int)
    baseline_sum = 0.0
    zeroed_sums: np.ndarray | None = None
    n = 0
    with untouched(model):
        dec = None
        for batch in model_batches(model, x, batch_size=batch_size, batch_key=batch_key, input_fn=input_fn):
            if dec is None:  # inferring the likelihood needs the latent size: from the first two examples
                spec = likelihood if likelihood is not None else kind
                dim = None if spec is not None or model.latent_dim else encode(model, batch[:2])[0].shape[1]
                dec = decoder(model, spec, dim)
            dec.likelihood.check(batch)
            mu, _ = encode(model, batch)  # (B, D)
            if silenced:
                mu[:, silenced] = 0.0
            if chosen is None:
                chosen = np.arange(mu.shape[1])
            if zeroed_sums is None:
                zeroed_sums = np.zeros(len(chosen))
            baseline_sum -= float(dec.log_likelihood(batch, mu).double().sum())
            for k, j in enumerate(chosen):
                code = mu.clone()
                code[:, j] = 0.0
                zeroed_sums[k] -= float(dec.log_likelihood(batch, code).double().sum())
            n += len(batch)
    if n == 0 or chosen is None or zeroed_sums is None or dec is None:
        raise VaescopeError("reconstruction_gain got no data point; give at least one row of data")
    zeroed = zeroed_sums / n
    baseline = baseline_sum / n
    return ReconstructionGain(variables=chosen, baseline_error=baseline, zeroed_error=zeroed,
                              gain=zeroed - baseline, likelihood=dec.describe())
