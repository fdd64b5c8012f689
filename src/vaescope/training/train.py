"""``train``: one run, from a config to a finished run directory.

Locks the directory, applies the one run-directory policy (:func:`vaescope.runs.files.resolve_run_config`),
resumes from the newest checkpoint, runs epochs of the engine (:mod:`vaescope.training.engine`), and after
each epoch writes the test metrics, the trace and a checkpoint; at the end, ``model.safetensors``
and, last, ``manifest.json`` (the SHA-256 of the final files). A run resumed from any checkpoint
ends with the same files as one never interrupted; resuming a finished run whose final files no
longer match its manifest writes them again from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vaescope.core.config import Config
from vaescope.core.config import from_dict as config_from_dict
from vaescope.core.device import cpu_settings, select_device
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import atomic_write_text, directory_lock, remove_temporaries
from vaescope.data.batches import as_float, images_to_device
from vaescope.data.dataset import Dataset, check_dataset, split_images
from vaescope.data.sources import load_dataset
from vaescope.measures.statistics import latent_statistics
from vaescope.models.networks import CUSTOM_KIND
from vaescope.runs.checkpoint import (
    WEIGHTS_FILE,
    has_checkpoint,
    load_checkpoint,
    load_checkpoint_epoch,
    save_checkpoint,
    save_weights,
)
from vaescope.runs.files import CONFIG_FILE, Trace, resolve_run_config, write_progress
from vaescope.runs.manifest import verify_run, write_manifest
from vaescope.runs.variance import write_record
from vaescope.training.compile import for_run
from vaescope.training.engine import (
    EVAL_SEED_OFFSET,
    NonFiniteLoss,
    TrainingSetup,
    evaluate,
    prepare_training,
    train_epoch,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    config: Config
    model: nn.Module
    metrics: list[dict[str, Any]]
    trace: Trace


def trace_interval(config: Config, n_train: int) -> int:
    """Minibatches between two trace points: ``train.trace_every``, or ~``trace_points`` per run."""
    if config.train.trace_every:
        return config.train.trace_every
    steps = config.train.epochs * math.ceil(n_train / config.train.batch_size)
    return max(1, math.ceil(steps / config.train.trace_points))


def train(
    config: Config | None,
    out: str | Path,
    resume: bool = False,
    dataset: Dataset | None = None,
    progress: bool = True,
    model: nn.Module | None = None,
) -> TrainResult:
    """Train the model ``config`` describes and write the run directory ``out``.

    ``resume``: continue the run in ``out`` from its newest checkpoint (``config`` None takes the
    stored one; a config that differs from it is refused). ``dataset`` defaults to
    ``config.data.source``. ``model``: a model object of your own (``encode``/``decode``) to train
    instead of the one ``config.model`` describes; pass it again to resume.
    """
    out = Path(out)
    if dataset is not None:
        dataset = check_dataset(dataset)  # the readers check files; a caller's arrays get the same checks
    if config is not None and model is not None and not config.model.factory:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, kind=CUSTOM_KIND))
    with directory_lock(out):  # before looking at the directory: a live writer may be changing it
        config, intact = claim_run(out, config, resume)
        with cpu_settings(config.train.threads):
            return train_claimed(config, out, resume, dataset, progress, model, intact, may_compile=True)


def claim_run(out: Path, config: Config | None, resume: bool) -> tuple[Config, bool]:
    """With the lock of ``out`` held: the config to train it with (the one policy,
    :func:`vaescope.runs.files.resolve_run_config`) and whether it is a finished run whose files are
    intact. Resuming removes a killed writer's temporaries (the lock says no live writer owns them)."""
    intact = _check_finished_files(out) if resume else False
    config = resolve_run_config(out, config, resume)
    if resume:
        remove_temporaries(out)
        remove_temporaries(out / "checkpoints")
    return config, intact


def _check_finished_files(out: Path) -> bool:
    """Before resuming: True when ``out`` is a finished run whose files match its manifest.
    Files that changed are named; a changed ``config.json`` is put back from the last checkpoint
    (it decides the config of the resumed run), the others are rewritten at the end of training."""
    check = verify_run(out)
    how = "rewriting it from the last checkpoint" if has_checkpoint(out) else "no checkpoint is left: retraining"
    for problem in check.problems:
        log.warning("%s; %s", problem.split("; ")[0], how)
    if CONFIG_FILE in check.changed and has_checkpoint(out):
        stored = config_from_dict(load_checkpoint(out).meta["config"], origin=f"the checkpoint of {out}")
        atomic_write_text(out / CONFIG_FILE, stored.to_json())
    return check.intact


def check_fit(config: Config, data: Dataset) -> None:
    """Vectors ``(N, D)`` train with a Gaussian decoder whose mean is its output (``loss.link = "identity"``)
    unless they lie in [0, 1]; binarisation is for images. One line naming the keys to set otherwise."""
    if not data.is_vectors:
        return
    if config.data.binarize != "none":
        raise VaescopeError(f"data.binarize is {config.data.binarize!r}, but {data.name} holds vectors "
                            f"{data.image_shape}; binarisation is for images: set data.binarize = 'none'")
    low, high = float(data.x_train.min()), float(data.x_train.max())
    if config.loss.reconstruction == "bernoulli" or config.loss.link == "sigmoid":
        if low < 0.0 or high > 1.0:
            raise VaescopeError(
                f"{data.name} holds vectors {data.image_shape} with values in [{low:.4g}, {high:.4g}], which a "
                f"{config.loss.reconstruction} decoder on sigmoid outputs cannot produce; train a Gaussian decoder "
                "whose mean is its output: --set loss.reconstruction=gaussian --set loss.link=identity "
                "(and loss.variance=V for its variance)")


@dataclass
class RunTensors:
    """The data a run trains and measures on, on its device: ``x_train`` and ``x_test``
    ``(N, C, H, W)`` images as stored (uint8 or float) or ``(N, D)`` vectors, ``subset`` the trace's first
    test examples as float."""

    x_train: torch.Tensor
    x_test: torch.Tensor
    subset: torch.Tensor


def run_tensors(config: Config, data: Dataset, device: torch.device) -> RunTensors:
    # data.binarize: "static" trains on fixed binary images; with "dynamic" or "static" the test
    # split is one fixed binary sample (the literature's binarised test set)
    x_train = images_to_device(split_images(data, "train", config.data.binarize), device)
    x_test = images_to_device(split_images(data, "test", config.data.binarize), device)
    return RunTensors(x_train, x_test, as_float(x_test[: config.train.trace_subset].clone()))


@dataclass
class RunState:
    """A run as it trains: where it is written, its set-up, and what its checkpoint stores."""

    out: Path
    config: Config
    setup: TrainingSetup
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    timing: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    trace: Trace = dataclasses.field(default_factory=Trace)
    epoch: int = 0
    step: int = 0

    @property
    def finished(self) -> bool:
        return self.epoch >= self.config.train.epochs

    def result(self) -> TrainResult:
        self.setup.model.eval()
        return TrainResult(self.out, self.config, self.setup.model, self.metrics, self.trace)


def start_run(out: Path, config: Config, setup: TrainingSetup, subset: torch.Tensor, resume: bool) -> RunState:
    """The state of ``out``: from its newest checkpoint when resuming (weights, Adam, generators,
    rows, trace), else a new run (``config.json`` written, the trace's first point recorded)."""
    state = RunState(out, config, setup)
    if resume and has_checkpoint(out):
        ckpt = load_checkpoint(out)
        try:
            setup.model.load_state_dict(ckpt.model_state)
        except RuntimeError as err:
            raise VaescopeError(f"the checkpoint in {out} does not fit the model: {str(err).splitlines()[0]}; "
                                "resume with the model the run was started with") from err
        setup.optimizer.load_state_dict(ckpt.optimizer_state)
        setup.load_objective_tensors(ckpt.extra, str(out))
        for name, generator in setup.generators.items():
            generator.set_state(ckpt.generator_states[name])
        state.metrics, state.timing = ckpt.meta["metrics"], ckpt.meta.get("timing", [])
        state.trace = Trace.from_tensors(ckpt.extra)
        state.epoch, state.step = int(ckpt.meta["epoch"]), int(ckpt.meta["step"])
        log.info("resuming %s from epoch %d (step %d)", out, state.epoch, state.step)
    else:
        atomic_write_text(out / CONFIG_FILE, config.to_json())
        state.trace.add(latent_statistics(setup.model, subset, batch_size=len(subset)), 0, 0.0)
    return state


def end_epoch(state: RunState, tensors: RunTensors, train_means: dict[str, float], seconds: float,
              name: str = "") -> None:
    """After an epoch that ended at ``state.step``: the test metrics, the per-epoch files and, every
    ``checkpoint_every`` epochs and at the last, a checkpoint. ``name`` prefixes the log line."""
    config, model = state.config, state.setup.model
    t_cfg = config.train
    state.epoch += 1
    epoch = state.epoch
    test_means = evaluate(model, tensors.x_test, config.loss, seed=t_cfg.seed + EVAL_SEED_OFFSET,
                          variance=state.setup.variance)
    end_stats = latent_statistics(model, tensors.subset, batch_size=len(tensors.subset), thresholds=config.stats)
    row: dict[str, Any] = {"epoch": epoch, "step": state.step}
    row.update({f"train_{k}": v for k, v in train_means.items()})
    row.update({f"test_{k}": v for k, v in test_means.items()})
    row["trace_inactive"] = end_stats.inactive_count
    state.metrics.append(row)
    state.timing.append({"epoch": epoch, "seconds": seconds})
    log.info("%sepoch %d/%d  %5.1fs  train loss %.2f  test loss %.2f (rec %.2f, kl %.2f)  inactive %d/%d",
             name, epoch, t_cfg.epochs, seconds, train_means["loss"], test_means["loss"],
             test_means["reconstruction"], test_means["kl"], end_stats.inactive_count, end_stats.latent_dim)
    write_progress(state.out, state.metrics, state.trace, state.timing)
    objective = state.setup.objective_tensors()
    if objective:  # a Gaussian decoder: its variance at every step (objective.csv)
        write_record(state.out, objective["objective_history"], math.ceil(len(tensors.x_train) / t_cfg.batch_size))
    if epoch % t_cfg.checkpoint_every == 0 or epoch == t_cfg.epochs:
        save_checkpoint(state.out, model, state.setup.optimizer, state.setup.generators,
                        {**state.trace.to_tensors(), **objective},
                        {"epoch": epoch, "step": state.step, "metrics": state.metrics, "timing": state.timing,
                         "config": config.to_dict()})


def finish_run(state: RunState, image_shape: tuple[int, ...], finished_before: bool) -> TrainResult:
    """The final files: ``model.safetensors`` and, last, ``manifest.json`` (with
    ``finished_before``, a finished run resumed to repair its files: the per-epoch files too)."""
    state.setup.model.eval()
    if finished_before:  # nothing trained in this call: the per-epoch files again, from the checkpoint
        write_progress(state.out, state.metrics, state.trace, state.timing)
    variance = state.setup.variance
    save_weights(state.out / WEIGHTS_FILE, state.setup.model, state.config, image_shape,
                 variance.current() if variance is not None and variance.gaussian else None)
    write_manifest(state.out)  # last: it vouches for the files above
    return state.result()


class Stopped(Exception):
    """Training stopped at a step because its ``stop`` event was set (another worker thread
    failed, or the user interrupted); the run resumes from its last checkpoint."""


def train_claimed(config: Config, out: Path, resume: bool, dataset: Dataset | None, progress: bool,
                  model: nn.Module | None, intact: bool = False, stop: threading.Event | None = None,
                  may_compile: bool = False) -> TrainResult:
    """:func:`train` after :func:`claim_run`, with the lock of ``out`` held by the caller; raises
    :class:`Stopped` at the next step once ``stop`` is set. ``may_compile``: ``train.compile`` applies
    (:func:`train`, one model in the calling thread); otherwise the run trains eagerly (the
    many-model engine, :mod:`vaescope.training.multi`, trains eagerly whatever ``train.compile`` says)."""
    t_cfg = config.train
    device = select_device(t_cfg.device)
    data = dataset if dataset is not None else load_dataset(config.data.source, config.data.max_bytes)
    check_fit(config, data)
    tensors = run_tensors(config, data, device)
    subset = tensors.subset
    every = trace_interval(config, len(tensors.x_train))
    steps_per_epoch = math.ceil(len(tensors.x_train) / t_cfg.batch_size)
    model_given = model is not None
    setup = prepare_training(config, data.image_shape, device, model)
    model = setup.model
    state = start_run(out, config, setup, subset, resume)

    finished_before = state.finished
    if finished_before and intact:
        log.info("%s is already trained (%d epochs)", out, state.epoch)
        return state.result()

    compiled = None
    if may_compile:
        compiled = for_run(config, model, tensors.x_train, data.image_shape, device,
                           model_given,  # a user's model kind is refused by the decision itself
                           (t_cfg.epochs - state.epoch) * steps_per_epoch)

    bar = tqdm(total=t_cfg.epochs * steps_per_epoch, initial=state.step, disable=not progress or None,
               unit="step", dynamic_ncols=True, leave=False)

    def on_step(global_step: int, values: dict[str, torch.Tensor]) -> None:
        if stop is not None and stop.is_set():
            raise Stopped
        if global_step % every == 0:
            state.trace.add(latent_statistics(model, subset, batch_size=len(subset)), global_step, global_step / steps_per_epoch)
            model.train()
        bar.update(1)
        if global_step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{values['loss'].item():.2f}", rec=f"{values['reconstruction'].item():.2f}",
                            kl=f"{values['kl'].item():.2f}", refresh=False)

    try:
        while not state.finished:
            bar.set_description(f"epoch {state.epoch + 1}/{t_cfg.epochs}")
            started = time.perf_counter()
            try:
                state.step, train_means = train_epoch(
                    model, setup.optimizer, tensors.x_train, config.loss, t_cfg.batch_size, setup.shuffle,
                    setup.noise, state.step, on_step=on_step, binarize=config.data.binarize == "dynamic",
                    variance=setup.variance, variance_optimizer=setup.variance_optimizer, compiled=compiled)
            except NonFiniteLoss as fault:
                raise divergence(out, state.epoch + 1, fault) from None
            end_epoch(state, tensors, train_means, time.perf_counter() - started,
                      f"{out.name}: " if stop is not None else "")  # in a worker thread: say which run
    finally:
        bar.close()
    return finish_run(state, data.image_shape, finished_before)


class Diverged(VaescopeError):
    """A run's loss or gradient became NaN or infinite (the message says where, and what was kept)."""


def divergence(out: Path, epoch: int, fault: NonFiniteLoss) -> Diverged:
    """The one-line error of a run whose loss or gradient became NaN or infinite."""
    kept = (f"the last good checkpoint (epoch {load_checkpoint_epoch(out)}) is kept in {out / 'checkpoints'}"
            if has_checkpoint(out) else "no checkpoint had been written yet")
    what = ("a gradient became NaN or infinite (the loss was finite)" if fault.gradient
            else "the loss became NaN or infinite")
    return Diverged(f"{what} at epoch {epoch}, step {fault.step}; {kept}; lower train.lr or check the data")
