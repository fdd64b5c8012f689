"""Training the score's classifier (:class:`vaescope.models.classifier.LeNet`) deterministically.

Fixed seeds (initialisation, data order), ``torch.use_deterministic_algorithms(True)`` for the
while, Adam: on one machine and thread count, the same weights bit for bit at every call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vaescope.core.errors import VaescopeError
from vaescope.core.randomness import global_rng_kept
from vaescope.models.classifier import LeNet
from vaescope.training.engine import make_optimizer


@dataclass(frozen=True)
class ClassifierSettings:
    """Adam at ``lr``, multiplied by ``lr_decay`` after each epoch; ``seed`` for the weights
    (``seed + 1``: the data order)."""

    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    lr_decay: float = 0.6
    seed: int = 0


@dataclass
class TrainedClassifier:
    model: LeNet
    test_accuracy: float
    seconds: float
    settings: ClassifierSettings


def _float_images(x: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x))
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def accuracy(model: LeNet, images: np.ndarray, labels: np.ndarray, batch_size: int = 2000) -> float:
    """The fraction of ``images`` ``(N, 1, 28, 28)`` whose arg-max logit is the label."""
    model.eval()
    right = 0
    for start in range(0, len(images), batch_size):
        logits = model(_float_images(images[start : start + batch_size]))
        right += int((logits.argmax(1) == torch.as_tensor(labels[start : start + batch_size])).sum())
    return right / len(images)


def train_classifier(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                     settings: ClassifierSettings = ClassifierSettings()) -> TrainedClassifier:
    """Train a LeNet on ``x_train`` ``(N, 1, 28, 28)`` (uint8 or [0, 1]) and labels ``(N,)``;
    the test accuracy on ``x_test``, ``y_test``."""
    if y_train is None or y_test is None:
        raise VaescopeError("the score's classifier needs labelled data (y_train and y_test)")
    if tuple(np.asarray(x_train).shape[1:]) != (1, 28, 28):
        raise VaescopeError(f"the score's classifier reads 28x28 grey images; got {tuple(np.asarray(x_train).shape[1:])}")
    started = time.perf_counter()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with global_rng_kept():
            torch.manual_seed(settings.seed)
            model = LeNet()
        optimizer = make_optimizer(model, settings.lr)
        shuffle = torch.Generator().manual_seed(settings.seed + 1)
        x = _float_images(x_train)
        y = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
        model.train()
        for epoch in range(settings.epochs):
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * settings.lr_decay ** epoch
            order = torch.randperm(len(x), generator=shuffle)
            for start in range(0, len(x), settings.batch_size):
                rows = order[start : start + settings.batch_size]
                loss = F.cross_entropy(model(x.index_select(0, rows)), y.index_select(0, rows))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()
        test_accuracy = accuracy(model, x_test, y_test)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    return TrainedClassifier(model, test_accuracy, time.perf_counter() - started, settings)
