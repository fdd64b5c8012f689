"""A sweep's task: the random seeds of one grid point trained together, then measured into one row each (a plain function of picklable arguments, for workers and Ray)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaescope.core.device import cpu_settings
from vaescope.core.errors import VaescopeError
from vaescope.data.batches import as_float
from vaescope.data.dataset import Dataset
from vaescope.data.linear import covariance_eigen
from vaescope.data.sources import load_dataset
from vaescope.data.synthetic import factor_correlations, factor_matches, factor_r2, has_factors, load_factors
from vaescope.measures.criteria import criteria_table
from vaescope.measures.factors import dci, mutual_information_gap
from vaescope.measures.intrinsic import estimate_dimension, flat_points
from vaescope.measures.oracle import linear_oracle
from vaescope.measures.oracle_comparison import compare
from vaescope.measures.run import run_statistics
from vaescope.reports.dimension import available as dimension_available
from vaescope.reports.oracle import is_linear_source
from vaescope.runs.checkpoint import has_checkpoint, load_run
from vaescope.runs.files import (
    is_finished,
    read_metrics,
    training_seconds,
)
from vaescope.sweeps.plan import RUNS_DIR, RunSpec, _error_line
from vaescope.training.multi import train_many
from vaescope.training.train import train


@dataclass(frozen=True)
class DataBundle:
    """A dataset and, for synthetic data, the factors of its test images ``(N, K)`` and their names;
    for ``synthetic:linear=...`` data the covariance spectrum of the training split (the closed form's);
    the intrinsic-dimension estimates of the test split (when scikit-dimension is installed)."""

    dataset: Dataset
    factor_names: tuple[str, ...] = ()
    test_factors: np.ndarray | None = None
    spectrum: np.ndarray | None = None
    data_dimension: dict[str, Any] | None = None


ESTIMATE_MIN_POINTS = 100  # fewer test points: no intrinsic-dimension estimate, no DCI


def load_bundle(source: str, dataset: Dataset | None = None) -> DataBundle:
    data = dataset if dataset is not None else load_dataset(source)
    names: tuple[str, ...] = ()
    factors_test = spectrum = dimension = None
    if has_factors(source):
        factors = load_factors(source)
        if len(factors.test) == len(data.x_test):
            names, factors_test = factors.names, factors.test
    if is_linear_source(source):
        spectrum = covariance_eigen(flat_points(data.x_train))[0]
    if dimension_available() and len(data.x_test) >= ESTIMATE_MIN_POINTS:
        dimension = estimate_dimension(flat_points(data.x_test), what=f"the test split of {data.name}").to_dict()
    return DataBundle(data, names, factors_test, spectrum, dimension)


@torch.no_grad()
def _test_means(model: torch.nn.Module, x: np.ndarray, batch_size: int = 2000) -> np.ndarray:
    model.eval()
    parts = [model.encode(as_float(torch.as_tensor(np.ascontiguousarray(x[s : s + batch_size]))))[0]
             for s in range(0, len(x), batch_size)]
    return torch.cat(parts).double().numpy()  # (N, D)


def _status(spec: RunSpec) -> str:
    run_dir = Path(spec.run_dir)
    return "reused" if is_finished(run_dir, spec.config) else "resumed" if has_checkpoint(run_dir) else "trained"


def run_group(specs: Sequence[RunSpec], bundle: DataBundle | None = None) -> list[dict[str, Any] | str]:
    """Train the runs of one grid point (its seeds: one architecture) together with
    :func:`vaescope.training.multi.train_many` in this process (stacked where the model allows), then
    measure each (:func:`run_one`); returns each run's row, or its one-line error where it failed.

    A plain function of picklable arguments, what a worker process and a Ray task call.
    """
    if bundle is None:
        bundle = load_bundle(specs[0].config.data.source)
    statuses = [_status(spec) for spec in specs]
    if len(specs) > 1 and any(status != "reused" for status in statuses):

        try:
            train_many([spec.config for spec in specs], [spec.run_dir for spec in specs], dataset=bundle.dataset,
                       progress=False, workers=1)
        except VaescopeError:
            pass  # a run that failed fails again below, alone, with its own error
    outcomes: list[dict[str, Any] | str] = []
    for spec, status in zip(specs, statuses):
        try:
            outcomes.append(run_one(spec, bundle, status))
        except Exception as err:  # noqa: BLE001  (reported per run; the sweep goes on)
            outcomes.append(_error_line(err))
    return outcomes


def run_one(spec: RunSpec, bundle: DataBundle | None = None, status: str | None = None) -> dict[str, Any]:
    """Train (or reuse, or resume) one run and measure it on the test split; returns its row.

    A plain function of picklable arguments that writes an ordinary run directory. ``bundle`` None
    loads ``config.data.source`` here; ``status``: what was found before the run's group trained it.
    """
    run_dir = Path(spec.run_dir)
    if bundle is None:
        bundle = load_bundle(spec.config.data.source)
    found = _status(spec)
    status = status or found
    if found != "reused":

        train(spec.config, run_dir, resume=True, dataset=bundle.dataset, progress=False)
    run = load_run(run_dir)
    stats = run_statistics(run, "test", dataset=bundle.dataset)  # also writes stats-test.json
    last = read_metrics(run_dir)[-1]
    inactive = {"mu_variance": ~stats.active, "sigma2": stats.inactive_by_sigma2, "kl": stats.inactive_by_kl}
    row: dict[str, Any] = {"run": spec.name, **spec.point, "seed": spec.seed, "latent_dim": stats.latent_dim}
    for criterion, mask in inactive.items():
        row[f"inactive_{criterion}"] = int(mask.sum())
        row[f"active_{criterion}"] = int((~mask).sum())
    # neither clearly on nor clearly off by every rule, half a decade from its threshold (vaescope.measures.criteria)
    between = np.flatnonzero(criteria_table(stats).polarisation == "between").tolist()
    row.update({"in_between": len(between), "in_between_variables": between})
    row.update({"test_loss": last["test_loss"], "test_reconstruction": last["test_reconstruction"],
                "test_kl": last["test_kl"], "variance_law_max_abs_dev": stats.variance_law_max_abs_dev,
                "seconds": round(training_seconds(run_dir), 3), "status": status, "attempts": 1, "error": "",
                "run_dir": f"{RUNS_DIR}/{spec.name}", "active_variables": np.flatnonzero(stats.active).tolist()})
    enough = len(bundle.dataset.x_test) >= ESTIMATE_MIN_POINTS
    mu = None
    if bundle.test_factors is not None or (enough and dimension_available()):
        with cpu_settings(spec.config.train.threads):
            mu = _test_means(run.model, bundle.dataset.x_test)
    if bundle.test_factors is not None:
        corr = factor_correlations(mu, bundle.test_factors)
        matches = factor_matches(corr, stats.active)
        r2 = factor_r2(mu[:, stats.active], bundle.test_factors)
        row["factors"] = {"names": list(bundle.factor_names), "correlation": corr.round(4).tolist(),
                          "matches": [{"factor": n, **m, "r2_active": round(float(r), 4)}
                                      for n, m, r in zip(bundle.factor_names, matches, r2)]}
        if stats.active.any() and enough:  # MIG and DCI over the active means (measures.factors)
            codes = mu[:, stats.active]
            row["factors"]["mig"] = mutual_information_gap(codes, bundle.test_factors).value
            row["factors"]["dci"] = {k: v for k, v in dci(codes, bundle.test_factors).to_dict().items()
                                     if k in ("disentanglement", "completeness", "informativeness", "settings")}
    if mu is not None and enough and dimension_available():
        codes_estimate = (estimate_dimension(mu[:, stats.active], what=f"the test means of the {int(stats.active.sum())} "
                                             "active variables").to_dict() if stats.active.any() else None)
        row["dimension"] = {"data": bundle.data_dimension, "codes": codes_estimate}
    if bundle.spectrum is not None:  # the linear-Gaussian closed form of this run's objective
        oracle = linear_oracle(bundle.spectrum, float(getattr(spec.config.loss, "variance", 0.5)),
                               spec.config.loss.beta, latent_dim=stats.latent_dim)
        row["oracle"] = {"sigma2": oracle.sigma2, "beta": oracle.beta, "eigenvalues": oracle.eigenvalues.tolist(),
                         "predicted_active": oracle.active_count,
                         "max_deviation": compare(stats, oracle).max_deviation}
    return row

