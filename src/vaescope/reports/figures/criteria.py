"""The activity criteria figure: active counts as each threshold sweeps, and where the rules disagree."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vaescope.measures.criteria import CRITERIA, CriteriaTable, ThresholdSweep
from vaescope.reports.figures.common import ACTIVE_COLOR, INACTIVE_COLOR, NEUTRAL_COLOR, new_figure

MARK_STYLES = ("--", ":", "-.")
MAX_TABLE_ROWS = 16


def _sweep_panel(ax: Axes, sweep: ThresholdSweep, table: CriteriaTable) -> None:
    c = CRITERIA[sweep.criterion]
    ax.step(sweep.thresholds, sweep.active_counts, where="post", color=ACTIVE_COLOR, lw=1.6)
    if sweep.log_scale:
        ax.set_xscale("log")
    for style, rule in zip(MARK_STYLES, sweep.usual):
        ax.axvline(rule.threshold, color=NEUTRAL_COLOR, ls=style, lw=1,
                   label=f"{rule.threshold:g} ({rule.source}): {table.active_count(rule)} active")
    ax.set_ylim(-0.3, table.latent_dim + 0.3)
    ax.set_xlabel(f"threshold on {c.label}{f' ({c.unit})' if c.unit else ''}, active when "
                  f"{'>=' if c.active_above else '<='}")
    ax.set_ylabel("active variables")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7, frameon=False)


def _disagreement_panel(ax: Axes, table: CriteriaTable) -> None:
    ax.axis("off")
    counts = table.polarisation_counts()
    summary = f"clearly on {counts['on']}, clearly off {counts['off']}, in between {counts['between']}"
    rows = table.disagreements
    if len(rows) == 0:
        ax.set_title(f"every rule agrees on every variable\n{summary}", fontsize=9)
        return
    shown = rows[:MAX_TABLE_ROWS]
    header = ["var"] + [r.label.replace("mean sigma^2", "s2").replace("gain / largest gain", "gain/max")
                        for r in table.rules] + ["class"]
    cells = [[str(j)] + ["on" if table.verdicts[r.key][j] else "off" for r in table.rules]
             + [str(table.polarisation[j])] for j in shown]
    colours = [["white"] + [ACTIVE_COLOR + "33" if table.verdicts[r.key][j] else INACTIVE_COLOR + "33"
                            for r in table.rules] + ["white"] for j in shown]
    drawn = ax.table(cellText=cells, colLabels=header, cellColours=colours, loc="upper center", cellLoc="center")
    drawn.auto_set_font_size(False)
    drawn.set_fontsize(7)
    more = f" (first {len(shown)} of {len(rows)})" if len(rows) > len(shown) else ""
    ax.set_title(f"variables the rules disagree on{more}\n{summary}", fontsize=9)


def criteria_figure(table: CriteriaTable, sweeps: Sequence[ThresholdSweep], title: str = "") -> Figure:
    """One panel per criterion (active count against its threshold, usual thresholds marked)
    and a last panel listing the variables whose verdicts differ between rules."""
    panels = len(sweeps) + 1
    cols = 3
    rows = int(np.ceil(panels / cols))
    fig = new_figure(4.2 * cols, 3.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, sweep in zip(axes, sweeps):
        _sweep_panel(ax, sweep, table)
    _disagreement_panel(axes[len(sweeps)], table)
    for ax in axes[panels:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig
