"""What each latent variable does to the decoded data, for data that are not images (no grid to look at).

From the mean code m (``mu_mean`` over the data), variable j is moved to m_j - a and to m_j + a
(a = ``amplitude``, 2 prior standard deviations by default) with the others kept at m; the two
codes are decoded and their means E[x | z] (the decoder's likelihood) compared:

- **decoded means** (vectors, counts): ``effect_j`` = mean over the P elements of |E[x | z+] - E[x | z-]|;
  ``top`` lists the elements that move most, with their signed change E[x | z+] - E[x | z-];
- **token distributions** (a categorical likelihood, means ``(T, V)``): ``effect_j`` = mean over the T
  positions of the total variation distance 1/2 sum_v |p+(v) - p-(v)| (0: the same distribution,
  1: disjoint ones); ``top`` lists the tokens whose probability, averaged over positions, rises most.

A variable the decoder ignores has effect exactly 0. Deterministic: no sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from vaescope.measures.reading import Decoder, floating_dtype
from vaescope.models.isolation import untouched
from vaescope.models.likelihoods import Categorical

EffectKind = Literal["decoded-mean", "token-distribution"]
AMPLITUDE = 2.0
TOP = 5


@dataclass(frozen=True)
class VariableEffects:
    """``effect`` ``(D,)``; ``top`` ``(D, k)`` element (or token) indices and ``top_change`` ``(D, k)`` their
    signed change (mean, or averaged probability); ``kind`` says which of the two measures."""

    kind: EffectKind
    amplitude: float
    effect: np.ndarray
    top: np.ndarray
    top_change: np.ndarray
    likelihood: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "amplitude": self.amplitude, "likelihood": self.likelihood,
                "effect": self.effect.tolist(), "top": self.top.tolist(), "top_change": self.top_change.tolist()}


def variable_effects(dec: Decoder, mean_code: np.ndarray, amplitude: float = AMPLITUDE,
                     top: int = TOP) -> VariableEffects:
    """The effect of each variable on the decoded data (see the module docstring), under ``untouched``.

    ``dec``: the model's decoder and likelihood (:func:`vaescope.measures.reading.decoder`);
    ``mean_code`` ``(D,)``: the code the variables are moved around (``LatentStatistics.mu_mean``).
    """
    model = dec.model
    dim = len(mean_code)
    with untouched(model):
        base = torch.as_tensor(np.asarray(mean_code), device=model.device,
                               dtype=floating_dtype(model) or torch.float32)
        codes = base.repeat(2 * dim, 1)                                        # rows 2j: -a, 2j + 1: +a
        index = torch.arange(dim, device=codes.device)
        codes[2 * index, index] -= amplitude
        codes[2 * index + 1, index] += amplitude
        means = dec.mean(codes).double()                                       # (2D, ...)
    low, high = means[0::2], means[1::2]
    tokens = isinstance(dec.likelihood, Categorical)
    if tokens:  # (D, ..., V): positions flattened, tokens kept
        vocab = means.shape[-1]
        low, high = low.reshape(dim, -1, vocab), high.reshape(dim, -1, vocab)
        effect = 0.5 * (high - low).abs().sum(-1).mean(1)                      # total variation per position
        change = (high - low).mean(1)                                          # (D, V)
    else:
        change = (high - low).reshape(dim, -1)                                 # (D, P)
        effect = change.abs().mean(1)
    k = min(top, change.shape[1])
    order = (change if tokens else change.abs()).argsort(dim=1, descending=True)[:, :k]
    return VariableEffects("token-distribution" if tokens else "decoded-mean", float(amplitude),
                           effect.cpu().numpy(), order.cpu().numpy(), change.gather(1, order).cpu().numpy(),
                           dec.describe())
