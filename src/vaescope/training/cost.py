"""FLOP counts of a model's training step, read off torch's FlopCounterMode: what ``train_many`` orders its tasks by and ``bench`` divides by the matmul rate."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

TRAINING_FLOPS_FACTOR = 3  # backward ~ 2x forward: gradients of inputs and of weights


def forward_flops(run: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of the matrix products and convolutions that ``run()`` executes,
    counted by torch's own :class:`~torch.utils.flop_counter.FlopCounterMode`."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def training_flops_per_example(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """FLOPs of one training step per example: forward through encoder and decoder, times 3."""
    x = torch.zeros((1, *image_shape), device=next(model.parameters()).device)
    return TRAINING_FLOPS_FACTOR * forward_flops(lambda: model.decode(model.encode(x)[0]))


def encoder_flops_per_example(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """FLOPs of the encoder's forward pass for one example (what the statistics pass runs)."""
    x = torch.zeros((1, *image_shape), device=next(model.parameters()).device)
    return forward_flops(lambda: model.encode(x))

