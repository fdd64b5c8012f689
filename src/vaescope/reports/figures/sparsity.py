"""Figures of the sparsity and stationary-condition experiments: data in, Figure out."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vaescope.experiments.run_to_run import CountSpread
from vaescope.measures.trace import VarianceTrace
from vaescope.measures.variance_law import StationaryCurves, VarianceLaw
from vaescope.reports.figures.common import (
    ACTIVE_COLOR,
    INACTIVE_COLOR,
    NEUTRAL_COLOR,
    image_row,
    new_figure,
    verdict_colors,
)

_VERDICT_LEGEND = [Line2D([], [], color=ACTIVE_COLOR, label="active at the end"),
                   Line2D([], [], color=INACTIVE_COLOR, label="inactive at the end")]


def variance_trace_figure(trace: VarianceTrace, title: str = "") -> Figure:
    """Var(mu_j) and mean sigma_j^2 of every variable against minibatches, coloured by final verdict."""
    fig = new_figure(11, 4)
    left, right = fig.subplots(1, 2, sharex=True)
    for j in range(trace.mu_variance.shape[1]):
        color = ACTIVE_COLOR if trace.final_active[j] else INACTIVE_COLOR
        left.plot(trace.minibatches, trace.mu_variance[:, j], color=color, lw=1.1, alpha=0.85)
        right.plot(trace.minibatches, trace.sigma2_mean[:, j], color=color, lw=1.1, alpha=0.85)
    left.axhline(trace.threshold, color=NEUTRAL_COLOR, ls=":", lw=1)
    left.set_ylabel("Var(mu_j) over held-out images")
    right.set_ylabel("mean sigma_j^2 over held-out images")
    for ax in (left, right):
        ax.set_xlabel("minibatches (128 images each)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    left.legend(handles=_VERDICT_LEGEND + [Line2D([], [], color=NEUTRAL_COLOR, ls=":",
                                                  label=f"threshold {trace.threshold:g}")], loc="upper left")
    if title:
        fig.suptitle(title)
    return fig


def generation_figure(full: np.ndarray, zeroed: np.ndarray, inactive_count: int) -> Figure:
    """Two rows of ``(N, C, H, W)`` images: all variables sampled, then inactive ones zeroed."""
    n = len(full)
    fig = new_figure(max(4.0, 0.75 * n), 1.7)
    top, bottom = fig.subplots(2, 1)
    image_row(top, full)
    image_row(bottom, zeroed)
    top.set_ylabel("all", rotation=0, ha="right", va="center")
    bottom.set_ylabel(f"{inactive_count} inactive\nset to 0", rotation=0, ha="right", va="center")
    return fig


def reconstruction_gain_figure(gains: Mapping[str, tuple[np.ndarray, np.ndarray]], floor: float = 1e-5) -> Figure:
    """Bar chart per model: ``name -> (gain (D,), active (D,))``, gain in nats per image, on a log
    scale so that the ~0 gains of inactive variables stay visible; values below ``floor`` (zero or
    slightly negative) are marked by a triangle on the floor."""
    fig = new_figure(5.5 * len(gains), 3.9)
    axes = np.atleast_1d(fig.subplots(1, len(gains), sharey=True))
    for ax, (name, (gain, active)) in zip(axes, gains.items()):
        index = np.arange(len(gain))
        ax.bar(index, np.maximum(gain, floor) - floor, bottom=floor, color=verdict_colors(active))
        low = gain < floor  # ~0 or slightly negative: a marker on the floor keeps them visible
        ax.scatter(index[low], np.full(int(low.sum()), floor * 1.6), marker="v", s=30,
                   color=[c for c, flag in zip(verdict_colors(active), low) if flag])
        ax.set_yscale("log")
        ax.set_xticks(index)
        ax.set_xlabel("latent variable")
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("reconstruction gain (nats / image)")
    fig.legend(handles=[Patch(color=ACTIVE_COLOR, label="active"), Patch(color=INACTIVE_COLOR, label="inactive")],
               loc="outside upper center", ncols=2)
    return fig


def variance_law_figure(laws: Mapping[str, VarianceLaw]) -> Figure:
    """Per variable, Var(mu) stacked under mean sigma^2, against the law's line at 1."""
    fig = new_figure(5.5 * len(laws), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(laws), sharey=True))
    for ax, (name, law) in zip(axes, laws.items()):
        index = np.arange(len(law.law))
        ax.bar(index, law.mu_variance, color=verdict_colors(law.active), label="Var(mu_j)")
        ax.bar(index, law.sigma2_mean, bottom=law.mu_variance, color="#bbbbbb", label="mean sigma_j^2")
        ax.axhline(1.0, color="black", lw=1.2, ls="--", label="law: sum = 1")
        ax.set_xticks(index)
        ax.set_xlabel("latent variable (bar colour: verdict)")
        ax.set_title(f"{name}: max |sum - 1| = {law.max_abs_deviation:.3f}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Var(mu_j) + mean sigma_j^2")
    fig.legend(handles=[Patch(color=ACTIVE_COLOR, label="Var(mu_j), active"),
                        Patch(color=INACTIVE_COLOR, label="Var(mu_j), inactive"),
                        Patch(color="#bbbbbb", label="mean sigma_j^2 (stacked on top)"),
                        Line2D([], [], color="black", ls="--", label="1")], loc="outside upper center", ncols=4)
    return fig


def log_variance_figure(laws: Mapping[str, VarianceLaw]) -> Figure:
    """mean(log sigma^2) against log(mean sigma^2) per variable, with the diagonal they would share.
    Marker shape: model; colour: verdict."""
    fig = new_figure(5.0, 4.5)
    ax = fig.subplots()
    markers = ["o", "s", "^", "D"]
    lows, highs = [], []
    handles = []
    for k, (name, law) in enumerate(laws.items()):
        marker = markers[k % len(markers)]
        ax.scatter(law.log_mean_sigma2, law.mean_log_sigma2, c=verdict_colors(law.active), marker=marker,
                   edgecolors="black", linewidths=0.4, alpha=0.85)
        handles.append(Line2D([], [], ls="", marker=marker, color="white", markeredgecolor="black", label=name))
        lows.append(min(law.log_mean_sigma2.min(), law.mean_log_sigma2.min()))
        highs.append(max(law.log_mean_sigma2.max(), law.mean_log_sigma2.max()))
    span = [min(lows) - 0.3, max(highs) + 0.3]
    ax.plot(span, span, color=NEUTRAL_COLOR, ls="--", lw=1)
    handles += [Patch(color=ACTIVE_COLOR, label="active"), Patch(color=INACTIVE_COLOR, label="inactive"),
                Line2D([], [], color=NEUTRAL_COLOR, ls="--", label="equal (the article's approximation)")]
    ax.set_xlabel("log(mean_X sigma_j^2)")
    ax.set_ylabel("mean_X log sigma_j^2")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    return fig


def stationary_kl_figure(curves: StationaryCurves) -> Figure:
    """Eq. (1) against sigma^2 for each rho, with eq. (2)'s minimiser marked."""
    fig = new_figure(6.0, 4.2)
    ax = fig.subplots()
    for k, rho in enumerate(curves.rhos):
        line, = ax.plot(curves.sigma2, curves.kl[k], lw=1.5, label=f"rho = {rho:g}")
        ax.plot(curves.formula_minimiser[k], curves.minimum_kl[k], "o", color=line.get_color(),
                markeredgecolor="black")
    ax.plot([], [], "o", color="white", markeredgecolor="black", label="rho^2 / (1 + rho^2)")
    ax.set_xscale("log")
    top = float(np.max(curves.minimum_kl)) * 1.6 + 1.0
    ax.set_ylim(0.0, top)
    ax.set_xlabel("sigma^2")
    ax.set_ylabel("KL with sigma^2 / mu^2 = rho^2 (nats)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def no_kl_figure(mu_variances: Mapping[str, np.ndarray], gains: Mapping[str, np.ndarray],
                 threshold: float) -> Figure:
    """Per model, its variables sorted high to low: Var(mu_j) (left, log scale, with the inactivity
    threshold) and reconstruction gain (right, log scale: the scale-free test of use)."""
    fig = new_figure(11.0, 4.3)
    left, right = fig.subplots(1, 2)
    for name, values in mu_variances.items():
        ordered = np.sort(np.asarray(values))[::-1]
        left.plot(np.arange(1, len(ordered) + 1), ordered, "o-", label=name)
    for name, values in gains.items():
        # a variable the decoder ignores gains ~0 (even slightly below): drawn at a floor
        ordered = np.maximum(np.sort(np.asarray(values))[::-1], 1e-5)
        right.plot(np.arange(1, len(ordered) + 1), ordered, "o-", label=name)
    left.axhline(threshold, color=INACTIVE_COLOR, ls=":", label=f"inactive below {threshold:g}")
    left.set_ylabel("Var(mu_j) over the test set")
    right.set_ylabel("reconstruction gain (nats / image; floor 1e-5)")
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xlabel("variables, sorted high to low")
        ax.grid(alpha=0.3, which="both")
    fig.legend(handles=left.get_lines(), loc="outside upper center", ncols=len(left.get_lines()), fontsize=9)
    return fig


def run_to_run_figure(spreads: Mapping[str, CountSpread], seed_counts: Mapping[str, int],
                      latent_dim: int) -> Figure:
    """Inactive count per seed for each model (dots), with the articles' count (cross)."""
    fig = new_figure(1.8 + 1.6 * len(spreads), 3.8)
    ax = fig.subplots()
    names = list(spreads)
    for x, name in enumerate(names):
        counts = np.asarray(spreads[name].counts)
        jitter = np.linspace(-0.12, 0.12, len(counts)) if len(counts) > 1 else np.zeros(1)
        ax.scatter(x + jitter, counts, color=ACTIVE_COLOR, zorder=3, label="ours, one per seed" if x == 0 else None)
        if name in seed_counts:
            ax.scatter([x], [seed_counts[name]], marker="x", s=80, color=INACTIVE_COLOR, zorder=4,
                       label="article" if name == next(n for n in names if n in seed_counts) else None)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(-0.5, latent_dim + 0.5)
    ax.set_ylabel(f"inactive variables (of {latent_dim})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig
