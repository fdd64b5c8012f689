"""Activity criteria side by side: verdicts, polarisation, disagreements, sweeps, figure and table."""

from __future__ import annotations

import numpy as np
import pytest

from vaescope.core.config import StatsConfig
from vaescope.measures.criteria import criteria_table, threshold_sweeps, usual_rules
from vaescope.measures.statistics import LatentStatistics
from vaescope.reports.figures.criteria import criteria_figure
from vaescope.reports.tables import criteria_text

# Five variables built so that every verdict is known by hand (usual thresholds: Var(mu) 0.01,
# mean s2 0.8, KL 0.01 and 0.1, I 0.01, gain 1% of the largest = 0.5 nats here):
#   0 clearly on; 1 clearly off (as a collapsed dense16 variable: Var(mu) 1.3e-3, s2 0.99);
#   2 on by Var(mu), KL 0.01, I, gain; off by s2 (0.9) and NVAE's KL 0.1 (KL 0.05);
#   3 on by Var(mu) (0.02) and KL 0.01 (0.012) only;
#   4 on by every rule, but mean s2 = 0.5 is within half a decade of 0.8 (1 - 0.5 < 0.2 * 3.16).
MU_VARIANCE = np.array([1.0, 1.3e-3, 0.05, 0.02, 0.5])
SIGMA2 = np.array([0.01, 0.99, 0.9, 0.97, 0.5])
KL = np.array([2.0, 1e-3, 0.05, 0.012, 0.5])
MI = np.array([1.5, 0.0002, 0.03, 0.005, 0.4])
GAIN = np.array([50.0, 1e-5, 1.0, 1e-4, 20.0])


def _stats(thresholds: StatsConfig | None = None) -> LatentStatistics:
    zeros = np.zeros(5)
    return LatentStatistics(n=100, mu_mean=zeros, mu_variance=MU_VARIANCE, sigma2_mean=SIGMA2,
                            log_sigma2_mean=np.log(SIGMA2), kl_mean=KL, thresholds=thresholds or StatsConfig())


def test_verdicts_of_every_rule_match_the_hand_count() -> None:
    table = criteria_table(_stats(), MI, GAIN)
    expected = {
        "mu_variance@0.01": [1, 0, 1, 1, 1],
        "sigma2_mean@0.8": [1, 0, 0, 0, 1],
        "kl_mean@0.01": [1, 0, 1, 1, 1],
        "kl_mean@0.1": [1, 0, 0, 0, 1],
        "mi@0.01": [1, 0, 1, 0, 1],
        "reconstruction_gain@0.01": [1, 0, 1, 0, 1],
    }
    assert [r.key for r in table.rules] == list(expected)
    for key, active in expected.items():
        assert table.verdicts[key].tolist() == [bool(a) for a in active], key
    assert table.disagreements.tolist() == [2, 3]
    assert table.polarisation.tolist() == ["on", "off", "between", "between", "between"]
    assert table.polarisation_counts() == {"on": 1, "off": 1, "between": 3}


def test_polarisation_reads_the_margin() -> None:
    # With a margin of 1 (no room asked), variable 4, active by every rule, is clearly on.
    assert criteria_table(_stats(), MI, GAIN, margin=1.0).polarisation[4] == "on"
    # With a margin of 100, variable 1 (Var(mu) 1.3e-3 > 0.01 / 100) is no longer clearly off.
    assert criteria_table(_stats(), MI, GAIN, margin=100.0).polarisation[1] == "between"


def test_rules_follow_the_run_thresholds_and_skip_what_was_not_measured() -> None:
    table = criteria_table(_stats(StatsConfig(kl_threshold=0.1)), mi=None, gain=GAIN)
    assert [r.key for r in table.rules] == ["mu_variance@0.01", "sigma2_mean@0.8", "kl_mean@0.1",
                                             "reconstruction_gain@0.01"]  # one KL rule at 0.1; no I(x; z_j)
    assert "mi" not in table.values
    assert len(usual_rules()) == 6


def test_gains_all_zero_make_every_variable_inactive_by_gain() -> None:
    table = criteria_table(_stats(), MI, np.zeros(5))
    assert not table.verdicts["reconstruction_gain@0.01"].any()


def test_refuses_values_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match=r"mi has shape \(4,\)"):
        criteria_table(_stats(), MI[:4], GAIN)


def test_sweeps_count_the_active_variables_at_each_threshold() -> None:
    table = criteria_table(_stats(), MI, GAIN)
    sweeps = {s.criterion: s for s in threshold_sweeps(table, points=400)}
    assert set(sweeps) == {"mu_variance", "sigma2_mean", "kl_mean", "mi", "reconstruction_gain"}
    var = sweeps["mu_variance"]
    assert var.log_scale and var.active_counts[0] == 5 and var.active_counts[-1] == 0
    assert np.all(np.diff(var.active_counts) <= 0)
    between = (var.thresholds > 0.5) & (var.thresholds <= 1.0)  # only variable 0 (1.0) reaches these
    assert between.any() and np.all(var.active_counts[between] == 1)
    plateau = (var.thresholds > 0.0013) & (var.thresholds <= 0.02)  # 1.3e-3 < t <= 0.02: variables 0, 2, 3, 4
    assert np.all(var.active_counts[plateau] == 4)
    s2 = sweeps["sigma2_mean"]
    assert not s2.log_scale and s2.thresholds[0] == 0 and s2.active_counts[0] == 0 and s2.active_counts[-1] == 5
    # active while mean sigma^2 <= t (the documented rule): the hand count at every threshold
    assert list(s2.active_counts) == [int((SIGMA2 <= t).sum()) for t in s2.thresholds]
    assert np.all(s2.active_counts[(s2.thresholds >= 0.5) & (s2.thresholds < 0.9)] == 2)  # variables 0 and 4
    gain = sweeps["reconstruction_gain"]  # relative: 1, 2e-7, 0.02, 2e-6, 0.4
    assert np.all(gain.active_counts[(gain.thresholds > 0.02) & (gain.thresholds <= 0.4)] == 2)
    assert [r.key for r in sweeps["kl_mean"].usual] == ["kl_mean@0.01", "kl_mean@0.1"]
    assert sweeps["kl_mean"].to_dict()["active_counts"][0] == 5


def test_figure_marks_the_usual_thresholds_and_lists_the_disagreements() -> None:
    table = criteria_table(_stats(), MI, GAIN)
    fig = criteria_figure(table, threshold_sweeps(table), title="synthetic")
    axes = fig.get_axes()
    assert len(axes) == 6
    kl_axis = axes[2]
    marked = sorted(line.get_xdata()[0] for line in kl_axis.get_lines() if len(set(line.get_xdata())) == 1)
    assert marked == [0.01, 0.1]
    legend = [t.get_text() for t in kl_axis.get_legend().get_texts()]
    assert legend == ["0.01 (vaescope default): 4 active", "0.1 (NVAE): 2 active"]
    drawn = axes[5].tables[0]
    cells = drawn.get_celld()
    assert cells[(1, 0)].get_text().get_text() == "2" and cells[(2, 0)].get_text().get_text() == "3"
    assert max(row for row, _ in cells) == 2  # a header and the two variables the rules disagree on


def test_terminal_table_shows_every_criterion_and_the_summary() -> None:
    stats = _stats()
    table = criteria_table(stats, MI, GAIN)
    text = criteria_text(stats, table)
    rows = [line.split() for line in text.splitlines() if line[:3].strip().isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3, 4]
    assert [r[6] for r in rows] == ["active", "INACTIVE", "active", "active", "active"]
    assert [r[-1] for r in rows] == ["on", "off", "between", "between", "between"]
    assert rows[2][8:13] == ["x", ".", "x", ".", "."]  # s2, KL 0.01, KL 0.1, I, gain for variable 2
    assert "1 of 5 variables inactive (Var(mu) < 0.01); by mean s2 > 0.8: 3; by KL < 0.01: 1" in text
    assert "by KL < 0.1 (NVAE): 3" in text
    assert "the rules disagree on variable(s) 2, 3" in text
    assert "polarised: 1 clearly on, 1 clearly off, 3 in between" in text
