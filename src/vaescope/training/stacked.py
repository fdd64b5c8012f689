"""Many dense VAEs of one shape as one computation: stacked weights and batched matrix products.

Layer k of model i, an ``nn.Linear`` with weight ``(out, in)`` and bias ``(out,)``, is row i of a
stacked weight ``(M, out, in)`` and bias ``(M, 1, out)``; ``torch.baddbmm`` computes the layer of
all M models in one call, and its backward computes each gradient in the layout ``nn.Linear``'s
does (:class:`StackedLinear`), so that a model's numbers are those of its separate run. The models share nothing: their parameters are disjoint slices, so the
gradient of the sum of their losses with respect to model i's slice is the gradient of model i's
own loss, and Adam (elementwise) over the stacked tensors is M separate Adams with one lr.

Each model keeps its own ``DenseVAE`` (what checkpoints, evaluation and statistics use) and its
own Adam; :func:`stack_optimizer_state` and :func:`unstack_optimizer_state` carry Adam's moments
between the two, :meth:`StackedDenseVAE.copy_into` the weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vaescope.core.config import LossConfig
from vaescope.data.batches import as_float
from vaescope.models.networks import DenseVAE
from vaescope.models.objectives import (
    DecoderVariance,
    gaussian_reconstruction,
    kl_per_variable,
    quadratic_penalty,
    reconstruction_error,
    squared_error,
)
from vaescope.training.adam import Optimizer
from vaescope.training.engine import NonFiniteLoss, TrainingSetup, _flag_non_finite, make_optimizer, step_variance


def can_stack(model: nn.Module) -> bool:
    """True for the models :class:`StackedDenseVAE` batches: vaescope's own ``DenseVAE``."""
    return type(model) is DenseVAE


class StackedLinear(torch.autograd.Function):
    """M linear layers: ``(M, B, in)``, weight ``(M, out, in)``, bias ``(M, 1, out)`` -> ``(M, B, out)``.

    The backward is ``nn.Linear``'s, per model: the weight's gradient is ``g^T h`` computed as
    ``(out, in)`` (autograd through ``baddbmm(b, h, W^T)`` would compute ``(in, out)`` and copy it
    transposed, ~17% of a dense16 step, and round differently), the bias's ``g`` summed over the
    batch, and no input gradient for the images."""

    @staticmethod
    def forward(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(bias, h, weight.transpose(1, 2))  # b + h W^T, per model

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        h, weight, _ = inputs
        ctx.save_for_backward(h, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, weight = ctx.saved_tensors
        grad_h = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_weight = torch.bmm(grad.transpose(1, 2), h) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(1, keepdim=True) if ctx.needs_input_grad[2] else None
        return grad_h, grad_weight, grad_bias


class StackedDenseVAE(nn.Module):
    """M :class:`~vaescope.models.networks.DenseVAE` of one shape, computed together.

    ``encode`` takes ``(M, B, C, H, W)`` (or ``(M, B, C*H*W)``) images and returns mu and logvar
    ``(M, B, D)`` each; ``decode`` takes ``(M, B, D)`` codes and returns ``(M, B, C*H*W)`` logits.
    The stacked parameters come in the order of one model's ``parameters()``, so the k-th
    parameter of the stack holds the k-th parameter of every model.
    """

    def __init__(self, models: Sequence[DenseVAE]) -> None:
        super().__init__()
        if not models or not all(can_stack(m) for m in models):
            raise ValueError("StackedDenseVAE stacks one or more DenseVAE models")
        shapes = {tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()) for m in models}
        if len(shapes) != 1:
            raise ValueError("StackedDenseVAE needs models of one shape")
        self.models_count = len(models)
        self.latent_dim = models[0].latent_dim
        self.image_shape = models[0].image_shape
        self.encoder_layers = sum(isinstance(m, nn.Linear) for m in models[0].encoder)
        with torch.no_grad():
            self.stacked = nn.ParameterList(
                nn.Parameter(torch.stack([to_stacked(p) for p in _nth_parameters(models, k)]))
                for k in range(len(list(models[0].parameters()))))

    def _layers(self, h: torch.Tensor, first: int, last: int) -> torch.Tensor:
        for k in range(first, last):
            weight, bias = self.stacked[2 * k], self.stacked[2 * k + 1]
            h = StackedLinear.apply(h, weight, bias)
            if k < last - 1:
                h = torch.relu(h)
        return h

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._layers(x.reshape(x.shape[0], x.shape[1], -1), 0, self.encoder_layers)
        mu, logvar = h.chunk(2, dim=2)  # (M, B, D) each
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._layers(z, self.encoder_layers, len(self.stacked) // 2)  # (M, B, C*H*W) logits

    @torch.no_grad()
    def copy_into(self, models: Sequence[DenseVAE]) -> None:
        """Write the stacked weights into the M models (for evaluation, statistics, checkpoints)."""
        per_model = [list(m.parameters()) for m in models]  # once: listing a module's parameters is slow
        for k, parameter in enumerate(self.stacked):
            for i, own in enumerate(per_model):
                own[k].copy_(from_stacked(parameter[i], own[k]))

    @torch.no_grad()
    def select(self, keep: Sequence[int]) -> StackedDenseVAE:
        """The stack of the models ``keep`` only, with their current weights and gradients."""
        chosen = torch.tensor(list(keep), dtype=torch.long, device=self.stacked[0].device)
        other = StackedDenseVAE.__new__(StackedDenseVAE)
        nn.Module.__init__(other)
        other.models_count, other.latent_dim, other.image_shape = len(keep), self.latent_dim, self.image_shape
        other.encoder_layers = self.encoder_layers
        fresh = []
        for parameter in self.stacked:
            new = nn.Parameter(parameter.index_select(0, chosen))
            if parameter.grad is not None:
                new.grad = parameter.grad.index_select(0, chosen)
            fresh.append(new)
        other.stacked = nn.ParameterList(fresh)
        return other


def _nth_parameters(models: Sequence[nn.Module], k: int) -> list[nn.Parameter]:
    return [list(m.parameters())[k] for m in models]


def to_stacked(tensor: torch.Tensor) -> torch.Tensor:
    """One model's weight ``(out, in)`` or bias ``(out,)`` (or their Adam moments) in its stacked
    layout: ``(out, in)`` or ``(1, out)``."""
    return tensor if tensor.dim() == 2 else tensor.unsqueeze(0)


def from_stacked(row: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_stacked` for a tensor shaped ``like``."""
    return row if like.dim() == 2 else row.squeeze(0)


# ---------------------------------------------------------------------------- Adam's state

def stack_optimizer_state(optimizers: Sequence[Optimizer], models: Sequence[nn.Module],
                          stacked: Optimizer, stack: StackedDenseVAE) -> None:
    """Give ``stacked`` (an optimizer of ``stack``) the state of the M models' optimizers: each
    moment tensor stacked like its parameter, the step count (equal across the models) shared."""
    per_model = [[opt.state.get(p, {}) for p in m.parameters()] for opt, m in zip(optimizers, models)]
    for k, parameter in enumerate(stack.stacked):
        states = [model_states[k] for model_states in per_model]
        if not any(states):
            continue  # before the first step: Adam creates its state itself
        if not all(states):
            raise ValueError("stacked models must all have taken the same number of steps")
        entry = {}
        for key, first in states[0].items():
            if torch.is_tensor(first) and first.dim() > 0:
                entry[key] = torch.stack([to_stacked(s[key]) for s in states])
            else:  # the step count
                if any(float(s[key]) != float(first) for s in states):
                    raise ValueError("stacked models must all have taken the same number of steps")
                entry[key] = first.clone() if torch.is_tensor(first) else first
        stacked.state[parameter] = entry


def unstack_optimizer_state(stacked: Optimizer, stack: StackedDenseVAE,
                            optimizers: Sequence[Optimizer], models: Sequence[nn.Module]) -> None:
    """The inverse of :func:`stack_optimizer_state`: each model's optimizer gets its slice."""
    for k, parameter in enumerate(stack.stacked):
        entry = stacked.state.get(parameter)
        if not entry:
            continue
        for i, (optimizer, model_parameter) in enumerate(zip(optimizers, _nth_parameters(models, k))):
            optimizer.state[model_parameter] = {
                key: (from_stacked(value[i], model_parameter).clone() if torch.is_tensor(value) and value.dim() > 0
                      else value.clone() if torch.is_tensor(value) else value)
                for key, value in entry.items()}


# ---------------------------------------------------------------------------- the objective

@dataclass
class StackedTerms:
    """The M models' objectives on one batch each: ``totals`` ``(M,)`` (what each minimises),
    ``reconstruction`` ``(M, B)``, ``regularizer`` ``(M, B, D)``; for a Gaussian decoder with
    ``variances``, the squared errors ``(M, B)`` and each model's variance (a list of M)."""

    totals: torch.Tensor
    reconstruction: torch.Tensor
    regularizer: torch.Tensor
    error: torch.Tensor | None = None
    variance: list[torch.Tensor | float] | None = None

    def select(self, keep: list[int]) -> StackedTerms:
        return StackedTerms(self.totals[keep], self.reconstruction[keep], self.regularizer[keep],
                            None if self.error is None else self.error[keep],
                            None if self.variance is None else [self.variance[j] for j in keep])


def stacked_loss_terms(stack: StackedDenseVAE, x: torch.Tensor, losses: Sequence[LossConfig],
                       noises: Sequence[torch.Generator],
                       variances: Sequence[DecoderVariance] | None = None) -> StackedTerms:
    """Negative ELBO of each model's batch ``x`` ``(M, B, C, H, W)``, as
    :func:`vaescope.models.objectives.loss_terms` computes it for one model: model i samples its
    reparameterisation noise from ``noises[i]`` (when ``losses[i].sampling``) and weighs the
    regulariser by ``losses[i].beta``. One reconstruction kind for all (``losses[0]``); a Gaussian
    decoder scores model i with ``variances[i]`` (its state: ``loss.objective``)."""
    m, b = x.shape[:2]
    mu, logvar = stack.encode(x)

    def draw(i: int) -> torch.Tensor:  # the same call as loss_terms: the same numbers from the same state
        return torch.randn(mu.shape[1:], generator=noises[i], device=mu.device, dtype=mu.dtype)

    sampling = [loss.sampling for loss in losses]
    if all(sampling):
        eps = torch.stack([draw(i) for i in range(m)])
        z = mu + torch.exp(0.5 * logvar) * eps
        regularizer = kl_per_variable(mu, logvar)
    elif not any(sampling):
        z, regularizer = mu, quadratic_penalty(mu)
    else:  # some models sample, others decode mu: model by model
        z = torch.stack([mu[i] + torch.exp(0.5 * logvar[i]) * draw(i) if sampling[i] else mu[i] for i in range(m)])
        regularizer = torch.stack([kl_per_variable(mu[i], logvar[i]) if sampling[i] else quadratic_penalty(mu[i])
                                   for i in range(m)])
    logits = stack.decode(z)
    error = used = None
    if losses[0].reconstruction == "gaussian" and variances is not None:
        pixels = math.prod(x.shape[2:])
        error = squared_error(logits.reshape(m * b, -1), x.reshape(m * b, -1), losses[0].link).view(m, b)
        used = [variances[i].variance(error[i], pixels) for i in range(m)]
        reconstruction = torch.stack([gaussian_reconstruction(error[i], used[i], pixels) for i in range(m)])
    else:
        reconstruction = reconstruction_error(logits.reshape(m * b, -1), x.reshape(m * b, -1),
                                              losses[0].reconstruction).view(m, b)
    betas = torch.tensor([loss.beta for loss in losses], dtype=mu.dtype, device=mu.device)
    totals = reconstruction.mean(1) + betas * regularizer.sum(2).mean(1)
    return StackedTerms(totals, reconstruction, regularizer, error, used)


@torch.no_grad()
def non_finite_models(stack: StackedDenseVAE, totals: torch.Tensor) -> list[tuple[int, bool]]:
    """The models whose loss or some gradient is NaN or infinite, after ``backward``: ``(index,
    loss_was_finite)`` for each (a slow look, for after a cheap check over all models flagged)."""
    finite = torch.isfinite(totals.detach())
    grads_finite = torch.ones_like(finite)
    for parameter in stack.stacked:
        if parameter.grad is not None:
            grads_finite &= torch.isfinite(parameter.grad.flatten(1)).all(1)
    bad = (~(finite & grads_finite)).nonzero().flatten().tolist()
    return [(i, bool(finite[i])) for i in bad]


# ---------------------------------------------------------------------------- the epoch

def stacked_epoch(
    setups: Sequence[TrainingSetup],
    losses: Sequence[LossConfig],
    x_train: torch.Tensor,
    batch_size: int,
    lr: float,
    step: int,
    binarize: bool = False,
    on_step: Callable[[int, list[int], Callable[[], None]], None] | None = None,
) -> tuple[int, list[dict[str, float]], dict[int, NonFiniteLoss]]:
    """One epoch of M models at the same ``step``, batched: :func:`vaescope.training.engine.train_epoch`
    for each ``setups[i]`` (its model, Adam, shuffle and noise generators) with ``losses[i]``, on
    ``x_train`` ``(N, C, H, W)``. The models and their Adam states are read at the start and
    written back at the end (and before a model leaves).

    Returns the new step, each model's mean loss, reconstruction and KL (in ``setups`` order), and
    the models whose loss or gradient became NaN or infinite: they left the epoch at that step,
    before Adam applied it; the others went on. ``on_step(step, alive, sync)`` after each step:
    ``alive`` the indices still training, ``sync()`` writes their current weights into their models.
    """
    x = x_train.reshape(len(x_train), math.prod(x_train.shape[1:]))  # (N, P): one gather for all models
    n, device, image_shape = len(x), x.device, x_train.shape[1:]
    alive = list(range(len(setups)))
    stack, optimizer = _stacked(setups, alive, lr)
    orders = torch.stack([torch.randperm(n, generator=setups[i].shuffle) for i in alive]).to(device)  # (M, N)
    totals = torch.zeros(len(alive), 3, dtype=torch.float64, device=device)
    means: list[dict[str, float]] = [{} for _ in setups]
    diverged: dict[int, NonFiniteLoss] = {}
    flag, one = torch.zeros((), device=device), torch.ones((), device=device)
    gaussian = losses[0].reconstruction == "gaussian" and all(setups[i].variance is not None for i in alive)
    for start in range(0, n, batch_size):
        rows = orders[:, start : start + batch_size]
        m, b = rows.shape
        batch = as_float(torch.index_select(x, 0, rows.reshape(-1))).view(m, b, *image_shape)
        noises = [setups[i].noise for i in alive]
        if binarize:  # engine.train_epoch's draw, model by model
            batch = torch.stack([torch.bernoulli(batch[j], generator=noises[j]) for j in range(m)])
        own_variances = {"variances": [setups[i].variance for i in alive]} if gaussian else {}
        terms = stacked_loss_terms(stack, batch, [losses[i] for i in alive], noises, **own_variances)
        optimizer.zero_grad(set_to_none=True)
        for i in alive:
            if setups[i].variance_optimizer is not None:
                setups[i].variance_optimizer.zero_grad(set_to_none=True)
        total = terms.totals.sum()  # disjoint parameters: each model gets its own loss's gradient
        total.backward()
        _flag_non_finite(list(stack.parameters()), total, flag, one)  # one cheap look at all models
        if flag.item():  # rare: find the models, let them go, keep this step of the others
            bad = dict(non_finite_models(stack, terms.totals))
            keep = [j for j in range(m) if j not in bad]
            for j, loss_finite in bad.items():
                diverged[alive[j]] = NonFiniteLoss(step + 1, gradient=loss_finite)
            _write_back(stack, optimizer, setups, alive)
            alive = [alive[j] for j in keep]
            if not alive:
                return step, means, diverged
            kept = torch.tensor(keep, device=device)
            orders, totals = orders.index_select(0, kept), totals.index_select(0, kept)
            stack = stack.select(keep)  # their weights and this step's gradients
            optimizer = make_optimizer(stack, lr, per_model=True)
            stack_optimizer_state([setups[i].optimizer for i in alive], [setups[i].model for i in alive],
                                  optimizer, stack)
            terms = terms.select(keep)
            flag.zero_()
        optimizer.step()
        if terms.error is not None:
            pixels = math.prod(image_shape)
            for j, i in enumerate(alive):
                step_variance(setups[i].variance, setups[i].variance_optimizer,  # type: ignore[arg-type]
                              terms.error[j], terms.variance[j], pixels)  # type: ignore[index]
        step += 1
        with torch.no_grad():
            part = torch.stack([terms.totals, terms.reconstruction.mean(1), terms.regularizer.sum(2).mean(1)], 1)
            totals.add_(part, alpha=b)
        if on_step is not None:
            on_step(step, list(alive), functools.partial(stack.copy_into, [setups[i].model for i in alive]))
    _write_back(stack, optimizer, setups, alive)
    for i, row in zip(alive, (totals / n).tolist()):
        means[i] = dict(zip(("loss", "reconstruction", "kl"), row))
    return step, means, diverged


def _stacked(setups: Sequence[TrainingSetup], chosen: list[int], lr: float) -> tuple[StackedDenseVAE, Optimizer]:
    models = [setups[i].model for i in chosen]
    stack = StackedDenseVAE(models)
    optimizer = make_optimizer(stack, lr, per_model=True)
    stack_optimizer_state([setups[i].optimizer for i in chosen], models, optimizer, stack)
    return stack, optimizer


def _write_back(stack: StackedDenseVAE, optimizer: Optimizer, setups: Sequence[TrainingSetup],
                chosen: list[int]) -> None:
    """The stack's weights and Adam state back into each model and its own optimizer."""
    models = [setups[i].model for i in chosen]
    stack.copy_into(models)
    unstack_optimizer_state(optimizer, stack, [setups[i].optimizer for i in chosen], models)
