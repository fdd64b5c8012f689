"""Training: the loop, checkpoints, resume, and the in-training trace of latent statistics.

The engine keeps the whole dataset in one tensor on the device and batches it by slicing a
random permutation (no DataLoader, no per-sample Python), uses Adam's fused kernel where the
build has one, and checks that loss and gradients are finite before each Adam step: on the CPU
by looking every step (free there), on an accelerator with a flag kept on the device that the
host reads every ``DEVICE_CHECK_EVERY`` steps, fused Adam skipping the steps in between.

Determinism: the model is initialised from ``train.seed``; data order and the reparameterisation
noise come from two generators whose states are checkpointed with the weights and Adam's moments,
so a run resumed from any checkpoint ends with the same weights as one never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import (CONFIG_FILE, WEIGHTS_FILE, has_checkpoint, load_checkpoint,
                         load_checkpoint_epoch, save_checkpoint, save_weights)
from .config import Config, LossConfig
from .config import from_dict as config_from_dict
from .data import Dataset, check_dataset, load_dataset
from .errors import VaescopeError
from .models import build_model
from .objectives import loss_terms
from .stats import latent_statistics
from .storage import atomic_write_text, directory_lock, read_json, remove_temporaries

METRICS_FILE = "metrics.csv"
TRACE_FILE = "trace.csv"
TIMING_FILE = "timing.csv"
METRIC_COLUMNS = ["epoch", "step", "train_loss", "train_reconstruction", "train_kl",
                  "test_loss", "test_reconstruction", "test_kl", "trace_inactive"]
EVAL_SEED_OFFSET = 7919  # the test-set ELBO uses its own fixed noise, identical every epoch


# ---------------------------------------------------------------------------- machine setup

def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VaescopeError(f"train.device is {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def configure_cpu(threads: int = 0) -> None:
    """Use every core (or ``threads``), and flush denormals: tiny activations near collapse
    otherwise fall into slow subnormal arithmetic on x86. Process-wide; see :func:`cpu_settings`."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.set_flush_denormal(True)


@contextlib.contextmanager
def cpu_settings(threads: int = 0) -> Iterator[None]:
    """:func:`configure_cpu` for the duration of a block, so that a library call leaves the
    caller's process as it found it (torch cannot report the flush-to-zero flag; off is its default)."""
    previous_threads = torch.get_num_threads()
    configure_cpu(threads)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(previous_threads)


def make_optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one kernel for all parameters) where this torch offers it."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch or unsupported device
        return torch.optim.Adam(model.parameters(), lr=lr)


def images_to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """Images as one tensor on ``device``; uint8 stays uint8 (4x less memory) and is scaled per batch."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


# ---------------------------------------------------------------------------- the trace

@dataclass
class Trace:
    """Var(mu) and mean sigma^2 per variable along training, on a fixed held-out subset."""

    steps: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    mu_variance: list[np.ndarray] = field(default_factory=list)
    sigma2_mean: list[np.ndarray] = field(default_factory=list)

    def record(self, model: nn.Module, subset: torch.Tensor, step: int, epoch: float) -> None:
        stats = latent_statistics(model, subset, batch_size=len(subset))
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
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> "Trace":
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


def read_trace(run_dir: str | Path) -> Trace:
    """The trace a run recorded (``trace.csv``)."""
    path = Path(run_dir) / TRACE_FILE
    if not path.is_file():
        raise VaescopeError(f"{path} does not exist; train the run first")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    dim = (len(header) - 2) // 2
    trace = Trace()
    for row in body:
        values = [float(v) for v in row]
        trace.steps.append(int(values[0]))
        trace.epochs.append(values[1])
        trace.mu_variance.append(np.array(values[2 : 2 + dim]))
        trace.sigma2_mean.append(np.array(values[2 + dim :]))
    return trace


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise VaescopeError(f"{path} does not exist; train the run first")
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _rows_to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


# ---------------------------------------------------------------------------- epochs

class NonFiniteLoss(Exception):
    """The loss (or, with ``gradient``, a gradient of a finite loss) was NaN or infinite."""

    def __init__(self, step: int, gradient: bool = False) -> None:
        super().__init__(step)
        self.step = step
        self.gradient = gradient


def _gradient_norm(model: nn.Module) -> torch.Tensor:
    """Norm of all gradients (one fused kernel): non-finite iff some gradient entry is."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.stack(torch._foreach_norm(grads)).norm()


DEVICE_CHECK_EVERY = 50  # steps between host looks at the non-finite flag on an accelerator


def _flag_non_finite(model: nn.Module, total: torch.Tensor, flag: torch.Tensor, one: torch.Tensor) -> None:
    """Set ``flag`` (0-dim float) to 1 when the loss ``total`` or a gradient is NaN or infinite; it
    never goes back to 0. One kernel over loss and gradients, with no host sync: AMP's check
    (GradScaler's, here with scale ``one``, which leaves every value as it is); where this
    torch lacks it, the norm of all gradients."""
    tensors = [p.grad for p in model.parameters() if p.grad is not None] + [total.detach().reshape(1)]
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, flag, one)
    except (AttributeError, NotImplementedError, RuntimeError):
        bad = ~torch.isfinite(total.detach() + _gradient_norm(model))
        torch.maximum(flag, bad.to(flag.dtype), out=flag)


def _check_interval(device: torch.device, optimizer: torch.optim.Optimizer) -> int:
    """Steps between host looks at the finiteness of loss and gradients. On the CPU a look costs
    nothing: every step. On an accelerator each look stalls the queue, so where fused Adam can
    skip steps on the device (its ``found_inf``) the host looks only every few steps."""
    fused = isinstance(optimizer, torch.optim.Adam) and bool(optimizer.defaults.get("fused"))
    return 1 if device.type == "cpu" or not fused else DEVICE_CHECK_EVERY


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_train: torch.Tensor,
    loss: LossConfig,
    batch_size: int,
    shuffle: torch.Generator,
    noise: torch.Generator,
    step: int = 0,
    z_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> tuple[int, dict[str, float]]:
    """One pass over ``x_train`` ``(N, C, H, W)`` in a random order; returns the new global step
    and the epoch's mean loss, reconstruction and KL (the regulariser when not sampling).

    Raises :class:`NonFiniteLoss` at the first step whose loss or gradient is NaN or infinite,
    before Adam applies it: the weights stay finite.
    """
    model.train()
    n = len(x_train)
    device = x_train.device
    order = torch.randperm(n, generator=shuffle).to(device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    check_every = _check_interval(device, optimizer)
    flag, one = torch.zeros((), device=device), torch.ones((), device=device)
    if check_every > 1:  # device-side: first bad step and whether its loss was finite
        first_bad = torch.zeros(2, dtype=torch.int64, device=device)
        device_step = torch.tensor(step, device=device)  # counted on the device: no host copy per step
        optimizer.found_inf = flag  # type: ignore[attr-defined]  # fused Adam skips while it is 1
    try:
        for start in range(0, n, batch_size):
            # index_select gathers rows ~10x faster than x[order[...]] (advanced indexing)
            batch = as_float(torch.index_select(x_train, 0, order[start : start + batch_size]))
            terms = loss_terms(model, batch, loss, generator=noise, z_hook=z_hook)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            # Before Adam: an inf gradient of a finite loss would otherwise turn the weights into
            # NaN (Adam's inf/inf) and reach the next checkpoint.
            if check_every == 1:
                _flag_non_finite(model, terms.total, flag, one)
                if flag.item():
                    raise NonFiniteLoss(step + 1, gradient=bool(torch.isfinite(terms.total)))
            else:
                before = flag.clone()
                _flag_non_finite(model, terms.total, flag, one)
                device_step += 1
                here = torch.stack([device_step, torch.isfinite(terms.total).long()])
                first_bad.copy_(torch.where(flag > before, here, first_bad))
            optimizer.step()
            step += 1
            if check_every > 1 and (step % check_every == 0 or start + batch_size >= n) and flag.item():
                bad_step, loss_finite = first_bad.tolist()
                raise NonFiniteLoss(bad_step, gradient=bool(loss_finite))
            with torch.no_grad():
                part = torch.stack([terms.total, terms.reconstruction.mean(), terms.regularizer.sum(1).mean()])
                totals.add_(part, alpha=len(batch))
            if on_step is not None:
                on_step(step, {"loss": part[0], "reconstruction": part[1], "kl": part[2]})
    finally:
        if check_every > 1:
            del optimizer.found_inf  # type: ignore[attr-defined]
    means = (totals / n).tolist()
    return step, {"loss": means[0], "reconstruction": means[1], "kl": means[2]}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, loss: LossConfig, seed: int,
             batch_size: int = 1000) -> dict[str, float]:
    """Mean loss, reconstruction and KL over ``x``, with a fixed noise seed (comparable epochs)."""
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    totals = torch.zeros(3, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch_size):
        batch = as_float(x[start : start + batch_size])
        terms = loss_terms(model, batch, loss, generator=generator)
        totals += torch.stack([terms.total * len(batch), terms.reconstruction.sum(),
                               terms.regularizer.sum()]).double()
    means = (totals / len(x)).tolist()
    return {"loss": means[0], "reconstruction": means[1], "kl": means[2]}


# ---------------------------------------------------------------------------- a run

@dataclass
class TrainResult:
    run_dir: Path
    config: Config
    model: nn.Module
    metrics: list[dict[str, Any]]
    trace: Trace


def _prepare_run_dir(out: Path, config: Config, resume: bool) -> Config:
    """Check ``out`` against ``resume``; on resume the stored config wins and must agree."""
    stored_path = out / CONFIG_FILE
    started = stored_path.is_file() or has_checkpoint(out)
    if not resume:
        if started:
            raise VaescopeError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out"
            )
        return config
    if not stored_path.is_file():
        return config  # nothing was written yet: start afresh
    stored = config_from_dict(read_json(stored_path, "run config"), origin=str(stored_path))
    return stored


def trace_interval(config: Config, n_train: int) -> int:
    if config.train.trace_every:
        return config.train.trace_every
    steps = config.train.epochs * math.ceil(n_train / config.train.batch_size)
    return max(1, math.ceil(steps / config.train.trace_points))


def train(
    config: Config,
    out: str | Path,
    resume: bool = False,
    dataset: Dataset | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train the model ``config`` describes and write the run directory ``out``.

    With ``resume``, continue from the newest checkpoint in ``out`` using the config stored
    there. ``dataset`` defaults to ``config.data.source``.
    """
    out = Path(out)
    say = log or (lambda line: tqdm.write(line))
    if dataset is not None:
        dataset = check_dataset(dataset)  # the readers check files; a caller's arrays get the same checks
    with directory_lock(out):  # before looking at the directory: a live writer may be changing it
        config = _prepare_run_dir(out, config, resume)
        if resume:  # a killed writer's temporaries; the lock says no live writer owns them
            remove_temporaries(out)
            remove_temporaries(out / "checkpoints")
        with cpu_settings(config.train.threads):
            return _train_locked(config, out, resume, dataset, progress, say)


def _train_locked(config: Config, out: Path, resume: bool, dataset: Dataset | None,
                  progress: bool, say: Callable[[str], None]) -> TrainResult:
    t_cfg = config.train
    device = select_device(t_cfg.device)
    data = dataset if dataset is not None else load_dataset(config.data.source)
    image_shape = data.image_shape
    x_train = images_to_device(data.x_train, device)
    x_test = images_to_device(data.x_test, device)
    subset = as_float(x_test[: t_cfg.trace_subset].clone())
    every = trace_interval(config, len(x_train))
    steps_per_epoch = math.ceil(len(x_train) / t_cfg.batch_size)

    torch.manual_seed(t_cfg.seed)
    model = build_model(config.model, image_shape).to(device)
    optimizer = make_optimizer(model, t_cfg.lr, device)
    shuffle = torch.Generator().manual_seed(t_cfg.seed)
    noise = torch.Generator(device=device).manual_seed(t_cfg.seed + 1)
    metrics: list[dict[str, Any]] = []
    timing: list[dict[str, Any]] = []
    trace = Trace()
    epoch = step = 0

    if resume and has_checkpoint(out):
        ckpt = load_checkpoint(out)
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optimizer_state)
        shuffle.set_state(ckpt.generator_states["shuffle"])
        noise.set_state(ckpt.generator_states["noise"])
        metrics, timing = ckpt.meta["metrics"], ckpt.meta.get("timing", [])
        trace = Trace.from_tensors(ckpt.extra)
        epoch, step = int(ckpt.meta["epoch"]), int(ckpt.meta["step"])
        say(f"resuming {out} from epoch {epoch} (step {step})")
    else:
        atomic_write_text(out / CONFIG_FILE, config.to_json())
        trace.record(model, subset, 0, 0.0)

    if epoch >= t_cfg.epochs and (out / WEIGHTS_FILE).is_file():
        say(f"{out} is already trained ({epoch} epochs)")
        model.eval()
        return TrainResult(out, config, model, metrics, trace)

    bar = tqdm(total=t_cfg.epochs * steps_per_epoch, initial=step, disable=not progress or None,
               unit="step", dynamic_ncols=True, leave=False)

    def on_step(global_step: int, values: dict[str, torch.Tensor]) -> None:
        if global_step % every == 0:
            trace.record(model, subset, global_step, global_step / steps_per_epoch)
            model.train()
        bar.update(1)
        if global_step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{values['loss'].item():.2f}", rec=f"{values['reconstruction'].item():.2f}",
                            kl=f"{values['kl'].item():.2f}", refresh=False)

    try:
        while epoch < t_cfg.epochs:
            bar.set_description(f"epoch {epoch + 1}/{t_cfg.epochs}")
            started = time.perf_counter()
            try:
                step, train_means = train_epoch(model, optimizer, x_train, config.loss, t_cfg.batch_size,
                                                shuffle, noise, step, on_step=on_step)
            except NonFiniteLoss as fault:
                kept = f"the last good checkpoint (epoch {load_checkpoint_epoch(out)}) is kept in " \
                    f"{out / 'checkpoints'}" if has_checkpoint(out) else "no checkpoint had been written yet"
                what = "a gradient became NaN or infinite (the loss was finite)" if fault.gradient \
                    else "the loss became NaN or infinite"
                raise VaescopeError(
                    f"{what} at epoch {epoch + 1}, step {fault.step}; {kept}; lower train.lr or check the data"
                ) from None
            seconds = time.perf_counter() - started
            epoch += 1
            test_means = evaluate(model, x_test, config.loss, seed=t_cfg.seed + EVAL_SEED_OFFSET)
            end_stats = latent_statistics(model, subset, batch_size=len(subset), thresholds=config.stats)
            row = {"epoch": epoch, "step": step}
            row.update({f"train_{k}": v for k, v in train_means.items()})
            row.update({f"test_{k}": v for k, v in test_means.items()})
            row["trace_inactive"] = end_stats.inactive_count
            metrics.append(row)
            timing.append({"epoch": epoch, "seconds": seconds})
            say(f"epoch {epoch}/{t_cfg.epochs}  {seconds:5.1f}s  train loss {train_means['loss']:.2f}  "
                f"test loss {test_means['loss']:.2f} (rec {test_means['reconstruction']:.2f}, "
                f"kl {test_means['kl']:.2f})  inactive {end_stats.inactive_count}/{config.model.latent_dim}")
            atomic_write_text(out / METRICS_FILE, _rows_to_csv(METRIC_COLUMNS, metrics))
            atomic_write_text(out / TRACE_FILE, trace.to_csv())
            atomic_write_text(out / TIMING_FILE, _rows_to_csv(["epoch", "seconds"], timing))
            if epoch % t_cfg.checkpoint_every == 0 or epoch == t_cfg.epochs:
                save_checkpoint(out, model, optimizer, {"shuffle": shuffle, "noise": noise},
                                trace.to_tensors(),
                                {"epoch": epoch, "step": step, "metrics": metrics, "timing": timing,
                                 "config": config.to_dict()})
    finally:
        bar.close()
    model.eval()
    save_weights(out / WEIGHTS_FILE, model, config, image_shape)
    return TrainResult(out, config, model, metrics, trace)
