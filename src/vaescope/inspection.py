"""``vaescope inspect``: one model -> ``report.html`` (self-contained) + ``report.md`` + ``inspect.json``.

Sections: Table 1 with every activity criterion; the trace when one was recorded (a vaescope run
directory, or a :class:`vaescope.LatentMonitor` log directory); the reconstruction gain per
variable; generation with the inactive variables zeroed against the active-variable control; the
variance law per variable; a per-channel summary when the latents are a map ``(C, h, w)``.

Three ways in: :func:`inspect` (any model :func:`vaescope.as_latent_model` accepts, and images),
:func:`inspect_run` (a run directory of ``vaescope train``) and :func:`load_user_model` (a
``package.module:factory`` the user names, with optional safetensors weights: this imports and
runs the user's code, and is only called with a reference the user gave).
"""

from __future__ import annotations

import inspect as pyinspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vaescope.core.config import ModelConfig, StatsConfig
from vaescope.core.errors import VaescopeError
from vaescope.core.provenance import provenance
from vaescope.core.storage import atomic_write_json
from vaescope.data.dataset import Dataset
from vaescope.data.sources import load_dataset
from vaescope.measures.criteria import criteria_table, threshold_sweeps
from vaescope.measures.gains import ReconstructionGain, reconstruction_gain
from vaescope.measures.generation import generation_check, generation_rows
from vaescope.measures.information import mutual_information
from vaescope.measures.statistics import LatentStatistics, latent_statistics
from vaescope.measures.trace import variance_trace
from vaescope.measures.variance_law import variance_law
from vaescope.models.adapters import as_latent_model
from vaescope.models.networks import load_factory
from vaescope.reports.html import Paragraph, Section, write_report
from vaescope.reports.sections import (
    channels_section,
    criteria_section,
    figure_sink,
    generation_section,
    reconstruction_gain_section,
    table1_section,
    trace_section,
    variance_law_section,
)
from vaescope.reports.text import references_section
from vaescope.runs.checkpoint import load_run
from vaescope.runs.files import TRACE_FILE, Trace, read_trace

INSPECT_FILE = "inspect.json"


@dataclass(frozen=True)
class InspectResult:
    """Where the report went, and every number it shows (the content of ``inspect.json``)."""

    out: Path
    report: Path
    results: dict[str, Any]


def channel_summary(stats: LatentStatistics, latent_shape: tuple[int, ...],
                    gain: ReconstructionGain | None = None) -> list[dict[str, Any]]:
    """Per channel of a latent map ``(C, ...)``: variables, active count, mean statistics, summed gain."""
    channels = latent_shape[0]
    per = math.prod(latent_shape[1:])

    def by_channel(values: np.ndarray) -> np.ndarray:  # (D,) -> (C, per)
        return np.asarray(values).reshape(channels, per)

    gains = None
    if gain is not None and len(gain.variables) == stats.latent_dim:
        gains = by_channel(gain.gain[np.argsort(gain.variables)])
    active = by_channel(stats.active)
    return [{"channel": c, "variables": per, "active": int(active[c].sum()),
             "mu_variance_mean": float(by_channel(stats.mu_variance)[c].mean()),
             "sigma2_mean_mean": float(by_channel(stats.sigma2_mean)[c].mean()),
             "kl_mean_mean": float(by_channel(stats.kl_mean)[c].mean()),
             "gain_sum": None if gains is None else float(gains[c].sum())} for c in range(channels)]


def _images(data: Any, split: str) -> tuple[np.ndarray | torch.Tensor, str]:
    """Images to inspect on, and words saying what they are."""
    if isinstance(data, (str, Path)):
        data = load_dataset(str(data))
    if isinstance(data, Dataset):
        x, _ = data.split(split)
        return x, f"the {split} split of {data.name} ({len(x)} images)"
    if isinstance(data, (np.ndarray, torch.Tensor)):
        if data.ndim < 2 or len(data) < 2:
            raise VaescopeError(f"inspect data has shape {tuple(data.shape)}; give at least 2 images (N, C, H, W)")
        return data, f"{len(data)} images"
    raise VaescopeError(f"inspect data is {type(data).__name__}; give a Dataset, a source such as 'mnist', or images "
                        "(N, C, H, W)")


def _trace(trace: Trace | str | Path | None) -> tuple[Trace | None, str]:
    if trace is None or isinstance(trace, Trace):
        return trace, "given as a Trace"
    directory = Path(trace)
    if not (directory / TRACE_FILE).is_file():
        raise VaescopeError(f"{directory} holds no {TRACE_FILE}; give a vaescope run directory or a LatentMonitor "
                            "log_dir")
    return read_trace(directory), f"{directory / TRACE_FILE}"


def inspect(model: Any, data: Any, out: str | Path, *, trace: Trace | str | Path | None = None,
            split: str = "test", reconstruction: str | None = None, thresholds: StatsConfig | None = None,
            samples: int = 1000, seed: int = 0, label: str | None = None, title: str | None = None,
            batch_size: int = 1000, mi_images: int = 2000) -> InspectResult:
    """Measure one model and write ``out/report.html``, ``out/report.md``, ``out/figures/``, ``out/inspect.json``.

    ``model``: anything :func:`vaescope.as_latent_model` accepts. ``data``: images ``(N, C, H, W)``
    (uint8, or float in [0, 1]), a :class:`Dataset` or a source such as ``"mnist"`` (then its
    ``split``). ``trace``: a recorded trace, or the folder holding its ``trace.csv``.
    ``reconstruction``: "bernoulli" or "gaussian" for the gains (default: what the model says,
    e.g. a pythae model's ``reconstruction_loss``, else "bernoulli"). ``samples``: prior samples
    for the generation check. ``mi_images``: the first images over which I(x; z_j) is estimated for
    the criteria (its cost grows as their square; 0 leaves it out). The model's train/eval modes are
    put back as they were.
    """
    adapter = as_latent_model(model)
    x, described = _images(data, split)
    recorded, source = _trace(trace)
    thresholds = thresholds or StatsConfig()
    kind = reconstruction or adapter.reconstruction or "bernoulli"
    label = label or adapter.kind.split(" (")[0]
    out = Path(out)
    sink = figure_sink(str(out))
    with adapter.evaluating():
        stats = latent_statistics(adapter, x, batch_size=batch_size, thresholds=thresholds)
        shape = adapter.latent_shape
        gain = reconstruction_gain(adapter, x, kind, batch_size=batch_size)
        check = generation_check(adapter, stats.active, stats.kl_mean, n_samples=samples, seed=seed)
        full, zeroed = generation_rows(adapter, stats.active, n=10, seed=seed)
        mi = mutual_information(adapter, x[:mi_images], seed=seed, batch_size=batch_size) if mi_images else None
    law = variance_law(stats)
    sections: list[Section] = [table1_section(stats, label, shape)]
    results: dict[str, Any] = {
        "model": {"label": label, "description": adapter.describe(), "latent_shape": list(shape or ()),
                  "reconstruction": kind},
        "data": {"description": described, "n": stats.n, "split": split if isinstance(data, (str, Path, Dataset))
                 else None},
        "statistics": stats.to_dict(split),
        "provenance": provenance(),
    }
    if shape is not None and len(shape) > 1:
        rows = channel_summary(stats, shape, gain)
        sections.append(channels_section(rows))
        results["channels"] = rows
    if recorded is not None and recorded.steps:
        traced = variance_trace(recorded, thresholds.mu_variance_threshold)
        sections.append(trace_section(traced, sink, label, source))
        results["trace"] = {"source": source, **traced.to_dict()}
    criteria = criteria_table(stats, None if mi is None else mi.per_variable, gain.gain[np.argsort(gain.variables)])
    mi_note = ("" if mi is None else f"I(x; z_j) is estimated over the first {mi.n} images (He et al. 2019); no "
               f"estimate over n images exceeds log n = {mi.log_n:.2f} nats.")
    sections.append(criteria_section(criteria, threshold_sweeps(criteria), sink, label, mi_note))
    results["criteria"] = criteria.to_dict()
    if mi is not None:
        results["mutual_information"] = mi.to_dict()
    sections.append(reconstruction_gain_section(gain, stats.active, sink, label, shape))
    sections.append(generation_section(check, full, zeroed, sink, label))
    sections.append(variance_law_section(law, sink, label, shape))
    results.update({"reconstruction_gain": gain.to_dict(), "generation": check.to_dict(),
                    "variance_law": law.to_dict()})
    intro = [Paragraph(f"{adapter.describe()}. Measured on {described}; {stats.inactive_count} of "
                       f"{stats.latent_dim} latent variables inactive (Var(mu) < "
                       f"{thresholds.mu_variance_threshold:g}); the largest |Var(mu) + mean sigma^2 - 1| is "
                       f"{stats.variance_law_max_abs_dev:.3f}. Gains use the {kind} reconstruction error.")]

    sections.append(references_section())
    report, _ = write_report(out, title or f"vaescope inspect: {label}", sections, intro)
    atomic_write_json(out / INSPECT_FILE, results)
    return InspectResult(out, report, results)


def inspect_run(run_dir: str | Path, out: str | Path | None = None, split: str = "test",
                dataset: Dataset | None = None, **options: Any) -> InspectResult:
    """:func:`inspect` for a run directory of ``vaescope train``: its model, data source, likelihood,
    thresholds and recorded trace; ``out`` defaults to ``RUN_DIR/inspect``."""

    run = load_run(run_dir)
    directory = Path(run_dir)
    trace = directory if (directory / TRACE_FILE).is_file() else None
    return inspect(run.model, dataset if dataset is not None else run.config.data.source,
                   out if out is not None else directory / "inspect", trace=trace, split=split,
                   reconstruction=run.config.loss.reconstruction, thresholds=run.config.stats,
                   label=f"{run.config.name} ({directory.name})", **options)


def load_user_model(reference: str, image_shape: tuple[int, ...], weights: str | Path | None = None) -> nn.Module:
    """The model ``package.module:factory`` builds (this imports and runs the user's code).

    The factory is called with no argument, with ``image_shape`` ``(C, H, W)`` when it takes one,
    or with ``(image_shape, ModelConfig)`` when it takes two (the ``model.factory`` contract).
    ``weights``: a safetensors file loaded with ``load_state_dict`` (strict).
    """

    factory = load_factory(reference)
    try:
        required = [p for p in pyinspect.signature(factory).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # no signature (a builtin): call it bare
        required = []
    arguments: tuple[Any, ...] = ((), (tuple(image_shape),),
                                  (tuple(image_shape), ModelConfig(factory=reference)))[min(len(required), 2)]
    try:
        model = factory(*arguments)
    except Exception as err:  # the user's code may raise anything
        first = str(err).splitlines()[0] if str(err) else ""
        raise VaescopeError(f"--model {reference!r} raised {type(err).__name__}: {first}; fix the factory") from err
    if not isinstance(model, nn.Module):
        raise VaescopeError(f"--model {reference!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_weights(model, Path(weights), reference)
    return model.eval()


def _load_weights(model: nn.Module, path: Path, reference: str) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise VaescopeError(f"--weights {path} is not a .safetensors file; vaescope never unpickles weights "
                            "(save them with safetensors.torch.save_file(model.state_dict(), ...))")
    try:
        state = load_file(str(path))
    except FileNotFoundError as err:
        raise VaescopeError(f"--weights {path} does not exist; check the path") from err
    except (SafetensorError, OSError, ValueError) as err:
        raise VaescopeError(f"--weights {path} is not a readable safetensors file ({err}); check the file") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise VaescopeError(f"--weights {path} do not fit the model {reference!r} builds ({detail}); give the "
                            "weights saved from that model") from err

