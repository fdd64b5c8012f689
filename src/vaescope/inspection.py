"""``vaescope inspect``: one model -> ``report.html`` (self-contained) + ``report.md`` + ``inspect.json``.

Sections, each a function of the :class:`Inspection` it reads and writes (:data:`SECTIONS`, in
order; a new section is one more function in that list): Table 1 with every activity criterion; a
per-channel summary when the latents are a map ``(C, h, w)``; the trace when one was recorded (a
vaescope run directory, or a :class:`vaescope.LatentMonitor` log directory); the criteria side by side;
the reconstruction gain per variable; for images, generation with the inactive variables zeroed against
the active-variable control, and for other data (vectors ``(N, D)``, token ids ``(N, T)``, counts) what
each variable does to the decoded means or token distributions, with the generation check in numbers;
the variance law per variable; and last, what the numbers mean (:mod:`vaescope.measures.lesson`).
Every analysis names the decoder likelihood it used, and runs under
:func:`vaescope.models.isolation.untouched`: the model comes back exactly as it was.

Two ways in: :func:`inspect` (any model :func:`vaescope.as_latent_model` accepts, and data of any
shape from anywhere :func:`vaescope.data.batches.iter_batches` reads) and :func:`inspect_run` (a run
directory of ``vaescope train``). ``vaescope inspect --model package.module:factory`` builds the
user's model with :func:`vaescope.models.user_model.load_user_model` first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaescope.core.config import StatsConfig
from vaescope.core.errors import VaescopeError
from vaescope.core.provenance import provenance
from vaescope.core.storage import atomic_write_json
from vaescope.data.batches import BatchKey, DataSource, InputFn, first_batch, take
from vaescope.data.dataset import Dataset
from vaescope.data.sources import load_dataset
from vaescope.measures.criteria import CriteriaTable, criteria_table, threshold_sweeps
from vaescope.measures.effects import variable_effects
from vaescope.measures.gains import ReconstructionGain, reconstruction_gain
from vaescope.measures.generation import generation_check, generation_rows
from vaescope.measures.information import MutualInformation, mutual_information
from vaescope.measures.intrinsic import data_and_code_dimensions
from vaescope.measures.lesson import lesson
from vaescope.measures.reading import Decoder, LikelihoodSpec, decoder
from vaescope.measures.statistics import LatentStatistics, latent_statistics
from vaescope.measures.trace import variance_trace
from vaescope.measures.variance_law import variance_law
from vaescope.models.adapters import LatentModelAdapter, as_latent_model
from vaescope.models.isolation import untouched
from vaescope.models.likelihoods import Categorical, run_likelihood
from vaescope.reports.dimension import available as dimension_available
from vaescope.reports.dimension import dimension_section
from vaescope.reports.html import Paragraph, Section, write_report
from vaescope.reports.oracle import is_linear_source, oracle_for, oracle_section
from vaescope.reports.sections import (
    FigureSink,
    channels_section,
    criteria_section,
    effects_section,
    figure_sink,
    generation_section,
    lesson_section,
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


def _data(data: Any, split: str) -> tuple[DataSource, str, bool]:
    """The data to inspect on, words saying what they are, and whether a split of a dataset was taken."""
    if isinstance(data, (str, Path)):
        data = load_dataset(str(data))
    if isinstance(data, Dataset):
        x, _ = data.split(split)
        return x, f"the {split} split of {data.name} ({len(x)} examples)", True
    if isinstance(data, (np.ndarray, torch.Tensor)):
        if data.ndim < 2 or len(data) < 2:
            raise VaescopeError(f"inspect data has shape {tuple(data.shape)}; give at least 2 examples (N, ...): "
                                "images (N, C, H, W), vectors (N, D) or token ids (N, T)")
        return data, f"{len(data)} examples", False
    if isinstance(data, (bytes, int, float)) or data is None:
        raise VaescopeError(f"inspect data is {type(data).__name__}; give a Dataset, a source such as 'mnist', an "
                            "array (N, ...) or a DataLoader")
    return data, f"the batches of a {type(data).__name__}", False


def data_kind(x: torch.Tensor, likelihood: Any) -> str:
    """"tokens" (a categorical likelihood), "images" (floating ``(B, C, H, W)``), "vectors" otherwise."""
    if isinstance(likelihood, Categorical):
        return "tokens"
    if x.ndim == 4 and x.is_floating_point():
        return "images"
    return "vectors"


def _trace(trace: Trace | str | Path | None) -> tuple[Trace | None, str]:
    if trace is None or isinstance(trace, Trace):
        return trace, "given as a Trace"
    directory = Path(trace)
    if not (directory / TRACE_FILE).is_file():
        raise VaescopeError(f"{directory} holds no {TRACE_FILE}; give a vaescope run directory or a LatentMonitor "
                            "log_dir")
    return read_trace(directory), f"{directory / TRACE_FILE}"


@dataclass
class Inspection:
    """What the sections read (the model, the data, the measured statistics) and write (``sections``,
    ``results``: the content of ``inspect.json``). ``kind``: "images", "vectors" or "tokens"."""

    adapter: LatentModelAdapter
    data: DataSource
    described: str
    split: str | None
    label: str
    thresholds: StatsConfig
    decoder: Decoder
    kind: str
    stats: LatentStatistics
    sink: FigureSink
    trace: Trace | None
    trace_source: str
    samples: int
    seed: int
    batch_size: int
    mi_images: int
    batch_key: BatchKey = None
    input_fn: InputFn | None = None
    sections: list[Section] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    gain: ReconstructionGain | None = None
    mi: MutualInformation | None = None
    criteria: CriteriaTable | None = None
    beta: float | None = None  # the KL weight and the fraction of a KL warm-up done, when known (the lesson)
    warmup: float | None = None
    source: Any = None  # the data as given (a source names its training split, for the oracle)
    oracle: Mapping[str, Any] | None = None  # {"sigma2", "beta"}: the linear-Gaussian closed form to compare with
    dimension: bool = True

    @property
    def shape(self) -> tuple[int, ...] | None:
        return self.adapter.latent_shape

    def read(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "batch_key": self.batch_key, "input_fn": self.input_fn}


def table1(ins: Inspection) -> None:
    ins.sections.append(table1_section(ins.stats, ins.label, ins.shape))
    ins.results["statistics"] = ins.stats.to_dict(ins.split)


def channels(ins: Inspection) -> None:
    if ins.shape is not None and len(ins.shape) > 1:
        rows = channel_summary(ins.stats, ins.shape, _gain(ins))
        ins.sections.append(channels_section(rows))
        ins.results["channels"] = rows


def recorded_trace(ins: Inspection) -> None:
    if ins.trace is not None and ins.trace.steps:
        traced = variance_trace(ins.trace, ins.thresholds.mu_variance_threshold)
        ins.sections.append(trace_section(traced, ins.sink, ins.label, ins.trace_source))
        ins.results["trace"] = {"source": ins.trace_source, **traced.to_dict()}


def _gain(ins: Inspection) -> ReconstructionGain:
    if ins.gain is None:
        ins.gain = reconstruction_gain(ins.adapter, ins.data, likelihood=ins.decoder.likelihood, **ins.read())
    return ins.gain


def criteria(ins: Inspection) -> None:
    gain = _gain(ins)
    if ins.mi_images:
        with untouched(ins.adapter):  # reading a DataLoader draws its seed from torch's generator
            sample = take(ins.data, ins.mi_images, batch_size=ins.batch_size, batch_key=ins.batch_key,
                          input_fn=ins.input_fn)
        ins.mi = mutual_information(ins.adapter, sample, seed=ins.seed, batch_size=ins.batch_size)
        ins.results["mutual_information"] = ins.mi.to_dict()
    ins.criteria = criteria_table(ins.stats, None if ins.mi is None else ins.mi.per_variable,
                                  gain.gain[np.argsort(gain.variables)])
    note = ("" if ins.mi is None else f"I(x; z_j) is estimated over the first {ins.mi.n} examples (He et al. 2019); "
            f"no estimate over n examples exceeds log n = {ins.mi.log_n:.2f} nats.")
    ins.sections.append(criteria_section(ins.criteria, threshold_sweeps(ins.criteria), ins.sink, ins.label, note))
    ins.results["criteria"] = ins.criteria.to_dict()


def gains(ins: Inspection) -> None:
    gain = _gain(ins)
    ins.sections.append(reconstruction_gain_section(gain, ins.stats.active, ins.sink, ins.label, ins.shape))
    ins.results["reconstruction_gain"] = gain.to_dict()


def generation(ins: Inspection) -> None:
    stats, lik = ins.stats, ins.decoder.likelihood
    check = generation_check(ins.adapter, stats.active, stats.kl_mean, n_samples=ins.samples, seed=ins.seed,
                             likelihood=lik)
    full, zeroed = generation_rows(ins.adapter, stats.active, n=10, seed=ins.seed, likelihood=lik)
    if ins.kind != "images":  # no grid to draw: the rows stay out of the figure
        full, zeroed = full[:0], zeroed[:0]
    ins.sections.append(generation_section(check, full, zeroed, ins.sink, ins.label))
    ins.results["generation"] = check.to_dict()


def effects(ins: Inspection) -> None:
    if ins.kind == "images":
        return
    found = variable_effects(ins.decoder, ins.stats.mu_mean)
    ins.sections.append(effects_section(found, ins.stats.active, ins.label, ins.shape))
    ins.results["variable_effects"] = found.to_dict()


def law(ins: Inspection) -> None:
    found = variance_law(ins.stats)
    ins.sections.append(variance_law_section(found, ins.sink, ins.label, ins.shape))
    ins.results["variance_law"] = found.to_dict()


def known_answers(ins: Inspection) -> None:
    """The linear-Gaussian oracle (linear data, or ``oracle=``; :mod:`vaescope.reports.oracle`) and the
    intrinsic-dimension estimates beside the active count (scikit-dimension installed, arrays of at
    least 100 examples; :mod:`vaescope.reports.dimension`)."""
    found = oracle_for(ins.adapter, ins.source, ins.oracle, likelihood=ins.decoder.likelihood, seed=ins.seed)
    if found is not None:
        ins.sections.append(oracle_section(found))
        ins.results["oracle"] = found.to_dict()
    if ins.dimension and dimension_available() and ins.kind != "tokens" \
            and isinstance(ins.data, (np.ndarray, torch.Tensor)) and len(ins.data) >= 100:
        with untouched(ins.adapter):  # scikit-dimension draws from Python's global random: put it back
            estimates = data_and_code_dimensions(ins.adapter, ins.data, ins.stats.active, seed=ins.seed)
        ins.sections.append(dimension_section(estimates, int(ins.stats.active.sum()), ins.stats.latent_dim))
        ins.results["dimension"] = {k: None if v is None else v.to_dict() for k, v in estimates.items()}


def meaning(ins: Inspection) -> None:
    learned = lesson(ins.stats, beta=ins.beta, warmup=ins.warmup, criteria=ins.criteria)
    ins.sections.append(lesson_section(learned))
    ins.results["lesson"] = learned.to_dict()


# The report's sections in order; each reads and extends the Inspection.
SECTIONS: list[Callable[[Inspection], None]] = [table1, channels, recorded_trace, criteria, gains, generation,
                                                 effects, law, known_answers, meaning]


def inspect(model: Any, data: Any, out: str | Path, *, trace: Trace | str | Path | None = None,
            split: str = "test", reconstruction: LikelihoodSpec = None, likelihood: LikelihoodSpec = None,
            thresholds: StatsConfig | None = None, samples: int = 1000, seed: int = 0, label: str | None = None,
            title: str | None = None, batch_size: int = 1000, mi_images: int = 2000, batch_key: BatchKey = None,
            input_fn: InputFn | None = None, oracle: Mapping[str, Any] | None = None,
            dimension: bool = True, beta: float | None = None, warmup: float | None = None) -> InspectResult:
    """Measure one model and write ``out/report.html``, ``out/report.md``, ``out/figures/``, ``out/inspect.json``.

    ``model``: anything :func:`vaescope.as_latent_model` accepts. ``data``: anything
    :func:`vaescope.data.batches.iter_batches` reads (images ``(N, C, H, W)``, uint8 or float in [0, 1];
    vectors ``(N, D)``; token ids ``(N, T)``; counts; a DataLoader, with ``batch_key=`` or ``input_fn=``),
    a :class:`Dataset` or a source such as ``"mnist"`` (then its ``split``). ``trace``: a recorded trace,
    or the folder holding its ``trace.csv``. ``likelihood`` (or ``reconstruction``, a run's
    ``loss.reconstruction``): the decoder's likelihood for the gains, the generation check and the
    effects (:func:`vaescope.models.likelihoods.resolve_likelihood`; default: what the model says, else
    the Bernoulli on logits). ``samples``: prior samples for the generation check. ``mi_images``: the
    first examples over which I(x; z_j) is estimated for the criteria (its cost grows as their square;
    0 leaves it out). ``oracle``: ``{"sigma2": decoder variance, "beta": KL weight}`` adds the
    linear-Gaussian closed form beside the measures (automatic for ``synthetic:linear=...`` data with a
    fixed-variance Gaussian likelihood). ``dimension``: the TwoNN/MLE section (when scikit-dimension is
    installed). ``beta`` and ``warmup``: the KL weight and the fraction of a KL warm-up done, when known,
    for the last section (:func:`vaescope.measures.lesson.lesson`). The model comes back exactly as it was
    (every analysis runs under ``untouched``).
    """
    if reconstruction is not None and likelihood is not None:
        raise VaescopeError("inspect got both reconstruction= and likelihood=; pass likelihood= only")
    adapter = as_latent_model(model)
    x, described, from_split = _data(data, split)
    recorded, source = _trace(trace)
    thresholds = thresholds or StatsConfig()
    label = label or adapter.kind.split(" (")[0]
    out = Path(out)
    stats = latent_statistics(adapter, x, batch_size=batch_size, thresholds=thresholds, batch_key=batch_key,
                              input_fn=input_fn)
    with untouched(adapter):  # reading a DataLoader draws its seed from torch's generator
        dec = decoder(adapter, likelihood if likelihood is not None else reconstruction, stats.latent_dim)
        example = first_batch(x, batch_size=2, batch_key=batch_key, input_fn=input_fn)
    ins = Inspection(adapter, x, described, split if from_split else None, label, thresholds, dec,
                     data_kind(example, dec.likelihood), stats, figure_sink(str(out)), recorded, source, samples,
                     seed, batch_size, mi_images, batch_key, input_fn, source=data, oracle=oracle, dimension=dimension,
                     beta=beta, warmup=warmup)
    ins.results.update({
        "model": {"label": label, "description": adapter.describe(), "latent_shape": list(ins.shape or ()),
                  "reconstruction": dec.likelihood.name, "likelihood": dec.describe()},
        "data": {"description": described, "n": stats.n, "split": ins.split, "kind": ins.kind,
                 "example_shape": list(example.shape[1:]), "dtype": str(example.dtype).removeprefix("torch.")},
        "provenance": provenance(),
    })
    for section in SECTIONS:
        section(ins)
    intro = [Paragraph(f"{adapter.describe()}. Measured on {described} ({ins.kind}); {stats.inactive_count} of "
                       f"{stats.latent_dim} latent variables inactive (Var(mu) < "
                       f"{thresholds.mu_variance_threshold:g}); the largest |Var(mu) + mean sigma^2 - 1| is "
                       f"{stats.variance_law_max_abs_dev:.3f}. The decoder's likelihood: {dec.describe()} (gains, "
                       "generation and effects use it).")]
    ins.sections.append(references_section())
    report, _ = write_report(out, title or f"vaescope inspect: {label}", ins.sections, intro)
    atomic_write_json(out / INSPECT_FILE, ins.results)
    return InspectResult(out, report, ins.results)


def inspect_run(run_dir: str | Path, out: str | Path | None = None, split: str = "test",
                dataset: Dataset | None = None, **options: Any) -> InspectResult:
    """:func:`inspect` for a run directory of ``vaescope train``: its model, data source, likelihood,
    thresholds and recorded trace; ``out`` defaults to ``RUN_DIR/inspect``."""

    run = load_run(run_dir)
    directory = Path(run_dir)
    trace = directory if (directory / TRACE_FILE).is_file() else None
    options.setdefault("likelihood", run_likelihood(run.config.loss))
    options.setdefault("beta", run.config.loss.beta)
    options.setdefault("warmup", 1.0)  # vaescope's training has no KL warm-up
    if is_linear_source(run.config.data.source):  # the closed form of the run's own objective
        options.setdefault("oracle", {"sigma2": float(getattr(run.config.loss, "variance", 0.5)),
                                      "beta": run.config.loss.beta})
    return inspect(run.model, dataset if dataset is not None else run.config.data.source,
                   out if out is not None else directory / "inspect", trace=trace, split=split,
                   thresholds=run.config.stats, label=f"{run.config.name} ({directory.name})", **options)
