"""Figures of the dynamic experiments: noise collapse, the 3-D KL ablation, 2-D trajectories.

Each function takes an experiment's result and returns a matplotlib Figure (or, for the
animation, a FuncAnimation); nothing here computes a metric beyond what is drawn.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from matplotlib.ticker import MaxNLocator

from vaescope.core.storage import atomic_write_bytes
from vaescope.experiments.kl_ablation import AblationArm
from vaescope.experiments.noise_collapse import NoiseCollapseResult
from vaescope.experiments.trajectories import TrajectoryResult
from vaescope.reports.figures.common import new_figure

CLASS_COLOURS = [f"C{i}" for i in range(10)]
PHASE_COLOURS = {"noise": "#f4cccc", "hold": "#fce5cd", "recovery": "#d9ead3"}
PHASE_NAMES = {"noise": "noise raised", "hold": "noise held", "recovery": "noise removed"}


def _class_colour(label: int) -> str:
    return CLASS_COLOURS[int(label) % len(CLASS_COLOURS)]


def circle_radius(sigma2: np.ndarray) -> np.ndarray:
    """r with r^2 = sqrt(sigma_1^2 sigma_2^2), the KL article's circle size: ``(..., 2)`` -> ``(...)``."""
    return np.sqrt(np.sqrt(sigma2[..., 0] * sigma2[..., 1]))


# ---------------------------------------------------------------------------- noise collapse

def noise_collapse_figure(result: NoiseCollapseResult, threshold: float = 0.01) -> Figure:
    """Gain, KL, noise (top) and Var(mu), mean sigma^2 on a log scale (bottom) of the variable against
    epochs; row e's noise is the one applied during epoch e, drawn over (e - 1, e]."""
    rows = result.history
    epoch = np.array([r["epoch"] for r in rows])
    fig = new_figure(8, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax in (top, bottom):
        for phase, colour in PHASE_COLOURS.items():
            at = [r["epoch"] for r in rows if r["phase"] == phase]
            if at:
                ax.axvspan(min(at) - 1, max(at), color=colour, alpha=0.6, lw=0,
                           label=PHASE_NAMES[phase] if ax is top else None)
        if result.collapse_epoch is not None:
            ax.axvline(result.collapse_epoch, color="k", ls=":", lw=1, label="collapse" if ax is top else None)
    top.plot(epoch, [r["gain"] for r in rows], "o-", ms=3, color="C0", label="reconstruction gain")
    top.plot(epoch, [r["kl"] for r in rows], "s-", ms=3, color="C3", label="KL")
    top.set_ylabel("nats per test digit")
    top.set_title(f"variable {result.variable}: noise added to its sampled z"
                  + (f", collapsed at epoch {result.collapse_epoch}" if result.collapsed else ", did not collapse"),
                  fontsize=10)
    noise_ax = top.twinx()
    noise_ax.step(epoch, [r["noise_std"] for r in rows], where="pre", color="0.35", ls="--", lw=1,
                  label="noise std (right)")
    noise_ax.set_ylabel("noise std", color="0.35")
    handles, labels = top.get_legend_handles_labels()
    more, more_labels = noise_ax.get_legend_handles_labels()
    fig.legend(handles + more, labels + more_labels, loc="outside upper center", ncols=4, fontsize=8)
    bottom.semilogy(epoch, [r["mu_variance"] for r in rows], "o-", ms=3, color="C2", label="Var(mu)")
    bottom.semilogy(epoch, [r["sigma2_mean"] for r in rows], "s-", ms=3, color="C1", label="mean sigma^2")
    bottom.axhline(1.0, color="0.6", lw=0.8)
    bottom.axhline(threshold, color="C2", ls=":", lw=0.8, label=f"activity threshold {threshold:g}")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlabel("epoch (0 = the trained model before any noise)")
    bottom.set_ylabel("variance (log scale)")
    bottom.legend(fontsize=8, loc="lower left")
    return fig


# ---------------------------------------------------------------------------- KL ablation

def _shared_limit(arms: dict[str, AblationArm]) -> float:
    """Axis half-width that shows every arm's codes (99.5% of them) and the prior's +-3."""
    return float(max(3.0, *(np.quantile(np.abs(a.codes), 0.995) * 1.05 for a in arms.values())))


def kl_ablation_codes_figure(arms: dict[str, AblationArm]) -> Figure:
    """One row per arm: the codes in 3-D and their three 2-D projections, coloured by class,
    on common axes; the dashed circle is radius 2 of the prior N(0, I)."""
    limit = _shared_limit(arms)
    fig = new_figure(15, 3.8 * len(arms))
    grid = fig.add_gridspec(len(arms), 4, width_ratios=[1.35, 1, 1, 1])
    pairs = [(0, 1), (0, 2), (1, 2)]
    for row, (name, arm) in enumerate(arms.items()):
        colours = [_class_colour(c) for c in arm.labels]
        ax3 = fig.add_subplot(grid[row, 0], projection="3d")
        ax3.scatter(*arm.codes.T, c=colours, s=1, alpha=0.6, depthshade=False)
        ax3.set(xlim=(-limit, limit), ylim=(-limit, limit), zlim=(-limit, limit),
                xlabel="z1", ylabel="z2", zlabel="z3")
        ax3.set_title(name, fontsize=11, weight="bold")
        for col, (i, j) in enumerate(pairs, start=1):
            ax = fig.add_subplot(grid[row, col])
            ax.scatter(arm.codes[:, i], arm.codes[:, j], c=colours, s=1, alpha=0.5, rasterized=True)
            ax.add_patch(Circle((0, 0), 2.0, fill=False, ls="--", color="0.3", lw=0.8))
            ax.set(xlim=(-limit, limit), ylim=(-limit, limit), xlabel=f"z{i + 1}", ylabel=f"z{j + 1}",
                   aspect="equal")
            if col == 2:
                ax.set_title(f"{name}: prior sample -> nearest code {arm.nearest_code_distance:.3f}; "
                             f"KL(Gaussian fit || N(0, I)) {arm.fitted_kl:.2f}", fontsize=9)
    classes = sorted({int(c) for arm in arms.values() for c in arm.labels})
    handles = [Circle((0, 0), 1, color=_class_colour(c)) for c in classes]
    fig.legend(handles, [str(c) for c in classes], loc="outside right center", title="class", fontsize=8)
    return fig


def _mosaic(images: np.ndarray, gap: int = 1) -> np.ndarray:
    """``(R, C, H, W)`` -> one ``(R*(H+gap)-gap, C*(W+gap)-gap)`` image; light-grey gaps."""
    rows, cols, h, w = images.shape
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 0.12)
    for r in range(rows):
        for c in range(cols):
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[r, c]
    return out


def kl_ablation_generations_figure(arms: dict[str, AblationArm]) -> Figure:
    """One row per arm, one panel per horizontal slice (a level of z3): the digits decoded on a
    grid of (z1, z2), z1 growing to the right and z2 upwards."""
    first = next(iter(arms.values()))
    n = len(first.slice_levels)
    fig = new_figure(2.4 * n, 2.7 * len(arms))
    axes = np.atleast_2d(fig.subplots(len(arms), n))
    for row, (name, arm) in enumerate(arms.items()):
        for s in range(n):
            ax = axes[row, s]
            ax.imshow(_mosaic(arm.generations[s]), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"z3 = {arm.slice_levels[s]:+.2f}", fontsize=9)
        axes[row, 0].set_ylabel(name, fontsize=10)
    levels = ", ".join(f"{v:+.2f}" for v in first.grid_levels)
    fig.suptitle(f"generated from {n} slices of the latent space; z1, z2 in {{{levels}}}", fontsize=10)
    return fig


# ---------------------------------------------------------------------------- trajectories

def _trajectory_limits(mu: np.ndarray, margin: float = 0.4) -> tuple[tuple[float, float], tuple[float, float]]:
    """x and y limits that hold every position in ``mu`` ``(..., 2)``; early circles (sigma^2 can
    pass 1 for a few minibatches) may be clipped rather than shrink the paths to a dot."""
    points = mu.reshape(-1, 2)
    low, high = points.min(0) - margin, points.max(0) + margin
    centre, half = (low + high) / 2, max(high - low) / 2  # square, so circles stay round
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


def trajectories_figure(result: TrajectoryResult, circles: int = 6) -> Figure:
    """Paths of the tracked digits, fading from the first recorded frame to the last: outlines at
    ``circles`` earlier frames, a filled circle at the last (r^2 = sqrt(sigma_1^2 sigma_2^2))."""
    fig = new_figure(7, 7)
    ax = fig.subplots()
    n_frames = len(result.steps)
    fade = np.linspace(0.1, 1.0, max(n_frames - 1, 1))
    radius = circle_radius(result.sigma2)  # (T, K)
    earlier = np.unique(np.linspace(0, n_frames - 1, circles + 1).round().astype(int))[:-1]
    for k, label in enumerate(result.labels):
        colour = _class_colour(label)
        points = result.mu[:, k]  # (T, 2)
        segments = np.stack([points[:-1], points[1:]], axis=1)
        ax.add_collection(LineCollection(segments, colors=[to_rgba(colour, a) for a in fade], lw=1.2))
        for t in earlier:
            alpha = 0.15 + 0.45 * t / max(n_frames - 1, 1)
            ax.add_patch(Circle(points[t], radius[t, k], fill=False, color=colour, alpha=alpha, lw=0.8))
        ax.add_patch(Circle(points[-1], radius[-1, k], color=colour, alpha=0.5, lw=0))
        ax.annotate(str(int(label)), points[-1], fontsize=11, weight="bold", color=colour,
                    xytext=(5, 5), textcoords="offset points")
    xlim, ylim = _trajectory_limits(result.mu)
    ax.set(xlim=xlim, ylim=ylim, aspect="equal", xlabel="z1", ylabel="z2")
    epochs = result.steps[-1] / result.steps_per_epoch
    span = "the first epoch" if epochs == 1 else f"the first {epochs:g} epochs"
    ax.set_title(f"{len(result.labels)} test digits during {span} ({result.steps[-1]} minibatches); "
                 f"mean sigma^2 {result.sigma2_mean_start:.2f} -> {result.sigma2_mean_end:.3f}", fontsize=9)
    return fig


def trajectories_animation(result: TrajectoryResult, trail: int = 12) -> FuncAnimation:
    """The tracked digits frame by frame: a circle per digit and a fading trail of ``trail`` frames."""
    fig = Figure(figsize=(5, 5), dpi=80, layout="constrained")
    ax = fig.subplots()
    xlim, ylim = _trajectory_limits(result.mu)
    ax.set(xlim=xlim, ylim=ylim, aspect="equal", xlabel="z1", ylabel="z2")
    radius = circle_radius(result.sigma2)
    colours = [_class_colour(c) for c in result.labels]
    circles = [ax.add_patch(Circle((0, 0), 1, color=c, alpha=0.35, lw=0)) for c in colours]
    trails = [ax.add_collection(LineCollection([], lw=1.2)) for _ in colours]
    texts = [ax.text(0, 0, str(int(c)), fontsize=9, weight="bold", color=col)
             for c, col in zip(result.labels, colours)]
    title = ax.set_title("", fontsize=9)

    def draw(t: int) -> list:
        lo = max(0, t - trail)
        for k, colour in enumerate(colours):
            circles[k].set_center(result.mu[t, k])
            circles[k].set_radius(radius[t, k])
            points = result.mu[lo : t + 1, k]
            segments = np.stack([points[:-1], points[1:]], axis=1) if len(points) > 1 else np.zeros((0, 2, 2))
            trails[k].set_segments(segments)
            trails[k].set_color([to_rgba(colour, a) for a in np.linspace(0.1, 1.0, len(segments))])
            texts[k].set_position(result.mu[t, k])
        title.set_text(f"minibatch {result.steps[t]} (epoch {result.steps[t] / result.steps_per_epoch:.2f}), "
                       f"mean sigma^2 {result.sigma2[t].mean():.3f}")
        return [*circles, *trails, *texts, title]

    return FuncAnimation(fig, draw, frames=len(result.steps), blit=False)


def save_animation(animation: FuncAnimation, path: str | Path, fps: int = 10) -> Path:
    """Write ``animation`` as a GIF (Pillow) to ``path``, atomically (rendered in a scratch folder)."""
    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        rendered = Path(scratch) / "animation.gif"
        animation.save(rendered, writer=PillowWriter(fps=fps))
        atomic_write_bytes(path, rendered.read_bytes())
    return path


def final_layout_figure(result: TrajectoryResult) -> Figure:
    """The snapshot digits after training: a circle per digit at mu, r^2 = sqrt(sigma_1^2 sigma_2^2);
    the dashed circle is radius 2 of the prior."""
    fig = new_figure(6.5, 6.5)
    ax = fig.subplots()
    radius = circle_radius(result.final_sigma2)
    for (x, y), r, label in zip(result.final_mu, radius, result.final_labels):
        colour = _class_colour(label)
        ax.add_patch(Circle((x, y), r, color=colour, alpha=0.45, lw=0))
        ax.add_patch(Circle((x, y), r, fill=False, color=colour, lw=0.8))
        ax.text(x, y, str(int(label)), fontsize=7, ha="center", va="center", color="k")
    ax.add_patch(Circle((0, 0), 2.0, fill=False, ls="--", color="0.4", lw=0.8))
    limit = max(2.2, float(np.max(np.abs(result.final_mu) + radius[:, None])) * 1.05)
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", xlabel="z1", ylabel="z2")
    ax.set_title(f"{len(result.final_labels)} test digits after {result.epochs} epochs; "
                 f"mean sigma^2 {result.sigma2_mean_final:.4f}", fontsize=9)
    return fig
