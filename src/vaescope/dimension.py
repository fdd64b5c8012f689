"""``vaescope dimension``: independent estimates of the intrinsic dimension of a dataset, and of the
posterior means of a run's active variables, beside its active count.

The estimators (TwoNN and the Levina-Bickel MLE at several k, scikit-dimension) and their settings
are :func:`vaescope.measures.intrinsic.estimate_dimension`'s; this module chooses the points: the
``split`` of a data source (images flattened to vectors in [0, 1], vectors as they are) or the
posterior means mu of the active variables (Var(mu) at or above the run's threshold) over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaescope.core.errors import VaescopeError
from vaescope.core.provenance import provenance
from vaescope.data.sources import load_dataset
from vaescope.measures.intrinsic import (
    DEFAULT_KS,
    DEFAULT_POINTS,
    DimensionEstimates,
    data_and_code_dimensions,
    estimate_dimension,
    flat_points,
)
from vaescope.measures.statistics import latent_statistics
from vaescope.runs.checkpoint import load_run


@dataclass(frozen=True)
class DimensionReport:
    """The estimates on the data and, for a run, on its active posterior means, with its active count."""

    source: str
    split: str
    data: DimensionEstimates
    codes: DimensionEstimates | None = None
    active: int | None = None
    latent_dim: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "split": self.split, "data": self.data.to_dict(),
                "codes": None if self.codes is None else self.codes.to_dict(),
                "active": self.active, "latent_dim": self.latent_dim, "provenance": provenance()}


def dimension_report(source: str | None = None, run: str | Path | None = None, split: str = "train",
                     ks: Sequence[int] = DEFAULT_KS, n: int | None = DEFAULT_POINTS, seed: int = 0) -> DimensionReport:
    """Estimates on ``split`` of ``source`` (default: the run's data) and, with ``run`` (a run directory),
    on the posterior means of its active variables over the same split."""
    if source is None and run is None:
        raise VaescopeError("vaescope dimension needs --data SOURCE or --run RUN_DIR (or both)")
    loaded = load_run(run) if run is not None else None
    source = source or loaded.config.data.source  # type: ignore[union-attr]
    dataset = load_dataset(source)
    x, _ = dataset.split(split)
    words = f"the {split} split of {dataset.name}"
    if loaded is None:
        return DimensionReport(str(source), split, estimate_dimension(flat_points(x), ks, n, seed, what=words))
    stats = latent_statistics(loaded.model, x, batch_size=2000, thresholds=loaded.config.stats)
    found = data_and_code_dimensions(loaded.model, x, stats.active, ks, n, seed, data_words=words)
    return DimensionReport(str(source), split, found["data"], found["codes"], int(stats.active.sum()), stats.latent_dim)


def _row(est: DimensionEstimates) -> str:
    mle = "  ".join(f"MLE k={k}: {v:.2f}" for k, v in est.mle.items())
    return f"  TwoNN: {est.twonn:.2f}  {mle}\n  ({est.settings})"


def report_text(report: DimensionReport) -> str:
    """The estimates as lines of text, with their settings (what ``vaescope dimension`` prints)."""
    lines = [f"Intrinsic dimension of {report.data.what} ({report.source}):", _row(report.data)]
    if report.latent_dim is not None:
        lines.append(f"Active variables: {report.active} of {report.latent_dim}.")
        if report.codes is None:
            lines.append("No active variable: nothing to estimate on the codes.")
        else:
            lines += [f"Intrinsic dimension of the {report.codes.what}:", _row(report.codes)]
    return "\n".join(lines)
