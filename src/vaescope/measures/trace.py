"""Variance of each latent variable along training (the sparsity article, Figure 1).

Training records, every few minibatches, Var(mu_j) and mean sigma_j^2 over a fixed held-out subset
(:class:`vaescope.runs.files.Trace`). This module turns that record into arrays indexed by minibatch
and finds, per variable, the minibatch from which Var(mu_j) stays below the inactivity threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaescope.runs.files import Trace


@dataclass(frozen=True)
class VarianceTrace:
    """``minibatches`` ``(T,)``; ``mu_variance`` and ``sigma2_mean`` ``(T, D)``; ``final_active`` ``(D,)``;
    ``collapse_minibatch`` ``(D,)``: first recorded minibatch from which Var(mu_j) stays below the
    threshold to the end, -1 for variables that never settle below it."""

    minibatches: np.ndarray
    epochs: np.ndarray
    mu_variance: np.ndarray
    sigma2_mean: np.ndarray
    final_active: np.ndarray
    collapse_minibatch: np.ndarray
    threshold: float

    def to_dict(self) -> dict[str, object]:
        return {
            "points": len(self.minibatches),
            "last_minibatch": int(self.minibatches[-1]) if len(self.minibatches) else 0,
            "collapse_minibatch": self.collapse_minibatch.tolist(),
        }


def collapse_points(mu_variance: np.ndarray, threshold: float) -> np.ndarray:
    """For ``(T, D)`` values, the first index t with every value from t on below ``threshold``;
    -1 where the last value is not below it. Returns ``(D,)`` int."""
    below = np.asarray(mu_variance) < threshold  # (T, D)
    # stays_below[t, j]: below at t and at every later point
    stays_below = np.flip(np.logical_and.accumulate(np.flip(below, 0), axis=0), 0)
    first = np.where(stays_below.any(0), stays_below.argmax(0), -1)
    return first.astype(int)


def variance_trace(trace: Trace, threshold: float = 0.01) -> VarianceTrace:
    """Arrays of a recorded trace; the verdict at the last point uses ``threshold`` on Var(mu)."""
    if not trace.steps:
        raise ValueError("the trace is empty; was the run trained with vaescope's trainer?")
    mu_variance = np.array(trace.mu_variance, dtype=np.float64)
    steps = np.asarray(trace.steps, dtype=int)
    first = collapse_points(mu_variance, threshold)
    return VarianceTrace(
        minibatches=steps,
        epochs=np.asarray(trace.epochs, dtype=np.float64),
        mu_variance=mu_variance,
        sigma2_mean=np.array(trace.sigma2_mean, dtype=np.float64),
        final_active=mu_variance[-1] >= threshold,
        collapse_minibatch=np.where(first >= 0, steps[np.maximum(first, 0)], -1),
        threshold=threshold,
    )
