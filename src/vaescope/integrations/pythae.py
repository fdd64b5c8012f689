"""A pythae training callback that watches every latent variable while ``TrainingPipeline`` runs.

::

    from vaescope.integrations.pythae import LatentMonitorCallback
    pipeline(train_data=x_train, eval_data=x_test, callbacks=[LatentMonitorCallback(probe=x_test[:1000])])

A subclass of pythae's ``TrainingCallback`` (``pip install "vaescope[pythae]"``). pythae calls
``on_train_step_end`` after every optimizer step with the model (``model=``) but no step number:
the callback counts the steps itself, and takes the epoch length from ``on_epoch_begin``'s
``train_loader``. The pythae model needs no adapter (:func:`vaescope.as_latent_model` reads its
``encoder`` / ``decoder``). Files go into ``log_dir``, by default a new folder
``latent_monitor``, ``latent_monitor_1``, ... inside the training config's ``output_dir``.
Only the main process (rank -1 or 0) measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vaescope.core.errors import VaescopeError
from vaescope.integrations.monitor import DEFAULT_EVERY, LatentMonitor

try:
    from pythae.trainers.training_callbacks import TrainingCallback
except ImportError as err:
    raise ImportError('vaescope.integrations.pythae needs pythae: pip install "vaescope[pythae]"') from err

DEFAULT_FOLDER = "latent_monitor"


def _fresh_folder(parent: Path) -> Path:
    """``parent/latent_monitor``, or the first free ``latent_monitor_N``."""
    candidate, n = parent / DEFAULT_FOLDER, 0
    while candidate.exists():
        n += 1
        candidate = parent / f"{DEFAULT_FOLDER}_{n}"
    return candidate


class LatentMonitorCallback(TrainingCallback):
    """Records per-variable Var(mu), mean sigma^2, KL and the verdict on ``probe`` every ``every``
    training steps of pythae's trainer, and once before the first.

    ``probe``: images ``(N, C, H, W)`` as the model takes them. ``log_dir``, ``tensorboard`` and
    ``monitor_options`` (``thresholds``, ``on_nan``, ``patience``, ``histograms``, ``overwrite``)
    as for :class:`vaescope.LatentMonitor`. After training, :attr:`monitor` holds the trace and events.
    """

    def __init__(self, probe: Any, every: int = DEFAULT_EVERY, log_dir: str | Path | None = None,
                 tensorboard: bool | None = None, **monitor_options: Any) -> None:
        if not isinstance(every, int) or every < 1:
            raise VaescopeError(f"LatentMonitorCallback every={every!r}; give a positive number of steps")
        self.probe = probe
        self.every = every
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.tensorboard = tensorboard
        self.monitor_options = monitor_options
        self.monitor: LatentMonitor | None = None
        self.global_step = 0
        self._epoch = 0
        self._batch = 0
        self._batches = 0
        self._main = True  # the main process (rank -1 or 0) measures, the others do nothing

    def on_train_begin(self, training_config: Any, **kwargs: Any) -> None:
        self._main = getattr(training_config, "rank", -1) in (-1, 0)
        if not self._main:
            return
        log_dir = self.log_dir or _fresh_folder(Path(training_config.output_dir))
        self.monitor = LatentMonitor(kwargs["model"], self.probe, every=self.every, log_dir=log_dir,
                                     tensorboard=self.tensorboard, **self.monitor_options)
        self.global_step = 0
        self.monitor.record(0, 0.0)

    def on_epoch_begin(self, training_config: Any, **kwargs: Any) -> None:
        self._epoch = int(kwargs.get("epoch", self._epoch + 1)) - 1  # pythae counts epochs from 1
        loader = kwargs.get("train_loader")
        self._batches = len(loader) if loader is not None else 0
        self._batch = 0

    def on_train_step_end(self, training_config: Any, **kwargs: Any) -> None:
        if self.monitor is None or not self._main:
            return
        self.global_step += 1
        self._batch += 1
        epoch = self._epoch + (self._batch / self._batches if self._batches else 0.0)
        self.monitor.step(self.global_step, epoch)

    def on_train_end(self, training_config: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.close()
