"""Statistics of a trained run over a split of its data, written next to the run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .checkpoint import Run, load_run
from .config import StatsConfig
from .data import Dataset, load_dataset
from .stats import LatentStatistics, latent_statistics
from .storage import atomic_write_json, atomic_write_text
from .train import cpu_settings, select_device

STATS_COLUMNS = ["index", "mu_mean", "mu_variance", "sigma2_mean", "variance_law", "kl_mean", "active",
                 "log_sigma2_mean", "inactive_by_sigma2", "inactive_by_kl"]


def run_statistics(
    run: Run | str | Path,
    split: str = "test",
    thresholds: StatsConfig | None = None,
    dataset: Dataset | None = None,
    write: bool = True,
) -> LatentStatistics:
    """Latent statistics of a run over the full ``split`` of its dataset; with ``write``, saved as
    ``stats-<split>.json`` and ``.csv`` in the run directory."""
    if not isinstance(run, Run):
        run = load_run(run)
    device = select_device(run.config.train.device)
    data = dataset if dataset is not None else load_dataset(run.config.data.source)
    x, _ = data.split(split)
    model = run.model.to(device)
    with cpu_settings(run.config.train.threads):
        stats = latent_statistics(model, x, batch_size=2000, thresholds=thresholds or run.config.stats,
                                  device=device)
    if write:
        payload = stats.to_dict(split)
        atomic_write_json(run.directory / f"stats-{split}.json", payload)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=STATS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(payload["variables"])
        atomic_write_text(run.directory / f"stats-{split}.csv", buffer.getvalue())
    return stats

