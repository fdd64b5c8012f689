"""Figures of a sweep against latent size: data in, Figure out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vaescope.reports.figures.common import NEUTRAL_COLOR, new_figure

_COLORS = ["#1f5fa8", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


@dataclass(frozen=True)
class SweepCurve:
    """The runs of one curve (grid values other than the latent size fixed): arrays ``(R,)``, one
    entry per run; ``intrinsic`` is the reading (None when not reached)."""

    label: str
    latent_dim: np.ndarray
    seed: np.ndarray
    active: np.ndarray
    test_loss: np.ndarray
    reconstruction: np.ndarray
    law_deviation: np.ndarray
    intrinsic: float | None = None


def _jitter(seed: np.ndarray) -> np.ndarray:
    """Multiplicative x offsets per seed, so that equal points of several seeds stay visible."""
    ranks = np.unique(seed, return_inverse=True)[1]
    spread = max(int(ranks.max()), 1)
    return 2.0 ** (0.12 * (ranks / spread - 0.5)) if ranks.max() > 0 else np.ones(len(seed))


def _per_size(curve: SweepCurve, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sizes = np.unique(curve.latent_dim)
    groups = [values[curve.latent_dim == s] for s in sizes]
    return (sizes, np.array([np.median(g) for g in groups]), np.array([g.min() for g in groups]),
            np.array([g.max() for g in groups]))


def _plot_runs(ax: Axes, curve: SweepCurve, values: np.ndarray, color: str, label: str) -> None:
    sizes, median, low, high = _per_size(curve, values)
    ax.fill_between(sizes, low, high, color=color, alpha=0.15, lw=0)
    ax.plot(sizes, median, color=color, lw=1.6, marker="o", ms=4, label=label)
    ax.scatter(curve.latent_dim * _jitter(curve.seed), values, s=14, color=color, alpha=0.6,
               edgecolor="none")


def _size_axis(ax: Axes, curves: Sequence[SweepCurve]) -> None:
    sizes = np.unique(np.concatenate([c.latent_dim for c in curves]))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(int(s)) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("latent size")
    ax.grid(alpha=0.3)


def active_count_figure(curves: Sequence[SweepCurve]) -> Figure:
    """Active variables against latent size: each seed a dot, the median a line, the spread
    (min to max over seeds) a band; the diagonal is 'every variable active'; the intrinsic
    dimension, where reached, a dotted line."""
    fig = new_figure(6.5, 4.2)
    ax = fig.subplots()
    sizes = np.unique(np.concatenate([c.latent_dim for c in curves]))
    ax.plot(sizes, sizes, color=NEUTRAL_COLOR, ls="--", lw=1, label="all variables active")
    for k, curve in enumerate(curves):
        color = _COLORS[k % len(_COLORS)]
        _plot_runs(ax, curve, curve.active, color, curve.label or "median over seeds")
        if curve.intrinsic is not None:
            ax.axhline(curve.intrinsic, color=color, ls=":", lw=1.2,
                       label=f"intrinsic dimension {curve.intrinsic:g}" + (f" ({curve.label})" if curve.label else ""))
    _size_axis(ax, curves)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(-0.3, sizes.max() + 0.5)
    ax.set_ylabel("active variables (Var(mu) >= threshold)")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def loss_figure(curves: Sequence[SweepCurve]) -> Figure:
    """Test loss (negative ELBO) and its reconstruction term against latent size, nats per image."""
    fig = new_figure(10, 3.8)
    left, right = fig.subplots(1, 2)
    for k, curve in enumerate(curves):
        color = _COLORS[k % len(_COLORS)]
        _plot_runs(left, curve, curve.test_loss, color, curve.label or "median over seeds")
        _plot_runs(right, curve, curve.reconstruction, color, curve.label or "median over seeds")
    for ax, what in ((left, "test loss (nats per image)"), (right, "test reconstruction (nats per image)")):
        _size_axis(ax, curves)
        ax.set_ylabel(what)
    left.legend(fontsize=8)
    return fig


def variance_law_figure(curves: Sequence[SweepCurve]) -> Figure:
    """Largest |Var(mu_j) + mean sigma_j^2 - 1| over the variables of each run, against latent size."""
    fig = new_figure(6.5, 3.8)
    ax = fig.subplots()
    for k, curve in enumerate(curves):
        _plot_runs(ax, curve, curve.law_deviation, _COLORS[k % len(_COLORS)], curve.label or "median over seeds")
    _size_axis(ax, curves)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("max_j |Var(mu_j) + mean sigma_j^2 - 1|")
    ax.legend(fontsize=8)
    return fig
