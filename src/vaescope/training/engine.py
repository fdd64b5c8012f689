"""The training engine: device and threads, one set-up of a run, one epoch, evaluation.

The engine keeps the whole dataset in one tensor on the device and batches it by gathering rows
of a random permutation (no DataLoader, no per-sample Python), uses Adam's fused kernel where the
build has one, and lets :class:`NonFiniteGuard` check that loss and gradients are finite before
each Adam step.

Determinism: :func:`prepare_training` seeds the model's initialisation with ``train.seed``; data
order and the reparameterisation noise come from two generators (``seed`` and ``seed + 1``) whose
states a checkpoint stores, so a resumed run ends with the same weights as one never interrupted.
Every caller that trains (``vaescope train``, bench, the experiments) sets up through
:func:`prepare_training`, so "the same run as ``vaescope train``" stays true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from vaescope.core.config import Config, LossConfig
from vaescope.core.errors import VaescopeError
from vaescope.core.randomness import seeded_global_rng
from vaescope.data.batches import as_float
from vaescope.data.dataset import binarize_dynamic
from vaescope.models.networks import build_model
from vaescope.models.objectives import DecoderVariance, LossTerms, loss_terms
from vaescope.training.adam import FusedAdam, Optimizer, fused_kernel_supports

EVAL_SEED_OFFSET = 7919  # the test-set ELBO uses its own fixed noise, identical every epoch


# ---------------------------------------------------------------------------- the machine

def memory_format(model: nn.Module) -> torch.memory_format:
    """The layout of ``model``'s weights and input batches: its ``memory_format`` attribute
    (vaescope's conv models: channels-last), else the default; a user's model keeps the default,
    since code written for it may ``view`` its inputs."""
    return getattr(model, "memory_format", torch.contiguous_format)


# ---------------------------------------------------------------------------- set-up

def make_optimizer(model: nn.Module, lr: float, per_model: bool = False) -> Optimizer:
    """Adam with torch's fused kernel (one kernel for all parameters): :class:`~vaescope.training.adam.FusedAdam`
    where the kernel takes the parameters, else ``torch.optim.Adam`` (fused where it can be).
    ``per_model``: ``model`` holds stacked models, updated model by model (``FusedAdam``'s ``per_model``)."""
    params = list(model.parameters())
    if fused_kernel_supports(params):
        return FusedAdam(params, lr=lr, per_model=per_model)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch or unsupported device
        return torch.optim.Adam(params, lr=lr)


@dataclass
class TrainingSetup:
    """What a run trains with: the model, its optimizer, and the generators of data order
    (``shuffle``, on the CPU) and of the reparameterisation noise (``noise``, on the device);
    ``variance``: the Gaussian decoder's variance state (``loss.objective``), with its own Adam
    (``variance_optimizer``, same lr) when it is learned: Adam is elementwise, so that is one
    Adam over both, and the model's own optimizer and its stacked form stay as they are."""

    model: nn.Module
    optimizer: Optimizer
    shuffle: torch.Generator
    noise: torch.Generator
    variance: DecoderVariance | None = None
    variance_optimizer: Optimizer | None = field(default=None)

    @property
    def generators(self) -> dict[str, torch.Generator]:
        return {"shuffle": self.shuffle, "noise": self.noise}

    def objective_tensors(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of a Gaussian decoder's objective: the variance's buffers and
        parameter, its Adam moments (``objective.*``) and every step's variance and batch MSE
        (``objective_history``); nothing for a Bernoulli decoder."""
        if self.variance is None or not self.variance.gaussian:
            return {}
        out = {f"objective.{k}": v for k, v in self.variance.state_dict().items()}
        out["objective_history"] = self.variance.history()
        if self.variance_optimizer is not None:
            for key, value in self.variance_optimizer.state_dict()["state"].get(0, {}).items():
                out[f"objective.adam.{key}"] = torch.as_tensor(value)
        return out

    def load_objective_tensors(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        """Put back what :meth:`objective_tensors` stored (``tensors`` may hold other keys too)."""
        if self.variance is None or not self.variance.gaussian:
            return
        own = {k[len("objective."):]: v for k, v in tensors.items()
               if k.startswith("objective.") and not k.startswith("objective.adam.")}
        if not own and self.variance.objective == "elbo":
            return  # a fixed variance, checkpointed before vaescope kept the objective's record
        if "objective_history" in tensors:
            self.variance.restore_history(tensors["objective_history"])
        try:
            self.variance.load_state_dict(own)
        except RuntimeError as err:
            raise VaescopeError(f"the checkpoint in {where} lacks the state of loss.objective "
                                f"{self.variance.objective!r} ({str(err).splitlines()[0]}); "
                                "delete the checkpoints folder to start over") from err
        adam = {k[len("objective.adam."):]: v for k, v in tensors.items() if k.startswith("objective.adam.")}
        if self.variance_optimizer is not None and adam:
            state = self.variance_optimizer.state_dict()
            state["state"] = {0: dict(adam)}
            self.variance_optimizer.load_state_dict(state)


def prepare_training(config: Config, image_shape: tuple[int, ...], device: torch.device,
                     model: nn.Module | None = None) -> TrainingSetup:
    """The one set-up of a training run: seed ``train.seed``, build the model ``config.model``
    describes for images ``(C, H, W)`` (or take ``model`` as it is), Adam with ``train.lr``, and
    the shuffle and noise generators seeded ``seed`` and ``seed + 1``."""
    seed = config.train.seed
    if model is None:
        with seeded_global_rng(seed):  # the model's initialisation; one thread at a time (worker threads)
            model = build_model(config.model, image_shape)
    model = model.to(device, memory_format=memory_format(model))
    variance = DecoderVariance(config.loss).to(device)
    variance_optimizer = make_optimizer(variance, config.train.lr) if list(variance.parameters()) else None
    return TrainingSetup(model, make_optimizer(model, config.train.lr),
                         torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed + 1),
                         variance, variance_optimizer)


# ---------------------------------------------------------------------------- the guard

class NonFiniteLoss(Exception):
    """The loss (or, with ``gradient``, a gradient of a finite loss) was NaN or infinite."""

    def __init__(self, step: int, gradient: bool = False) -> None:
        super().__init__(step)
        self.step = step
        self.gradient = gradient


def _flag_non_finite(parameters: list[nn.Parameter], total: torch.Tensor, flag: torch.Tensor,
                     one: torch.Tensor) -> None:
    """Set ``flag`` (0-dim float) to 1 when ``total`` or a gradient is NaN or infinite; it never
    goes back to 0. One kernel, no host sync: AMP's check (GradScaler's, with scale ``one``, which
    leaves every value as it is); where this torch lacks it, the public norm of all gradients."""
    grads = [p.grad for p in parameters if p.grad is not None]
    try:
        torch._amp_foreach_non_finite_check_and_unscale_(grads + [total.detach().reshape(1)], flag, one)
    except (AttributeError, NotImplementedError, RuntimeError):
        norm = (torch.nn.utils.get_total_norm(grads) if hasattr(torch.nn.utils, "get_total_norm")  # torch >= 2.6
                else torch.stack([g.norm() for g in grads]).norm())
        bad = ~torch.isfinite(total.detach() + norm)
        torch.maximum(flag, bad.to(flag.dtype), out=flag)


class NonFiniteGuard:
    """Refuses an optimizer step whose loss or gradients hold NaN or Inf, before Adam applies it
    (an inf gradient of a finite loss would otherwise turn the weights into NaN).

    On the CPU a look costs nothing: :meth:`check` looks every step and raises at once. On an
    accelerator each look stalls the queue, so with fused Adam the flag stays on the device,
    Adam skips flagged steps itself (its ``found_inf``, the attribute GradScaler sets), and the
    host looks every :attr:`DEVICE_CHECK_EVERY` steps. Use as a context manager around an epoch.
    """

    DEVICE_CHECK_EVERY = 50

    def __init__(self, model: nn.Module, optimizer: Optimizer, device: torch.device, step: int) -> None:
        self.parameters = list(model.parameters())
        self.optimizer = optimizer
        self.every = self.interval(device, optimizer)
        self.flag, self.one = torch.zeros((), device=device), torch.ones((), device=device)
        if self.every > 1:  # device-side record of the first bad step and whether its loss was finite
            self.first_bad = torch.zeros(2, dtype=torch.int64, device=device)
            self.device_step = torch.tensor(step, device=device)

    @classmethod
    def interval(cls, device: torch.device, optimizer: Optimizer) -> int:
        """Steps between host looks: 1 on the CPU, or where Adam cannot skip steps on the device."""
        fused = isinstance(optimizer, (FusedAdam, torch.optim.Adam)) and bool(optimizer.defaults.get("fused"))
        return 1 if device.type == "cpu" or not fused else cls.DEVICE_CHECK_EVERY

    def __enter__(self) -> NonFiniteGuard:
        if self.every > 1:
            self.optimizer.found_inf = self.flag  # type: ignore[attr-defined]  # fused Adam skips while 1
        return self

    def __exit__(self, *exc: object) -> None:
        if self.every > 1:
            del self.optimizer.found_inf  # type: ignore[attr-defined]

    def check(self, total: torch.Tensor, step: int) -> None:
        """After ``backward`` of step ``step`` (1-based), before the optimizer step."""
        if self.every == 1:
            _flag_non_finite(self.parameters, total, self.flag, self.one)
            if self.flag.item():
                raise NonFiniteLoss(step, gradient=bool(torch.isfinite(total)))
            return
        before = self.flag.clone()
        _flag_non_finite(self.parameters, total, self.flag, self.one)
        self.device_step += 1
        here = torch.stack([self.device_step, torch.isfinite(total).long()])
        self.first_bad.copy_(torch.where(self.flag > before, here, self.first_bad))

    def look(self, step: int, last: bool) -> None:
        """After the optimizer step: on an accelerator, the host's periodic look at the flag."""
        if self.every > 1 and (step % self.every == 0 or last) and self.flag.item():
            bad_step, loss_finite = self.first_bad.tolist()
            raise NonFiniteLoss(bad_step, gradient=bool(loss_finite))


# ---------------------------------------------------------------------------- epochs

def train_epoch(
    model: nn.Module,
    optimizer: Optimizer,
    x_train: torch.Tensor,
    loss: LossConfig,
    batch_size: int,
    shuffle: torch.Generator,
    noise: torch.Generator,
    step: int = 0,
    z_hook: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    binarize: bool = False,
    variance: DecoderVariance | None = None,
    variance_optimizer: Optimizer | None = None,
    compiled: Callable[[torch.Tensor, torch.Generator], LossTerms] | None = None,
) -> tuple[int, dict[str, float]]:
    """One pass over ``x_train`` ``(N, C, H, W)`` in a random order; returns the new global step
    and the epoch's mean loss, reconstruction and KL (the regulariser when not sampling).
    ``binarize`` (``data.binarize = "dynamic"``): each batch is a fresh Bernoulli sample of its
    grey levels, drawn with ``noise``. ``variance`` (and ``variance_optimizer`` when it is
    learned): the Gaussian decoder's variance state, updated after every step. ``compiled``: the
    loss compiled (:class:`vaescope.training.compile.CompiledLoss`, ``train.compile``), called as
    ``compiled(batch, noise)`` in place of ``loss_terms`` (same noise; None: eager, as always).

    Raises :class:`NonFiniteLoss` at the first step whose loss or gradient is NaN or infinite,
    before Adam applies it: the weights stay finite.
    """
    model.train()
    n = len(x_train)
    device = x_train.device
    order = torch.randperm(n, generator=shuffle).to(device)
    layout = memory_format(model)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    # a Gaussian decoder's variance state; a Bernoulli decoder's loss_terms call stays as it was
    own_variance = {"variance": variance} if variance is not None and variance.gaussian else {}
    with NonFiniteGuard(model, optimizer, device, step) as guard:
        for start in range(0, n, batch_size):
            # index_select gathers rows ~10x faster than x[order[...]] (advanced indexing)
            batch = as_float(torch.index_select(x_train, 0, order[start : start + batch_size]))
            if binarize:
                batch = binarize_dynamic(batch, noise)
            if layout is not torch.contiguous_format:
                batch = batch.to(memory_format=layout)
            if compiled is not None:
                terms = compiled(batch, noise)
            else:
                terms = loss_terms(model, batch, loss, generator=noise, z_hook=z_hook, **own_variance)
            optimizer.zero_grad(set_to_none=True)
            if variance_optimizer is not None:
                variance_optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            guard.check(terms.total, step + 1)
            optimizer.step()
            if own_variance:
                step_variance(variance, variance_optimizer, terms.error, terms.variance, batch[0].numel())  # type: ignore[arg-type]
            step += 1
            guard.look(step, last=start + batch_size >= n)
            with torch.no_grad():
                part = torch.stack([terms.total, terms.reconstruction.mean(), terms.regularizer.sum(1).mean()])
                totals.add_(part, alpha=len(batch))
            if on_step is not None:
                on_step(step, {"loss": part[0], "reconstruction": part[1], "kl": part[2]})
    means = (totals / n).tolist()
    return step, {"loss": means[0], "reconstruction": means[1], "kl": means[2]}


def step_variance(variance: DecoderVariance, variance_optimizer: Optimizer | None, error: torch.Tensor | None,
                  used: torch.Tensor | float | None, pixels: int) -> None:
    """After the model's optimizer step on a batch of squared errors ``error`` ``(B,)`` (None: not
    a Gaussian decoder) scored with variance ``used``: the learned variance's own Adam step, then
    the running means of the squared error (:meth:`DecoderVariance.update`)."""
    if variance_optimizer is not None:
        variance_optimizer.step()
    if error is not None and used is not None:
        variance.update(error, pixels, used)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, loss: LossConfig, seed: int,
             batch_size: int = 1000, variance: DecoderVariance | None = None) -> dict[str, float]:
    """Mean loss, reconstruction and KL over ``x``, with a fixed noise seed (comparable epochs);
    a Gaussian decoder's variance from ``variance`` (its state now; "optimal-variance": each
    batch's own)."""
    model.eval()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    totals = torch.zeros(3, dtype=torch.float64, device=x.device)
    layout = memory_format(model)
    own_variance = {"variance": variance} if variance is not None and variance.gaussian else {}
    for start in range(0, len(x), batch_size):
        batch = as_float(x[start : start + batch_size]).to(memory_format=layout)
        terms = loss_terms(model, batch, loss, generator=generator, **own_variance)
        totals += torch.stack([terms.total * len(batch), terms.reconstruction.sum(),
                               terms.regularizer.sum()]).double()
    means = (totals / len(x)).tolist()
    return {"loss": means[0], "reconstruction": means[1], "kl": means[2]}
