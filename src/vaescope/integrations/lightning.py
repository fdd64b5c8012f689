"""A Lightning callback that watches every latent variable while a ``Trainer`` fits.

::

    from vaescope.integrations.lightning import LatentMonitorCallback
    trainer = Trainer(callbacks=[LatentMonitorCallback(probe=x_val[:1000], every=50),
                                 EarlyStopping(monitor="latent/active_count", mode="max", patience=5)])

Works with ``lightning`` (``lightning.pytorch``) and, when only that is installed, with
``pytorch_lightning`` (``pip install "vaescope[lightning]"``). Where both are installed the
callback is a ``lightning.pytorch.Callback``: use it with ``lightning``'s ``Trainer``.

**The model.** ``model=``: an adapter (:func:`vaescope.as_latent_model`) or anything it accepts;
``encode_fn=``: a function ``x -> (mu, logvar)`` (or a ``Normal``), run with the ``LightningModule``
as the module whose modes and device it follows; ``attribute=``: the ``LightningModule`` attribute
holding the VAE. With none of them the VAE is found through :func:`vaescope.as_latent_model`: the
``LightningModule`` itself (an ``encode`` method, or ``encoder``/``decoder``), then its ``model``,
then its ``vae`` attribute.

**Metrics.** After every training batch, the latest record goes to ``pl_module.log`` (not to the
loggers: they get every record at its own step, below) as :data:`ACTIVE_METRIC`
(``"latent/active_count"``, the number of active variables) and :data:`DEVIATION_METRIC`
(``"latent/variance_law_max_abs_dev"``, max_j |Var(mu_j) + mean sigma_j^2 - 1|), so that
``EarlyStopping(monitor=...)``, ``ModelCheckpoint(monitor=...)`` and the progress bar read them
from ``trainer.callback_metrics``. Each process measures (under DDP its weights and the probe are
the same, so are the numbers and the decisions taken on them); only the global-zero process
writes files.

**Files.** Into ``log_dir``, by default the trainer's logger's folder (``lightning_logs/version_N``)
or ``default_root_dir/vaescope`` when it has no logger: ``trace.csv`` and ``events.csv``. With a
``TensorBoardLogger`` the scalars and histograms go through its writer
(``trainer.logger.experiment``), next to the run's own curves; without one, into a writer of ours
in ``log_dir`` (when TensorBoard is installed). Other loggers get the two metrics above, under
the same names, through ``log_metrics`` at every record.

**Resume.** The trace, the events and the standing verdicts are the callback's ``state_dict``,
saved in every checkpoint: ``trainer.fit(..., ckpt_path=...)`` continues the same trace, with the
steps and events of an uninterrupted fit (the resumed folder's ``trace.csv`` holds all of it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vaescope.core.errors import VaescopeError
from vaescope.integrations.monitor import DEFAULT_EVERY, LatentMonitor, check_state
from vaescope.measures.statistics import LatentStatistics
from vaescope.models.adapters import LatentModelAdapter, as_latent_model

try:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.loggers import TensorBoardLogger  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError('vaescope.integrations.lightning needs Lightning: pip install "vaescope[lightning]"') from err

MODEL_ATTRIBUTES = ("model", "vae")  # where a LightningModule usually keeps the network it wraps
ACTIVE_METRIC = "latent/active_count"  # the names of TensorBoard's scalars, the loggers' and callback_metrics'
DEVIATION_METRIC = "latent/variance_law_max_abs_dev"


def find_latent_model(pl_module: nn.Module, attribute: str | None = None) -> LatentModelAdapter:
    """The VAE inside ``pl_module``, as an adapter (the lookup order is in the module doc)."""
    if attribute is not None:
        inner = getattr(pl_module, attribute, None)
        if inner is None:
            raise VaescopeError(f"LatentMonitorCallback attribute={attribute!r}: {type(pl_module).__name__} has no "
                                "such attribute; name the one holding the VAE")
        return as_latent_model(inner)
    candidates = [pl_module] + [getattr(pl_module, name) for name in MODEL_ATTRIBUTES
                                if isinstance(getattr(pl_module, name, None), nn.Module)]
    for candidate in candidates:
        try:
            return as_latent_model(candidate)
        except VaescopeError:
            continue
    raise VaescopeError(f"LatentMonitorCallback found no VAE in {type(pl_module).__name__}: it has no encode(x), "
                        f"nor a .model or .vae that has; pass attribute='name of the VAE attribute', "
                        "model=vaescope.as_latent_model(...) or encode_fn=lambda x: (mu, logvar)")


def summary(stats: LatentStatistics) -> dict[str, float]:
    """The two numbers the callback logs, by their metric names."""
    return {ACTIVE_METRIC: float(stats.active.sum()), DEVIATION_METRIC: float(stats.variance_law_max_abs_dev)}


class LatentMonitorCallback(pl.Callback):
    """Records per-variable Var(mu), mean sigma^2, KL and the verdict on ``probe`` every ``every``
    optimizer steps (``trainer.global_step``), and once before the first step; logs the active count
    and the variance law's largest deviation for ``EarlyStopping`` and ``ModelCheckpoint``.

    ``probe``: a fixed batch as the model takes it, ``(N, ...)``. ``model``, ``encode_fn``,
    ``attribute``: where the VAE is (at most one; see the module doc). ``log_dir``, ``tensorboard``
    and ``monitor_options`` (``thresholds``, ``on_nan``, ``patience``, ``histograms``, ``overwrite``,
    ``batch_key``, ``input_fn``, ``probe_size``) as for :class:`vaescope.LatentMonitor`. ``prog_bar``: show the active count in the progress bar.
    After fitting, :attr:`monitor` holds the trace and events.
    """

    def __init__(self, probe: Any, every: int = DEFAULT_EVERY, log_dir: str | Path | None = None,
                 tensorboard: bool | None = None, attribute: str | None = None, *, model: Any = None,
                 encode_fn: Callable[[torch.Tensor], Any] | None = None, prog_bar: bool = False,
                 **monitor_options: Any) -> None:
        if not isinstance(every, int) or every < 1:
            raise VaescopeError(f"LatentMonitorCallback every={every!r}; give a positive number of steps")
        given = [name for name, value in (("model", model), ("encode_fn", encode_fn), ("attribute", attribute))
                 if value is not None]
        if len(given) > 1:
            raise VaescopeError(f"LatentMonitorCallback got {' and '.join(given)}; pass one way to find the VAE")
        if encode_fn is not None and not callable(encode_fn):
            raise VaescopeError(f"LatentMonitorCallback encode_fn is {type(encode_fn).__name__}; give a function "
                                "x -> (mu, logvar)")
        self.probe = probe
        self.every = every
        self.log_dir = log_dir
        self.tensorboard = tensorboard
        self.attribute = attribute
        self.model = None if model is None else as_latent_model(model)
        self.encode_fn = encode_fn
        self.prog_bar = prog_bar
        self.monitor_options = monitor_options
        self.monitor: LatentMonitor | None = None
        self._other_loggers: list[Any] = []
        self._restored: dict[str, Any] | None = None
        self._latest: dict[str, float] | None = None  # the latest record's metrics, logged after every batch

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every=self.every)

    # ------------------------------------------------------------------------ set-up

    def _latent_model(self, pl_module: pl.LightningModule) -> LatentModelAdapter:
        if self.model is not None:
            return self.model
        if self.encode_fn is not None:  # the LightningModule's modes and device are the function's
            return as_latent_model(encode_fn=self.encode_fn, module=pl_module)
        return find_latent_model(pl_module, self.attribute)

    def _log_dir(self, trainer: pl.Trainer) -> Path:
        if self.log_dir is not None:
            return Path(self.log_dir)
        for logger in trainer.loggers:
            if getattr(logger, "log_dir", None):
                return Path(logger.log_dir)
        return Path(trainer.default_root_dir) / "vaescope"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._latent_model(pl_module)
        restored, self._restored = self._restored, None
        options = dict(self.monitor_options)
        if restored is not None:  # the folder's trace.csv is ours: the restored trace continues it
            options.setdefault("overwrite", True)
        if trainer.is_global_zero:
            board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
            writer = board.experiment if board is not None and self.tensorboard is not False else None
            self._other_loggers = [lg for lg in trainer.loggers if lg is not board]
            self.monitor = LatentMonitor(model, self.probe, every=self.every, log_dir=self._log_dir(trainer),
                                         tensorboard=None if writer is not None else self.tensorboard, writer=writer,
                                         **options)
        else:  # the same measurement, in memory: the metrics every process's EarlyStopping reads
            options.pop("overwrite", None)
            self.monitor = LatentMonitor(model, self.probe, every=self.every, tensorboard=False, **options)
        if restored is not None:
            self.monitor.load_state_dict(restored)
            self._latest = restored.get("latest")
        else:
            self._record(trainer, self.monitor.record(trainer.global_step, float(trainer.current_epoch)))

    # ------------------------------------------------------------------------ recording

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.monitor is None:
            return
        batches = trainer.num_training_batches
        epoch = trainer.current_epoch + ((batch_idx + 1) / batches if batches and batches != float("inf") else 0.0)
        self._record(trainer, self.monitor.step(trainer.global_step, epoch))
        for name, value in (self._latest or {}).items():  # the latest record, from the first batch on
            pl_module.log(name, value, on_step=True, on_epoch=False, logger=False,
                          prog_bar=self.prog_bar and name == ACTIVE_METRIC)

    def _record(self, trainer: pl.Trainer, stats: LatentStatistics | None) -> None:
        if stats is None:
            return
        self._latest = summary(stats)
        for logger in self._other_loggers:
            logger.log_metrics(self._latest, step=trainer.global_step)

    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()  # keep what was recorded up to the failure

    # ------------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """The trace, the events and the standing verdicts, as plain Python values (a checkpoint
        loads with ``weights_only=True``)."""
        if self.monitor is None:
            return dict(self._restored) if self._restored is not None else {}
        return {**self.monitor.state_dict(), "latest": self._latest}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the state until ``on_train_start`` builds the monitor that continues it."""
        if not state_dict:
            return
        check_state(state_dict, "LatentMonitorCallback.load_state_dict")
        self._restored = dict(state_dict)
