"""A live latent monitor for any training loop.

Every ``every`` steps, :meth:`LatentMonitor.step` measures the model on a fixed probe batch with
:func:`vaescope.measures.statistics.latent_statistics` (the one definition of Var(mu), mean sigma^2, KL, the
variance law and the verdict) and writes, into ``log_dir``:

- ``trace.csv``: Var(mu_j) and mean sigma_j^2 per recorded step, in the run format of
  :class:`vaescope.runs.files.Trace` (so ``vaescope inspect`` draws it);
- ``events.csv``: one line per variable that collapses (active -> inactive) or revives, also
  logged on the ``vaescope.integrations.monitor`` logger at INFO;
- TensorBoard scalars, grouped so the dashboard folds them (``latent/active_count``,
  ``latent/mu_variance/07``, ``latent/sigma2_mean/07``, ``latent/kl/07``) and histograms across
  variables, through ``torch.utils.tensorboard`` (``pip install "vaescope[tensorboard]"``).

The measurement runs under :func:`vaescope.models.isolation.untouched` (through ``latent_statistics``):
every submodule in eval mode and put back exactly as it was, no gradient, the global random states
unchanged; gradients, weights and BatchNorm statistics are left as they were, so a monitored training
takes the same steps as an unmonitored one. :meth:`LatentMonitor.summary` ends with what the last
record means (:func:`vaescope.measures.lesson.lesson`).
NaN or Inf from the encoder is a logged warning and a ``nan`` event, not an exception, unless
``on_nan="raise"``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
import torch

from vaescope.core.config import StatsConfig
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_text
from vaescope.data.batches import BatchKey, InputFn, take
from vaescope.measures.lesson import Lesson, lesson
from vaescope.measures.reading import floating_dtype
from vaescope.measures.statistics import LatentStatistics, latent_statistics
from vaescope.models.adapters import LatentModelAdapter, as_latent_model, variable_position
from vaescope.models.isolation import untouched
from vaescope.runs.files import TRACE_FILE, Trace, rows_to_csv

logger = logging.getLogger(__name__)

# One record of a 1,000-image probe costs about as much as a dense16 training step or two on
# 2 cores (encoding ~1 ms, plus the statistics, the files and TensorBoard): every 50 steps keeps
# it near 1-3% of training. `measure_overhead` measures it.
DEFAULT_EVERY = 50
EVENTS_FILE = "events.csv"
EVENT_COLUMNS = ["step", "epoch", "variable", "position", "event", "mu_variance", "sigma2_mean", "kl_mean"]
TRACE_WRITE_SECONDS = 5.0  # trace.csv is rewritten (atomically) at most this often, and at close()


@dataclass(frozen=True)
class LatentEvent:
    """A variable changed verdict: ``event`` is "collapse", "revival" or "nan" (variable -1)."""

    step: int
    epoch: float
    variable: int
    position: str
    event: str
    mu_variance: float
    sigma2_mean: float
    kl_mean: float


def _tensorboard_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise VaescopeError('TensorBoard is not installed: pip install "vaescope[tensorboard]", '
                            "or pass tensorboard=False") from err
    return SummaryWriter(log_dir=str(log_dir))


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class LatentMonitor:
    """Watch every latent variable of ``model`` while it trains.

    ``model``: anything :func:`vaescope.as_latent_model` accepts. ``probe``: a fixed set of held-out
    examples (N >= 2; a few hundred to 1,000), shaped as the model's input: images ``(N, C, H, W)``
    (uint8 = value / 255), vectors ``(N, D)``, token ids ``(N, T)``, counts; or a DataLoader / any
    iterable of batches (read once, ``batch_key=`` and ``input_fn=`` as in
    :func:`vaescope.data.batches.iter_batches`; at most ``probe_size`` rows). The monitor keeps them on
    the model's device (floats in the model's dtype, integers as they are). ``every``: steps between records.
    ``log_dir``: where ``trace.csv``, ``events.csv`` and TensorBoard files go (None: keep everything
    in memory, :attr:`trace` and :attr:`events`). ``tensorboard``: True requires it, None uses it
    when installed, False never; ``writer`` a ``SummaryWriter`` to log through instead of one of
    our own (not closed by us). ``patience``: consecutive records a new verdict must hold before
    it counts as a collapse or revival (1: at once; raise it when variables sit at the threshold).
    ``steps_per_epoch``: to fill the trace's epoch column (else ``epoch`` given to :meth:`step`).
    """

    def __init__(self, model: Any, probe: Any, every: int = DEFAULT_EVERY,
                 log_dir: str | Path | None = None, tensorboard: bool | None = None, *,
                 thresholds: StatsConfig | None = None, on_nan: Literal["warn", "raise"] = "warn",
                 writer: Any = None, histograms: bool = True, patience: int = 1,
                 steps_per_epoch: int | None = None, overwrite: bool = False, batch_key: BatchKey = None,
                 input_fn: InputFn | None = None, probe_size: int | None = None) -> None:
        if not isinstance(every, int) or every < 1:
            raise VaescopeError(f"LatentMonitor every={every!r}; give a positive number of steps")
        if on_nan not in ("warn", "raise"):
            raise VaescopeError(f"LatentMonitor on_nan={on_nan!r}; use 'warn' or 'raise'")
        if patience < 1:
            raise VaescopeError(f"LatentMonitor patience={patience}; use 1 or more records")
        self.model: LatentModelAdapter = as_latent_model(model)
        self.every = every
        self.thresholds = thresholds or StatsConfig()
        self.on_nan = on_nan
        self.histograms = histograms
        self.patience = patience
        self.steps_per_epoch = steps_per_epoch
        self.trace = Trace()
        self.events: list[LatentEvent] = []
        self.latest: LatentStatistics | None = None
        self._probe = self._check_probe(probe, batch_key, input_fn, probe_size)
        self._verdict: np.ndarray | None = None
        self._streak: np.ndarray | None = None
        self._last_step: int | None = None
        self._trace_written = 0.0
        self.log_dir = None if log_dir is None else Path(log_dir)
        if self.log_dir is not None:
            self._prepare_dir(self.log_dir, overwrite)
        self._own_writer = False
        self.writer = writer
        if writer is None and tensorboard is not False and self.log_dir is not None:
            if tensorboard or _tensorboard_available():
                self.writer, self._own_writer = _tensorboard_writer(self.log_dir), True
        elif writer is None and tensorboard:
            raise VaescopeError("LatentMonitor tensorboard=True needs log_dir (or writer=SummaryWriter)")

    # ------------------------------------------------------------------------ set-up

    def _check_probe(self, probe: Any, batch_key: BatchKey, input_fn: InputFn | None,
                     probe_size: int | None) -> torch.Tensor:
        try:
            with untouched(self.model):  # reading a DataLoader draws its seed from torch's generator
                x = take(probe, probe_size, batch_key=batch_key, input_fn=input_fn, device=self.model.device,
                         dtype=floating_dtype(self.model))
        except VaescopeError as err:
            raise VaescopeError(f"LatentMonitor probe: {err}") from err
        x = x.detach().clone()  # the monitor's own copy: the caller's array may change
        if len(x) < 2:
            raise VaescopeError(f"LatentMonitor probe has shape {tuple(x.shape)}; give at least 2 examples shaped "
                                "like a training batch, e.g. (N, C, H, W) images or (N, D) vectors")
        try:  # two examples through the encoder: a wrong shape is one clear line now, not at step N
            self._measure(x[:2])
        except VaescopeError as err:
            cause = err.__cause__ if err.__cause__ is not None else err
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
            raise VaescopeError(f"LatentMonitor probe of shape {tuple(x.shape)} does not fit {self.model.kind} ({first}; "
                                f"the probe is {str(x.dtype).removeprefix('torch.')}); give examples shaped like one training "
                                "batch, or pass batch_key= / input_fn= to select or build them") from err
        return x

    def _prepare_dir(self, log_dir: Path, overwrite: bool) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        old = [p for p in (log_dir / TRACE_FILE, log_dir / EVENTS_FILE) if p.exists()]
        if old and not overwrite:
            raise VaescopeError(f"{log_dir} already holds {old[0].name} of another monitor; choose another "
                                "log_dir or pass overwrite=True")
        for path in old:
            path.unlink()

    # ------------------------------------------------------------------------ measuring

    def _measure(self, x: torch.Tensor) -> LatentStatistics:
        """Statistics of ``x``, under ``untouched`` (in ``latent_statistics``)."""
        return latent_statistics(self.model, x, batch_size=len(x), thresholds=self.thresholds, device=x.device)

    def step(self, global_step: int, epoch: float | None = None) -> LatentStatistics | None:
        """Call once per training step; records when ``global_step`` is a multiple of ``every``
        (once per step value: a repeated step, e.g. under gradient accumulation, is skipped).
        Returns the statistics when it recorded, else None."""
        if global_step % self.every or global_step == self._last_step:
            return None
        return self.record(global_step, epoch)

    def record(self, global_step: int, epoch: float | None = None) -> LatentStatistics | None:
        """Measure the probe now, whatever the step; None when the encoder gave NaN or Inf."""
        self._last_step = global_step
        if epoch is None:
            epoch = global_step / self.steps_per_epoch if self.steps_per_epoch else math.nan
        device = self.model.device
        if self._probe.device != device:  # the model moved (e.g. Lightning put it on the GPU)
            self._probe = self._probe.to(device)
        stats = self._measure(self._probe)
        finite = all(np.isfinite(a).all() for a in (stats.mu_variance, stats.sigma2_mean, stats.kl_mean))
        if not finite:
            self._non_finite(stats, global_step, epoch)
            return None
        self.latest = stats
        self.trace.add(stats, global_step, epoch)
        self._verdicts(stats, global_step, epoch)
        if self.writer is not None:
            self._log_tensorboard(stats, global_step)
        if self.log_dir is not None and time.monotonic() - self._trace_written >= TRACE_WRITE_SECONDS:
            self.flush()
        return stats

    def _non_finite(self, stats: LatentStatistics, step: int, epoch: float) -> None:
        bad = np.flatnonzero(~(np.isfinite(stats.mu_variance) & np.isfinite(stats.sigma2_mean)))
        message = (f"the encoder gave NaN or Inf on the probe at step {step} ({len(bad)} of {stats.latent_dim} "
                   "variables); the training has diverged or the probe holds NaN")
        if self.on_nan == "raise":
            raise VaescopeError(message + "; the monitor stops it because on_nan='raise'")
        logger.warning("vaescope monitor: %s; this point is not recorded", message)
        self._add_events([LatentEvent(step, epoch, -1, "", "nan", math.nan, math.nan, math.nan)])

    def _verdicts(self, stats: LatentStatistics, step: int, epoch: float) -> None:
        """Collapse and revival: a verdict that differs from the standing one for ``patience`` records."""
        active = stats.active
        if self._verdict is None:
            self._verdict, self._streak = active.copy(), np.zeros(len(active), dtype=int)
            return
        assert self._streak is not None
        self._streak = np.where(active != self._verdict, self._streak + 1, 0)
        flipped = np.flatnonzero(self._streak >= self.patience)
        if not len(flipped):
            return
        shape = self.model.latent_shape
        events = [LatentEvent(step, epoch, int(j), variable_position(int(j), shape),
                              "revival" if active[j] else "collapse", float(stats.mu_variance[j]),
                              float(stats.sigma2_mean[j]), float(stats.kl_mean[j])) for j in flipped]
        self._verdict[flipped] = active[flipped]
        self._streak[flipped] = 0
        for e in events:
            logger.info("vaescope monitor: latent variable %s %s at step %d (Var(mu) %.3g, mean sigma^2 %.3g, "
                        "KL %.3g nats)", e.position, "collapsed" if e.event == "collapse" else "revived", step,
                        e.mu_variance, e.sigma2_mean, e.kl_mean)
        self._add_events(events)

    def _add_events(self, events: list[LatentEvent]) -> None:
        self.events.extend(events)
        if self.log_dir is not None:
            self._write(self.log_dir / EVENTS_FILE, rows_to_csv(EVENT_COLUMNS, [asdict(e) for e in self.events]))

    def _log_tensorboard(self, stats: LatentStatistics, step: int) -> None:
        w = self.writer
        width = max(2, len(str(stats.latent_dim - 1)))
        w.add_scalar("latent/active_count", int(stats.active.sum()), step)
        w.add_scalar("latent/variance_law_max_abs_dev", stats.variance_law_max_abs_dev, step)
        for name, values in (("mu_variance", stats.mu_variance), ("sigma2_mean", stats.sigma2_mean),
                             ("kl", stats.kl_mean)):
            for j, value in enumerate(values):
                w.add_scalar(f"latent/{name}/{j:0{width}d}", float(value), step)
        if self.histograms:  # across variables: active and inactive ones form two clumps
            w.add_histogram("latent/hist/log10_mu_variance", np.log10(np.maximum(stats.mu_variance, 1e-12)), step)
            w.add_histogram("latent/hist/sigma2_mean", stats.sigma2_mean, step)
            w.add_histogram("latent/hist/kl", stats.kl_mean, step)

    # ------------------------------------------------------------------------ summary

    def lesson(self, beta: float | None = None, warmup: float | None = None) -> Lesson | None:
        """What the last record means (:func:`vaescope.measures.lesson.lesson`; ``beta`` the KL weight
        and ``warmup`` the fraction of a KL warm-up done, when the training has them); None before any."""
        return None if self.latest is None else lesson(self.latest, beta=beta, warmup=warmup)

    def summary(self, beta: float | None = None, warmup: float | None = None) -> str:
        """The monitor in a few lines: records, the last active count, the events, and the lesson."""
        if self.latest is None:
            return "vaescope monitor: nothing recorded yet"
        stats = self.latest
        counts = {kind: sum(e.event == kind for e in self.events) for kind in ("collapse", "revival", "nan")}
        lines = [(f"vaescope monitor: {len(self.trace.steps)} records up to step {self.trace.steps[-1]} on a probe of "
                 f"{stats.n} examples; {int(stats.active.sum())} of {stats.latent_dim} variables active at the last "
                 f"(Var(mu) >= {self.thresholds.mu_variance_threshold:g}); {counts['collapse']} collapse(s), "
                 f"{counts['revival']} revival(s), {counts['nan']} NaN record(s)")]
        learned = self.lesson(beta, warmup)
        assert learned is not None
        lines.append(learned.text())
        return "\n".join(lines)

    # ------------------------------------------------------------------------ files

    def _write(self, path: Path, text: str) -> None:
        try:
            atomic_write_text(path, text)
        except (OSError, VaescopeError) as err:  # a full disk must not stop the user's training
            logger.warning("vaescope monitor: cannot write %s (%s); training goes on", path, err)

    # ------------------------------------------------------------------------ state, for a checkpoint

    def state_dict(self) -> dict[str, Any]:
        """The trace, the events and the standing verdicts as plain Python values (JSON, or a
        checkpoint that loads with ``torch.load(weights_only=True)``); :meth:`load_state_dict`
        continues from them, so a resumed training keeps one trace and one list of events."""
        return {
            "version": STATE_VERSION,
            "steps": [int(s) for s in self.trace.steps],
            "epochs": [float(e) for e in self.trace.epochs],
            "mu_variance": [[float(v) for v in row] for row in self.trace.mu_variance],
            "sigma2_mean": [[float(v) for v in row] for row in self.trace.sigma2_mean],
            "events": [asdict(e) for e in self.events],
            "verdict": None if self._verdict is None else [bool(v) for v in self._verdict],
            "streak": None if self._streak is None else [int(v) for v in self._streak],
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s values (checked: one line names what is wrong)."""
        check_state(state, "LatentMonitor.load_state_dict")
        width = self.model.latent_dim
        if state["mu_variance"] and width is not None and len(state["mu_variance"][0]) != width:
            raise VaescopeError(f"LatentMonitor.load_state_dict: the saved trace has {len(state['mu_variance'][0])} "
                                f"latent variables, the model {width}; resume with the model that was saved")
        self.trace = Trace(list(state["steps"]), list(state["epochs"]),
                           [np.asarray(r, dtype=np.float64) for r in state["mu_variance"]],
                           [np.asarray(r, dtype=np.float64) for r in state["sigma2_mean"]])
        self.events = [LatentEvent(**{k: e[k] for k in _EVENT_FIELDS}) for e in state["events"]]
        self._verdict = None if state["verdict"] is None else np.asarray(state["verdict"], dtype=bool)
        self._streak = None if state["streak"] is None else np.asarray(state["streak"], dtype=int)
        self._last_step = state["last_step"]
        self._add_events([])  # events.csv of the resumed folder holds the restored events too
        self.flush()

    def flush(self) -> None:
        """Write ``trace.csv`` now (it is otherwise rewritten at most every few seconds) and flush TensorBoard."""
        if self.log_dir is not None and self.trace.steps:
            self._write(self.log_dir / TRACE_FILE, self.trace.to_csv())
            self._trace_written = time.monotonic()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Write everything; close our own TensorBoard writer (not one that was passed in)."""
        self.flush()
        if self._own_writer and self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- cost


STATE_VERSION = 1
_EVENT_FIELDS = [f.name for f in fields(LatentEvent)]
_STATE_KEYS = {"version", "steps", "epochs", "mu_variance", "sigma2_mean", "events", "verdict", "streak", "last_step"}


def check_state(state: Any, where: str) -> None:
    """Refuse, in one line, a state that :meth:`LatentMonitor.state_dict` did not write."""
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or not _STATE_KEYS <= set(state):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise VaescopeError(f"{where} got {found}, not a monitor state of version {STATE_VERSION} (keys "
                            f"{', '.join(sorted(_STATE_KEYS))}); resume from a checkpoint that saved it, or start afresh")
    if len({len(state[k]) for k in ("steps", "epochs", "mu_variance", "sigma2_mean")}) != 1:
        raise VaescopeError(f"{where}: the saved trace's steps, epochs and values have different lengths; the "
                            "checkpoint is damaged, start afresh")
