"""The intrinsic-dimension section: TwoNN and MLE estimates (scikit-dimension) of the data and of the
posterior means of the active variables, beside the active count (``inspect``'s report)."""

from __future__ import annotations

import importlib.util

from vaescope.measures.intrinsic import DimensionEstimates
from vaescope.reports.html import Paragraph, Section, Table


def available() -> bool:
    """Whether scikit-dimension is installed (the ``dimension`` extra)."""
    return importlib.util.find_spec("skdim") is not None


def _row(est: DimensionEstimates) -> list[str]:
    return [est.what, f"{est.twonn:.2f}", *[f"{v:.2f}" for v in est.mle.values()], est.settings]


def dimension_section(estimates: dict[str, DimensionEstimates | None], active_count: int, latent_dim: int) -> Section:
    """The table of estimates with their settings, and the active count beside them."""
    data = estimates["data"]
    assert data is not None
    ks = list(data.mle)
    rows = [_row(data)]
    if estimates["codes"] is not None:
        rows.append(_row(estimates["codes"]))
    text = (f"{active_count} of {latent_dim} variables are active. Independent estimates of the intrinsic "
            "dimension, owing nothing to the VAE: TwoNN (Facco et al. 2017) and the maximum-likelihood estimator "
            "of E. Levina and P. J. Bickel (2004) at k neighbours (inverses averaged), by scikit-dimension. On "
            "the data they measure the noise too (more so at small k); on the codes they ask whether the active "
            "variables fill their space or lie on something smaller.")
    table = Table(["points", "TwoNN", *[f"MLE k = {k}" for k in ks], "settings"], rows)
    return Section("dimension", "Intrinsic dimension, estimated", [Paragraph(text), table])
