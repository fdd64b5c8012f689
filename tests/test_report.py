"""The report renderer: sections in order, self-contained HTML, Markdown, refusal of bad input."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from vaescope.core.errors import VaescopeError
from vaescope.experiments.run_to_run import count_spread
from vaescope.measures.statistics import LatentStatistics
from vaescope.measures.trace import variance_trace
from vaescope.measures.variance_law import stationary_curves, variance_law
from vaescope.reports.figures import sparsity as figs
from vaescope.reports.figures.common import new_figure, png_bytes, save_png
from vaescope.reports.html import (
    Image,
    Paragraph,
    Preformatted,
    Section,
    Table,
    render_html,
    render_markdown,
    write_report,
)
from vaescope.runs.files import Trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def figure_file(tmp_path: Path) -> Path:
    fig = new_figure(2, 2)
    fig.subplots().plot([0, 1], [1, 0])
    return save_png(fig, tmp_path / "figures" / "line.png")


def _sections() -> list[Section]:
    return [
        Section("first", "First <section>", [
            Paragraph("Text with `code`, **bold** and <script>alert(1)</script>."),
            Table(["variable", "Var(mu)"], [["0", "0.9"], ["1", "1e-4"], ["2", "a|b"]], highlight=frozenset({1}),
                  caption="A table."),
        ]),
        Section("second", "Second", [Image("figures/line.png", "A line. Falling."), Preformatted("x = 1\n")]),
    ]


def test_html_is_self_contained(figure_file: Path, tmp_path: Path) -> None:
    page = render_html("Report", _sections(), tmp_path)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    assert base64.b64decode(sources[0].split(",", 1)[1]) == figure_file.read_bytes()
    assert all(h.startswith("#") for h in re.findall(r'href="([^"]*)"', page))  # only in-page anchors
    assert "<link" not in page and "@import" not in page and "url(" not in page


def test_html_escapes_text_and_highlights_rows(figure_file: Path, tmp_path: Path) -> None:
    page = render_html("Report", _sections(), tmp_path)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<code>code</code>" in page and "<strong>bold</strong>" in page
    rows = re.findall(r"<tr( class=\"hl\")?><td>(\d)</td>", page)
    assert rows == [("", "0"), (' class="hl"', "1"), ("", "2")]
    assert page.index('id="first"') < page.index('id="second"')
    assert "1. First &lt;section&gt;" in page and "2. Second" in page


def test_markdown(figure_file: Path) -> None:
    text = render_markdown("Report", _sections(), intro=[Paragraph("Intro.")])
    assert text.startswith("# Report\n\nIntro.")
    assert "## 1. First <section>" in text and "## 2. Second" in text
    assert "| **1** | **1e-4** |" in text and "| 0 | 0.9 |" in text
    assert "a\\|b" in text  # a pipe inside a cell does not break the table
    assert "![line](figures/line.png)" in text and "*A line. Falling.*" in text
    assert "```\nx = 1\n```" in text
    assert "1. [First <section>](#first)" in text


def test_sections_appended_by_another_module_render_after(figure_file: Path, tmp_path: Path) -> None:
    sections = _sections()
    sections.append(Section("noise-collapse", "Appended", [Paragraph("From elsewhere.")]))
    html_path, md_path = write_report(tmp_path, "Report", sections)
    page, text = html_path.read_text(), md_path.read_text()
    assert page.index('id="second"') < page.index('id="noise-collapse"')
    assert "## 3. Appended" in text


def test_refuses_duplicate_or_bad_ids_and_missing_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="share the id"):
        render_markdown("R", [Section("a", "A"), Section("a", "B")])
    with pytest.raises(ValueError, match="section id"):
        render_markdown("R", [Section("has space", "A")])
    with pytest.raises(VaescopeError, match="missing.png"):
        render_html("R", [Section("a", "A", [Image("figures/missing.png")])], tmp_path)


# ---------------------------------------------------------------------------- figures

def _stats(active_count: int = 3, dim: int = 5) -> LatentStatistics:
    mu_variance = np.array([0.9] * active_count + [1e-4] * (dim - active_count))
    sigma2 = np.array([0.05] * active_count + [0.99] * (dim - active_count))
    return LatentStatistics(5, np.zeros(dim), mu_variance, sigma2, np.log(sigma2) - 0.1, mu_variance)


def test_sparsity_figures_draw_their_data() -> None:
    trace = Trace(steps=[0, 5, 10], epochs=[0, 0.5, 1.0],
                  mu_variance=[np.array([0.1, 0.1]), np.array([0.5, 0.01]), np.array([0.9, 1e-4])],
                  sigma2_mean=[np.array([1.0, 1.0]), np.array([0.3, 0.9]), np.array([0.1, 0.99])])
    fig = figs.variance_trace_figure(variance_trace(trace), "t")
    left, right = fig.axes
    assert len(right.lines) == 2 and len(left.lines) == 3  # two variables, plus the threshold on the left
    np.testing.assert_array_equal(right.lines[1].get_ydata(), [1.0, 0.9, 0.99])

    law = variance_law(_stats())
    fig = figs.variance_law_figure({"dense16": law, "conv16": law})
    assert len(fig.axes) == 2 and len(fig.axes[0].patches) == 10  # 5 Var(mu) bars + 5 sigma^2 bars

    curves = stationary_curves(rhos=(0.5, 1.0), points=50)
    fig = figs.stationary_kl_figure(curves)
    marker = [ln for ln in fig.axes[0].lines if ln.get_marker() == "o" and len(ln.get_xdata()) == 1]
    assert sorted(float(ln.get_xdata()[0]) for ln in marker) == pytest.approx([0.2, 0.5])

    images = np.random.default_rng(0).uniform(size=(4, 1, 6, 6))
    fig = figs.generation_figure(images, 1 - images, 2)
    top, bottom = fig.axes
    # each row shows its own images, side by side: the first image's pixels at the left of the row
    np.testing.assert_allclose(top.images[0].get_array()[:6, :6], images[0, 0])
    np.testing.assert_allclose(bottom.images[0].get_array()[:6, :6], 1 - images[0, 0])
    fig = figs.reconstruction_gain_figure({"dense16": (np.array([2.0, 0.5, 1e-9, 0.0, 3.0]), law.active)})
    bars = fig.axes[0].patches
    # bars rise from the floor 1e-5 to the gain (a gain below the floor gets no height)
    assert [b.get_y() + b.get_height() for b in bars] == pytest.approx([2.0, 0.5, 1e-5, 1e-5, 3.0])
    fig = figs.log_variance_figure({"dense16": law})
    points = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(points[:, 0], law.log_mean_sigma2)
    np.testing.assert_allclose(points[:, 1], law.mean_log_sigma2)
    fig = figs.no_kl_figure({"a": law.mu_variance}, {"a": np.array([3.0, -1e-4, 2.0, 0.0, 1.0])}, 0.01)
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [3.0, 2.0, 1.0, 1e-5, 1e-5])
    fig = figs.run_to_run_figure({"dense16": count_spread([0, 1], [8, 9]), "x": count_spread([0, 1], [0, 0])},
                                 {"dense16": 8}, 16)
    assert png_bytes(fig).startswith(PNG_MAGIC)
