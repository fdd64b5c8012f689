"""The measures of a run directory: its statistics (``stats-<split>.json``) and, on request, every criterion, the gains, I(x; z) and the importance-weighted bound."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vaescope.core.config import StatsConfig
from vaescope.core.device import cpu_settings, select_device
from vaescope.core.storage import atomic_write_json, atomic_write_text
from vaescope.data.dataset import Dataset, split_images
from vaescope.data.sources import load_dataset
from vaescope.measures.bound import ImportanceWeightedBound, importance_weighted_bound
from vaescope.measures.criteria import CriteriaTable, criteria_table
from vaescope.measures.gains import ReconstructionGain, reconstruction_gain
from vaescope.measures.information import MutualInformation
from vaescope.measures.information import mutual_information as estimate_information
from vaescope.measures.lesson import Lesson, lesson
from vaescope.measures.reading import LikelihoodSpec
from vaescope.measures.statistics import LatentStatistics, latent_statistics
from vaescope.models.likelihoods import run_likelihood
from vaescope.runs.checkpoint import Run, load_run
from vaescope.runs.files import STATS_COLUMNS, rows_to_csv


def _loaded(run: Run | str | Path) -> Run:
    """The run, loaded when a path is given (:func:`load_run` leaves the caller's random state as it was)."""
    return run if isinstance(run, Run) else load_run(run)


def run_statistics(
    run: Run | str | Path,
    split: str = "test",
    thresholds: StatsConfig | None = None,
    dataset: Dataset | None = None,
    write: bool = True,
) -> LatentStatistics:
    """Latent statistics of a run over the full ``split`` of its dataset; with ``write``, saved as
    ``stats-<split>.json`` and ``.csv`` in the run directory."""
    run = _loaded(run)
    device = select_device(run.config.train.device)
    data = dataset if dataset is not None else load_dataset(run.config.data.source, run.config.data.max_bytes)
    x = measured_images(data, split, run.config.data.binarize)
    model = run.model.to(device)
    with cpu_settings(run.config.train.threads):
        stats = latent_statistics(model, x, batch_size=2000, thresholds=thresholds or run.config.stats,
                                  device=device)
    if write:
        payload = stats.to_dict(split)
        atomic_write_json(run.directory / f"stats-{split}.json", payload)
        atomic_write_text(run.directory / f"stats-{split}.csv", rows_to_csv(STATS_COLUMNS, payload["variables"]))
    return stats


def measured_images(data: Dataset, split: str, binarize: str) -> np.ndarray:
    """The images a run's statistics and measures read: as stored, or, when the run binarises
    (``data.binarize``), the split's one fixed binary sample (what a static run trains on)."""
    return split_images(data, split, "none" if binarize == "none" else "static")


MEASURE_COLUMNS = STATS_COLUMNS + ["mi", "reconstruction_gain", "polarisation"]


@dataclass(frozen=True)
class RunMeasures:
    """What ``vaescope stats`` reports of a run over ``split``: the statistics, the reconstruction
    gains, every activity criterion, and, when asked for, I(x; z) and the importance-weighted bound."""

    split: str
    binarize: str
    stats: LatentStatistics
    gain: ReconstructionGain
    criteria: CriteriaTable
    mutual_information: MutualInformation | None = None
    iwae_bound: ImportanceWeightedBound | None = None
    beta: float | None = None

    @property
    def lesson(self) -> Lesson:
        """What the numbers mean (:func:`vaescope.measures.lesson.lesson`, with the run's beta; vaescope's
        training has no KL warm-up)."""
        return lesson(self.stats, beta=self.beta, warmup=1.0, criteria=self.criteria)  # vaescope trains without warm-up

    def to_dict(self) -> dict[str, Any]:
        """``stats.to_dict`` plus, per variable, ``mi`` (null without ``--mi``), ``reconstruction_gain``,
        ``active_by`` (each rule) and ``polarisation``; at the top, ``criteria``, and
        ``mutual_information`` and ``iwae_bound`` when computed."""
        payload = self.stats.to_dict(self.split)
        payload["binarize"] = self.binarize
        for entry, extra in zip(payload["variables"], self.criteria.variable_entries()):
            entry.setdefault("mi", None)
            entry.update({k: v for k, v in extra.items() if k not in entry or k == "mi"})
        payload["reconstruction_baseline_error"] = self.gain.baseline_error
        payload["criteria"] = self.criteria.to_dict()
        if self.mutual_information is not None:
            payload["mutual_information"] = self.mutual_information.to_dict()
        if self.iwae_bound is not None:
            payload["iwae_bound"] = self.iwae_bound.to_dict()
        payload["reconstruction_likelihood"] = self.gain.likelihood
        payload["lesson"] = self.lesson.to_dict()
        return payload


def run_measures(
    run: Run | str | Path,
    split: str = "test",
    thresholds: StatsConfig | None = None,
    dataset: Dataset | None = None,
    mutual_information: bool = False,
    iwae_ks: tuple[int, ...] = (),
    samples: int = 1,
    iwae_images: int | None = None,
    write: bool = True,
    likelihood: LikelihoodSpec = None,
) -> RunMeasures:
    """:func:`run_statistics`, the reconstruction gains and every activity criterion of a run over
    ``split``; with ``mutual_information``, I(x; z) and I(x; z_j) (``samples`` codes per image);
    with ``iwae_ks``, the importance-weighted bound of each K (on the first ``iwae_images``
    images, default all). ``likelihood``: the decoder's likelihood for the gains and the bound (default:
    the one the run trained with, :func:`vaescope.models.likelihoods.run_likelihood`). With ``write``,
    saved as ``stats-<split>.json`` and ``.csv``."""

    run = _loaded(run)
    data = dataset if dataset is not None else load_dataset(run.config.data.source, run.config.data.max_bytes)
    stats = run_statistics(run, split, thresholds, data, write=False)
    binarize = run.config.data.binarize
    x = measured_images(data, split, binarize)
    device = select_device(run.config.train.device)
    model = run.model.to(device)
    mi = bound = None
    with cpu_settings(run.config.train.threads):
        likelihood = likelihood if likelihood is not None else run_likelihood(run.config.loss)
        gain = reconstruction_gain(model, x, likelihood=likelihood, batch_size=2000)
        if mutual_information:
            mi = estimate_information(model, x, samples=samples)
        if iwae_ks:
            bound = importance_weighted_bound(model, x, iwae_ks, likelihood=likelihood, binarize=binarize,
                                              limit=iwae_images)
    table = criteria_table(stats, None if mi is None else mi.per_variable, gain.gain)
    result = RunMeasures(split, binarize, stats, gain, table, mi, bound, beta=run.config.loss.beta)
    if write:
        payload = result.to_dict()
        atomic_write_json(run.directory / f"stats-{split}.json", payload)
        atomic_write_text(run.directory / f"stats-{split}.csv",
                          rows_to_csv(MEASURE_COLUMNS, [{k: row[k] for k in MEASURE_COLUMNS} for row in payload["variables"]]))
    return result

