"""A Lightning callback that watches every latent variable while a ``Trainer`` fits.

::

    from vaescope.integrations.lightning import LatentMonitorCallback
    trainer = Trainer(callbacks=[LatentMonitorCallback(probe=x_val[:1000], every=50)])

Works with ``lightning`` (``lightning.pytorch``) and, when only that is installed, with
``pytorch_lightning`` (``pip install "vaescope[lightning]"``). Where both are installed the
callback is a ``lightning.pytorch.Callback``: use it with ``lightning``'s ``Trainer``.

The model is found through :func:`vaescope.as_latent_model`, in this order: the attribute named by
``attribute=``; the ``LightningModule`` itself (an ``encode`` method, or ``encoder``/``decoder``);
its ``model``, then its ``vae`` attribute. Files go into ``log_dir``, by default the trainer's
logger's folder (``lightning_logs/version_N``) or ``default_root_dir/vaescope`` when it has no
logger. With a ``TensorBoardLogger`` the scalars and histograms go through its writer
(``trainer.logger.experiment``), next to the run's own curves; without one, into a writer of ours
in ``log_dir`` (when TensorBoard is installed). Other loggers get the active count and the
variance law's largest deviation through ``log_metrics``. Only the global-zero process measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vaescope.core.errors import VaescopeError
from vaescope.integrations.monitor import DEFAULT_EVERY, LatentMonitor
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
                        f"nor a .model or .vae that has; pass attribute='name of the VAE attribute'")


class LatentMonitorCallback(pl.Callback):
    """Records per-variable Var(mu), mean sigma^2, KL and the verdict on ``probe`` every ``every``
    optimizer steps (``trainer.global_step``), and once before the first step.

    ``probe``: images ``(N, C, H, W)`` as the model takes them. ``log_dir``, ``tensorboard`` and
    ``monitor_options`` (``thresholds``, ``on_nan``, ``patience``, ``histograms``, ``overwrite``)
    as for :class:`vaescope.LatentMonitor`. ``attribute``: the module attribute holding the VAE.
    After fitting, :attr:`monitor` holds the trace and events.
    """

    def __init__(self, probe: Any, every: int = DEFAULT_EVERY, log_dir: str | Path | None = None,
                 tensorboard: bool | None = None, attribute: str | None = None, **monitor_options: Any) -> None:
        if not isinstance(every, int) or every < 1:
            raise VaescopeError(f"LatentMonitorCallback every={every!r}; give a positive number of steps")
        self.probe = probe
        self.every = every
        self.log_dir = log_dir
        self.tensorboard = tensorboard
        self.attribute = attribute
        self.monitor_options = monitor_options
        self.monitor: LatentMonitor | None = None
        self._other_loggers: list[Any] = []

    def _log_dir(self, trainer: pl.Trainer) -> Path:
        if self.log_dir is not None:
            return Path(self.log_dir)
        for logger in trainer.loggers:
            if getattr(logger, "log_dir", None):
                return Path(logger.log_dir)
        return Path(trainer.default_root_dir) / "vaescope"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model = find_latent_model(pl_module, self.attribute)
        board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        writer = board.experiment if board is not None and self.tensorboard is not False else None
        self._other_loggers = [lg for lg in trainer.loggers if lg is not board]
        self.monitor = LatentMonitor(model, self.probe, every=self.every, log_dir=self._log_dir(trainer),
                                     tensorboard=None if writer is not None else self.tensorboard, writer=writer,
                                     **self.monitor_options)
        self._record(trainer, self.monitor.record(trainer.global_step, float(trainer.current_epoch)))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.monitor is None:
            return
        batches = trainer.num_training_batches
        epoch = trainer.current_epoch + ((batch_idx + 1) / batches if batches and batches != float("inf") else 0.0)
        self._record(trainer, self.monitor.step(trainer.global_step, epoch))

    def _record(self, trainer: pl.Trainer, stats: Any) -> None:
        if stats is None or not self._other_loggers:
            return
        summary = {"latent/active_count": float(stats.active.sum()),
                   "latent/variance_law_max_abs_dev": stats.variance_law_max_abs_dev}
        for logger in self._other_loggers:
            logger.log_metrics(summary, step=trainer.global_step)

    def _close(self) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()  # keep what was recorded up to the failure
