"""``vaescope sweep``: a grid of configs x seeds, each an ordinary run directory, on local worker
processes or Ray, then the active count against latent size and the intrinsic dimension.

Layout of a sweep folder ``DIR``::

    runs/<point>-seed<S>/   one ordinary run directory per grid point and seed (vaescope train's files)
    sweep.json, sweep.csv   one row per run (see :data:`CSV_COLUMNS`); sweep.json adds the readings
    report.html, report.md  the figures and the intrinsic dimension (:mod:`vaescope.sweeps.report`)

Every run is trained by :func:`vaescope.training.train.train` with ``resume=True``: a run whose stored config
matches is reused, an interrupted one resumes from its last checkpoint (and ends with the weights an
uninterrupted run has), so a killed sweep, run again with the same command, loses no finished run.
The sweep holds the lock of ``DIR`` (a second sweep into it is refused) and each run its own.

Execution (:func:`train_runs`, the one place that decides how a list of runs is trained): a task is
the random seeds of one grid point (:func:`point_groups`), trained together by :func:`run_group`
(:func:`vaescope.training.multi.train_many`: one batched computation where the model can be stacked), each
still its own run directory;

- local (default): a pool of ``workers`` spawned processes, each with ``threads`` torch threads;
- Ray: the same tasks as Ray tasks (:func:`run_group`, a plain function of picklable arguments);
  ``ray.init(address)``, or a local instance with every core.

A run that fails is reported with its error and tried once more; the others go on.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vaescope.core import config as config_mod
from vaescope.core.config import Config
from vaescope.core.errors import VaescopeError
from vaescope.runs.files import (
    config_differences,
    stored_config,
)

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
SWEEP_JSON, SWEEP_CSV = "sweep.json", "sweep.csv"
CRITERIA = {"mu_variance": "Var(mu) < threshold", "sigma2": "mean sigma^2 > threshold",
            "kl": "mean KL < threshold"}
CSV_COLUMNS = ["run", "seed", "latent_dim",
               *[f"{state}_{c}" for c in CRITERIA for state in ("inactive", "active")], "in_between",
               "test_loss", "test_reconstruction", "test_kl", "variance_law_max_abs_dev", "seconds",
               "status", "attempts", "error", "run_dir"]
ATTEMPTS = 2  # a failed run is tried once more


# ---------------------------------------------------------------------------- the grid

def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``["model.latent_dim=2,4,8", "loss.beta=0.5,1"]`` -> ``{key: [values]}``; each value is read
    as TOML (``4``, ``0.5``, ``true``, a bare string). Keys are checked by :func:`expand`."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise VaescopeError(f"--grid {text!r} is not of the form section.key=v1,v2,..., e.g. model.latent_dim=2,4,8")
        parts = [p.strip() for p in raw.split(",")]
        if not raw.strip() or any(not p for p in parts):
            raise VaescopeError(f"--grid {key} has an empty value list or an empty value ({raw!r}); "
                                "give values separated by commas, e.g. --grid model.latent_dim=2,4,8")
        if key in grid:
            raise VaescopeError(f"--grid {key} is given twice; list all its values in one --grid")
        if key == "train.seed":
            raise VaescopeError("--grid train.seed: seeds are set with --seeds N (0 .. N-1)")
        values = [config_mod.parse_override(f"{key}={p}")[1] for p in parts]
        if len({json.dumps(v) for v in values}) != len(values):
            raise VaescopeError(f"--grid {key} lists a value twice ({raw}); give each value once")
        grid[key] = values
    return grid


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep; plain data, picklable (it travels to worker processes and Ray tasks)."""

    name: str                 # "<point>-seed<S>", the run directory's name
    point: dict[str, Any]     # grid key -> value
    seed: int
    config: Config
    run_dir: str              # absolute: a Ray worker may run in another directory


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_value_text(v) for v in value)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", str(value).lower() if isinstance(value, bool) else str(value))


def point_name(point: Mapping[str, Any], base_name: str) -> str:
    """A run-directory-safe name for a grid point: ``latent_dim8-beta0.5`` (the last part of each
    key, or the whole key when two keys end alike); the config's name for an empty grid."""
    if not point:
        return base_name
    shorts = [k.rsplit(".", 1)[-1] for k in point]
    labels = [k.replace(".", "_") if shorts.count(s) > 1 else s for k, s in zip(point, shorts)]
    return "-".join(f"{label}{_value_text(v)}" for label, v in zip(labels, point.values()))


def expand(base: Config, grid: Mapping[str, Sequence[Any]], seeds: Sequence[int], out: Path,
           threads: int) -> list[RunSpec]:
    """Every grid point x seed as a :class:`RunSpec`, each config validated; ``train.threads`` is
    ``threads``. A bad key or value is one line naming it, before anything trains."""
    for key, values in grid.items():
        if not values:
            raise VaescopeError(f"--grid {key} has no values; give at least one")
        for value in values:
            try:
                config_mod.replace(base, **{key: value})
            except VaescopeError as err:
                raise VaescopeError(f"--grid {key}={value!r}: {err}") from None
    specs: list[RunSpec] = []
    for combination in itertools.product(*grid.values()):
        point = dict(zip(grid, combination))
        try:
            cfg = config_mod.replace(base, **point)
        except VaescopeError as err:
            raise VaescopeError(f"--grid point {point}: {err}") from None
        name = point_name(point, base.name)
        for seed in seeds:
            run_cfg = config_mod.replace(cfg, **{"train.seed": seed, "train.threads": threads})
            run_dir = out.resolve() / RUNS_DIR / f"{name}-seed{seed}"
            specs.append(RunSpec(f"{name}-seed{seed}", point, seed, run_cfg, str(run_dir)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise VaescopeError(f"two grid points share the run name {duplicate!r}; give values that differ in writing")
    return specs


def _adopt_stored(spec: RunSpec) -> RunSpec:
    """A run already in the folder: keep its stored config when it differs only in ``train.threads``
    (how many threads ran it, not what it is); refuse a run of another config."""
    stored = stored_config(Path(spec.run_dir))
    if stored is None or stored == spec.config:
        return spec
    changed = [k for k in config_differences(stored, spec.config) if k != "train.threads"]
    if changed:
        raise VaescopeError(f"{spec.run_dir} holds a run of another config ({', '.join(changed[:4])} differ); "
                            "use another --out, or remove that run")
    return replace(spec, config=stored)


# ---------------------------------------------------------------------------- one run













# ---------------------------------------------------------------------------- execution

@dataclass(frozen=True)
class Execution:
    """How runs are trained: ``workers`` local processes of ``threads`` torch threads each, or Ray
    tasks of ``threads`` CPUs each when ``ray`` is set (``"local"``: a local instance; else an address)."""

    workers: int
    threads: int
    ray: str | None = None


def default_execution(runs: int, workers: int = 0, threads: int = 0, ray: str | None = None) -> Execution:
    """0 means automatic: one worker per core (at most one per run), and the cores shared out."""
    cores = os.cpu_count() or 1
    workers = workers or max(1, min(cores, runs))
    threads = threads or max(1, cores // workers)
    return Execution(workers, threads, ray)






def point_groups(specs: Sequence[RunSpec], workers: int) -> list[list[RunSpec]]:
    """The tasks: the random seeds of each grid point together (they train as one batched computation),
    each point's seeds split in two where there are fewer points than ``workers``, so that no
    worker idles."""
    points: dict[str, list[RunSpec]] = {}
    for spec in specs:
        points.setdefault(repr(sorted(spec.point.items())), []).append(spec)
    parts = 1 if len(points) >= workers else -(-workers // max(1, len(points)))
    return [seeds[k::parts] for seeds in points.values() for k in range(min(parts, len(seeds)))]


def failed_row(spec: RunSpec, error: str, attempts: int) -> dict[str, Any]:
    return {"run": spec.name, **spec.point, "seed": spec.seed, "latent_dim": spec.config.model.latent_dim,
            "status": "failed", "attempts": attempts, "error": error, "run_dir": f"{RUNS_DIR}/{spec.name}"}


# ---------------------------------------------------------------------------- the sweep


def _error_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None) or err  # a Ray task's error wraps the task's own
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if isinstance(cause, VaescopeError) else f"{type(cause).__name__}: {text}"
