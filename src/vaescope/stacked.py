"""Many dense VAEs of one shape as one computation: stacked weights and batched matrix products.

Layer k of model i, an ``nn.Linear`` with weight ``(out, in)`` and bias ``(out,)``, is row i of a
stacked weight ``(M, out, in)`` and bias ``(M, 1, out)``; ``torch.baddbmm`` computes the layer of
all M models in one call. The models share nothing: their parameters are disjoint slices, so the
gradient of the sum of their losses with respect to model i's slice is the gradient of model i's
own loss, and Adam (elementwise) over the stacked tensors is M separate Adams with one lr.

Each model keeps its own ``DenseVAE`` (what checkpoints, evaluation and statistics use) and its
own Adam; :func:`stack_optimizer_state` and :func:`unstack_optimizer_state` carry Adam's moments
between the two, :meth:`StackedDenseVAE.copy_into` the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import LossConfig
from .models import DenseVAE
from .objectives import kl_per_variable, quadratic_penalty, reconstruction_error


def _linears(model: DenseVAE) -> list[nn.Linear]:
    return [m for m in (*model.encoder, *model.decoder) if isinstance(m, nn.Linear)]


def can_stack(model: nn.Module) -> bool:
    """True for the models :class:`StackedDenseVAE` batches: vaescope's own ``DenseVAE``."""
    return type(model) is DenseVAE


class StackedDenseVAE(nn.Module):
    """M :class:`~vaescope.models.DenseVAE` of one shape, computed together.

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
        layers = [_linears(m) for m in models]
        stacked: list[nn.Parameter] = []
        with torch.no_grad():
            for k in range(len(layers[0])):
                stacked.append(nn.Parameter(torch.stack([ls[k].weight for ls in layers])))  # (M, out, in)
                stacked.append(nn.Parameter(torch.stack([ls[k].bias for ls in layers]).unsqueeze(1)))  # (M, 1, out)
        self.stacked = nn.ParameterList(stacked)

    def _layers(self, h: torch.Tensor, first: int, last: int) -> torch.Tensor:
        for k in range(first, last):
            weight, bias = self.stacked[2 * k], self.stacked[2 * k + 1]
            h = torch.baddbmm(bias, h, weight.transpose(1, 2))  # (M, B, out) = b + h W^T, per model
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
        for k, parameter in enumerate(self.stacked):
            for i, model_parameter in enumerate(_nth_parameters(models, k)):
                model_parameter.copy_(parameter[i].view_as(model_parameter))

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


# ---------------------------------------------------------------------------- Adam's state

def stack_optimizer_state(optimizers: Sequence[torch.optim.Optimizer], models: Sequence[nn.Module],
                          stacked: torch.optim.Optimizer, stack: StackedDenseVAE) -> None:
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
                entry[key] = torch.stack([s[key] for s in states]).view_as(parameter).clone()
            else:  # the step count
                if any(float(s[key]) != float(first) for s in states):
                    raise ValueError("stacked models must all have taken the same number of steps")
                entry[key] = first.clone() if torch.is_tensor(first) else first
        stacked.state[parameter] = entry


def unstack_optimizer_state(stacked: torch.optim.Optimizer, stack: StackedDenseVAE,
                            optimizers: Sequence[torch.optim.Optimizer], models: Sequence[nn.Module]) -> None:
    """The inverse of :func:`stack_optimizer_state`: each model's optimizer gets its slice."""
    for k, parameter in enumerate(stack.stacked):
        entry = stacked.state.get(parameter)
        if not entry:
            continue
        for i, (optimizer, model_parameter) in enumerate(zip(optimizers, _nth_parameters(models, k))):
            optimizer.state[model_parameter] = {
                key: (value[i].reshape(model_parameter.shape).clone() if torch.is_tensor(value) and value.dim() > 0
                      else value.clone() if torch.is_tensor(value) else value)
                for key, value in entry.items()}


# ---------------------------------------------------------------------------- the objective

@dataclass
class StackedTerms:
    """The M models' objectives on one batch each: ``totals`` ``(M,)`` (what each minimises),
    ``reconstruction`` ``(M, B)``, ``regularizer`` ``(M, B, D)``."""

    totals: torch.Tensor
    reconstruction: torch.Tensor
    regularizer: torch.Tensor


def stacked_loss_terms(stack: StackedDenseVAE, x: torch.Tensor, losses: Sequence[LossConfig],
                       noises: Sequence[torch.Generator]) -> StackedTerms:
    """Negative ELBO of each model's batch ``x`` ``(M, B, C, H, W)``, as
    :func:`vaescope.objectives.loss_terms` computes it for one model: model i samples its
    reparameterisation noise from ``noises[i]`` (when ``losses[i].sampling``) and weighs the
    regulariser by ``losses[i].beta``. One reconstruction kind for all (``losses[0]``)."""
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
    reconstruction = reconstruction_error(logits.reshape(m * b, -1), x.reshape(m * b, -1),
                                          losses[0].reconstruction).view(m, b)
    betas = torch.tensor([loss.beta for loss in losses], dtype=mu.dtype, device=mu.device)
    totals = reconstruction.mean(1) + betas * regularizer.sum(2).mean(1)
    return StackedTerms(totals, reconstruction, regularizer)


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


def flat_images(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C*H*W)`` without a copy (the layout the stacked layers gather from)."""
    return x.reshape(len(x), math.prod(x.shape[1:]))
