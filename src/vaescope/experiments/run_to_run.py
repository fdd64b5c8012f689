"""Run-to-run variation of the degree of sparsity: the same model trained with several seeds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CountSpread:
    """Inactive counts of one model over seeds, and their spread."""

    seeds: list[int]
    counts: list[int]

    @property
    def minimum(self) -> int:
        return min(self.counts)

    @property
    def maximum(self) -> int:
        return max(self.counts)

    @property
    def mean(self) -> float:
        return float(np.mean(self.counts))

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof=1); 0 for a single seed."""
        return float(np.std(self.counts, ddof=1)) if len(self.counts) > 1 else 0.0

    @property
    def range(self) -> int:
        return self.maximum - self.minimum

    def to_dict(self) -> dict[str, object]:
        return {"seeds": list(self.seeds), "counts": list(self.counts), "min": self.minimum,
                "max": self.maximum, "mean": self.mean, "std": self.std, "range": self.range}


def count_spread(seeds: list[int], counts: list[int]) -> CountSpread:
    """Pair each seed with its inactive count; refuses empty or mismatched lists."""
    if not counts or len(seeds) != len(counts):
        raise ValueError(f"need one count per seed, got {len(counts)} counts for {len(seeds)} seeds")
    return CountSpread(list(seeds), [int(c) for c in counts])
