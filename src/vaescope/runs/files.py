"""The files of a run directory: their names, readers and writers, and the one policy on reuse.

A run directory, as ``vaescope train`` writes it (and a sweep point, a pruned run, ...)::

    config.json                 the resolved config: everything needed to rebuild the run
    metrics.csv                 one row per epoch (METRIC_COLUMNS)
    trace.csv                   Var(mu_j), mean sigma_j^2 along training (:class:`Trace`)
    timing.csv                  wall time of each epoch
    model.safetensors           final weights (see :mod:`vaescope.runs.checkpoint`)
    manifest.json               SHA-256 of the five files above, written last (:mod:`vaescope.runs.manifest`)
    checkpoints/                resumable state
    stats-<split>.json, .csv    written by :func:`run_statistics`

Every file is written atomically. :func:`resolve_run_config` is the one policy every caller
follows (the CLI, :func:`vaescope.training.train.train`, ``reproduce``, sweeps): a new run needs an empty
directory; ``resume`` continues a run of the same config and refuses one of another config.
"""

from __future__ import annotations

import csv
import functools
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vaescope.core import config as config_mod
from vaescope.core.config import Config
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_text, read_json
from vaescope.runs.checkpoint import WEIGHTS_FILE, has_checkpoint

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
TRACE_FILE = "trace.csv"
TIMING_FILE = "timing.csv"
METRIC_COLUMNS = ["epoch", "step", "train_loss", "train_reconstruction", "train_kl",
                  "test_loss", "test_reconstruction", "test_kl", "trace_inactive"]
STATS_COLUMNS = ["index", "mu_mean", "mu_variance", "sigma2_mean", "variance_law", "kl_mean", "active",
                 "log_sigma2_mean", "inactive_by_sigma2", "inactive_by_kl"]


# ---------------------------------------------------------------------------- the trace

class PerVariable(Protocol):
    """What a trace point reads: :class:`vaescope.measures.statistics.LatentStatistics` has both."""

    mu_variance: np.ndarray
    sigma2_mean: np.ndarray


@dataclass
class Trace:
    """Var(mu) and mean sigma^2 per variable along training, on a fixed held-out subset."""

    steps: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    mu_variance: list[np.ndarray] = field(default_factory=list)
    sigma2_mean: list[np.ndarray] = field(default_factory=list)

    def add(self, stats: PerVariable, step: int, epoch: float) -> None:
        """Add one point: ``stats`` has per-variable ``mu_variance`` and ``sigma2_mean`` ``(D,)``."""
        self.steps.append(step)
        self.epochs.append(epoch)
        self.mu_variance.append(stats.mu_variance)
        self.sigma2_mean.append(stats.sigma2_mean)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "trace_steps": torch.tensor(self.steps, dtype=torch.int64),
            "trace_epochs": torch.tensor(self.epochs, dtype=torch.float64),
            "trace_mu_variance": torch.tensor(np.array(self.mu_variance), dtype=torch.float64),
            "trace_sigma2_mean": torch.tensor(np.array(self.sigma2_mean), dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> Trace:
        return cls(t["trace_steps"].tolist(), t["trace_epochs"].tolist(),
                   list(t["trace_mu_variance"].numpy()), list(t["trace_sigma2_mean"].numpy()))

    def to_csv(self) -> str:
        dim = len(self.mu_variance[0]) if self.mu_variance else 0
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", "epoch"] + [f"mu_variance_{j}" for j in range(dim)]
                        + [f"sigma2_mean_{j}" for j in range(dim)])
        for s, e, v, q in zip(self.steps, self.epochs, self.mu_variance, self.sigma2_mean):
            writer.writerow([s, repr(float(e))] + [repr(float(a)) for a in v] + [repr(float(a)) for a in q])
        return buffer.getvalue()


def _csv_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise VaescopeError(f"{path} does not exist; train the run first")
    try:
        with path.open(newline="") as handle:
            return list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise VaescopeError(f"cannot read {path} ({err}); retrain the run or restore the file") from err


def read_trace(directory: str | Path) -> Trace:
    """The trace a run (or a :class:`vaescope.LatentMonitor` log directory) recorded."""
    path = Path(directory) / TRACE_FILE
    rows = _csv_rows(path)
    if not rows:
        raise VaescopeError(f"{path} is empty; retrain the run or restore the file")
    header, body = rows[0], rows[1:]
    dim = (len(header) - 2) // 2
    trace = Trace()
    try:
        for row in body:
            values = [float(v) for v in row]
            trace.steps.append(int(values[0]))
            trace.epochs.append(values[1])
            trace.mu_variance.append(np.array(values[2 : 2 + dim]))
            trace.sigma2_mean.append(np.array(values[2 + dim :]))
    except (ValueError, IndexError) as err:
        raise VaescopeError(f"{path} is malformed ({err}); retrain the run or restore the file") from err
    return trace


def read_metrics(directory: str | Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv``: one per epoch, METRIC_COLUMNS as floats."""
    path = Path(directory) / METRICS_FILE
    rows = _csv_rows(path)
    try:
        return [dict(zip(rows[0], map(float, row))) for row in rows[1:]]
    except (ValueError, IndexError) as err:
        raise VaescopeError(f"{path} is malformed ({err}); retrain the run or restore the file") from err


def training_seconds(directory: str | Path) -> float:
    """The summed epoch times of ``timing.csv`` (0 when the file is absent)."""
    path = Path(directory) / TIMING_FILE
    return sum(float(row[1]) for row in _csv_rows(path)[1:]) if path.is_file() else 0.0


def rows_to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_progress(directory: Path, metrics: list[dict[str, Any]], trace: Trace, timing: list[dict[str, Any]]) -> None:
    """The per-epoch files: ``metrics.csv``, ``trace.csv``, ``timing.csv``."""
    atomic_write_text(directory / METRICS_FILE, rows_to_csv(METRIC_COLUMNS, metrics))
    atomic_write_text(directory / TRACE_FILE, trace.to_csv())
    atomic_write_text(directory / TIMING_FILE, rows_to_csv(["epoch", "seconds"], timing))


# ---------------------------------------------------------------------------- the policy

def stored_config(directory: Path) -> Config | None:
    """The config a run directory was started with, or None when it holds none."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return None
    return config_mod.from_dict(read_json(path, "run config"), origin=str(path))


def config_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs (not the execution keys,
    ``config.EXECUTION_KEYS``: configs differing only there are the same run, as ``==`` says)."""
    def diff(x: Any, y: Any, prefix: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            return [d for k in sorted(set(x) | set(y)) for d in diff(x.get(k), y.get(k), f"{prefix}{k}.")]
        return [] if x == y else [prefix.rstrip(".")]
    return [key for key in diff(a.to_dict(), b.to_dict(), "") if key not in config_mod.EXECUTION_KEYS]


def resolve_run_config(directory: Path, config: Config | None, resume: bool) -> Config:
    """The config to train ``directory`` with, by the one policy on run directories.

    Without ``resume`` the directory must hold no run. With ``resume`` a run there continues
    with its stored config; ``config``, when given, must equal it (None: take the stored one),
    and its execution keys (``train.compile``) are the ones it continues with.
    """
    stored = stored_config(directory)
    started = stored is not None or has_checkpoint(directory)
    if not resume:
        if started:
            raise VaescopeError(f"{directory} already holds a run; pass --resume to continue it, or choose another --out")
        if config is None:
            raise VaescopeError(f"{directory} holds no run to continue; give a config (--preset or --config)")
        return config
    if stored is None:
        if config is None:
            raise VaescopeError(f"--resume: {directory} holds no run to continue (no {CONFIG_FILE}); check --out, "
                                "or start a run with --preset")
        return config
    if config is not None and config != stored:
        changed = ", ".join(config_differences(stored, config)[:4])
        raise VaescopeError(f"{directory} holds a run of another config ({changed} differ); resume it without "
                            "options to continue it as it was, or choose another --out")
    if config is not None:  # equal but for how it is computed: the caller's choice of that
        return config_mod.replace(stored, **{key: functools.reduce(getattr, key.split("."), config)
                                             for key in config_mod.EXECUTION_KEYS})
    return stored


def is_finished(directory: Path, config: Config) -> bool:
    """True when ``directory`` holds the finished run of exactly ``config``."""
    return stored_config(directory) == config and (directory / WEIGHTS_FILE).is_file()


def discard_other_run(directory: Path, config: Config) -> list[str]:
    """Remove a run of another config (or a run killed before its config was written) from
    ``directory``, for callers that own the folder (``reproduce``). Returns the keys that differed."""
    stored = stored_config(directory) if (directory / CONFIG_FILE).is_file() else None
    if stored is None:
        if directory.exists() and any(p.name != ".lock" for p in directory.iterdir()):
            shutil.rmtree(directory)
            return ["(no config.json)"]
        return []
    changed = config_differences(stored, config)
    if changed:
        shutil.rmtree(directory)
    return changed


# ---------------------------------------------------------------------------- statistics of a run









