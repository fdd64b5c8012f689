"""The intrinsic dimension read from a sweep: where the active count stops growing with latent size.

A. Asperti, "Sparsity in Variational Autoencoders", draws the lesson of collapse: for a given
architecture there seems to be an intrinsic dimension of the data; a VAE with no inactive variable
should get a larger latent space, one with inactive variables can lose them. This module reads that
dimension from a curve of active counts, precisely:

- at each latent size L_i (sorted), m_i is the **median** active count over the random seeds;
- the curve **levels off at** L_k when at least one larger size was tried (k < n) and at every
  larger size the median stays within ``tolerance`` of m_k: |m_i - m_k| <= tolerance for all i > k;
- the intrinsic dimension is m_k for the smallest such k.

The default tolerance, 0.5, lets the median of an even number of seeds move by half a variable
and nothing more: a curve that gains one variable per size never levels off. When no size
qualifies the answer is "not reached", with the reason (one size only, or still growing at the
largest size, where every variable may even be active: then the latent space is too small).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_TOLERANCE = 0.5


@dataclass(frozen=True)
class IntrinsicDimension:
    """The reading: ``value`` (the median active count where the curve levels off) and
    ``latent_size`` (that L), or both None when not reached; ``reason`` says why in words."""

    value: float | None
    latent_size: int | None
    reason: str
    latent_sizes: tuple[int, ...]
    medians: tuple[float, ...]
    tolerance: float

    @property
    def reached(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, object]:
        return {"reached": self.reached, "value": self.value, "latent_size": self.latent_size,
                "reason": self.reason, "latent_sizes": list(self.latent_sizes),
                "median_active": list(self.medians), "tolerance": self.tolerance}


def _count(value: float) -> str:
    return f"{value:g}"


def intrinsic_dimension(active_counts: Mapping[int, Sequence[float]],
                        tolerance: float = DEFAULT_TOLERANCE) -> IntrinsicDimension:
    """Read the intrinsic dimension from ``{latent size: [active count of each seed]}``.

    Sizes may come in any order; each needs at least one count. See the module docstring for the
    definition. Raises ``ValueError`` on an empty curve, a size without counts or a negative tolerance.
    """
    if not active_counts:
        raise ValueError("intrinsic_dimension needs at least one latent size")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    sizes = tuple(sorted(int(s) for s in active_counts))
    for size in sizes:
        if len(active_counts[size]) == 0:
            raise ValueError(f"latent size {size} has no active counts")
    medians = tuple(float(np.median(np.asarray(active_counts[s], dtype=np.float64))) for s in sizes)

    def answer(value: float | None, size: int | None, reason: str) -> IntrinsicDimension:
        return IntrinsicDimension(value, size, reason, sizes, medians, tolerance)

    if len(sizes) == 1:
        return answer(None, None, f"not reached: only latent size {sizes[0]} was tried "
                                  f"(median {_count(medians[0])} active); a level needs a larger size to confirm it")
    for k in range(len(sizes) - 1):
        if all(abs(m - medians[k]) <= tolerance for m in medians[k + 1 :]):
            larger = ", ".join(str(s) for s in sizes[k + 1 :])
            return answer(medians[k], sizes[k],
                          f"levels off at latent size {sizes[k]}: median {_count(medians[k])} active, "
                          f"within {tolerance:g} of it at every larger size tried ({larger})")
    last, before = medians[-1], medians[-2]
    if last >= sizes[-1]:
        why = (f"every variable is active at the largest latent size, {sizes[-1]}: "
               "try larger latent spaces")
    elif last > before:
        why = (f"the median active count still grows at the largest sizes ({_count(before)} at {sizes[-2]}, "
               f"{_count(last)} at {sizes[-1]}): try larger latent spaces")
    else:
        why = (f"the median active count still moves by more than {tolerance:g} between the largest sizes "
               f"({_count(before)} at {sizes[-2]}, {_count(last)} at {sizes[-1]}): try more seeds or larger sizes")
    return answer(None, None, "not reached: " + why)
