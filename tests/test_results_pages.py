"""The results pages quote two kept runs of ``vaescope reproduce``: every number checked against them.

``docs/results/data/reproduce-quick.json`` and ``reproduce-full.json`` are the ``results.json`` of
``vaescope reproduce --quick`` and ``vaescope reproduce`` (their ``provenance`` says which commit,
command and machine). The pages ``docs/results/articles.md`` and ``docs/results/dynamics.md`` must
show the figures those files hold, formatted as below; a figure that drifts from its run fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "results" / "data"


def _page(name: str) -> str:
    return " ".join((ROOT / "docs" / "results" / name).read_text().split())  # one line: wrapping is free


def _run(mode: str) -> dict[str, Any]:
    return json.loads((DATA / f"reproduce-{mode}.json").read_text())


def _counts(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def _devs(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60} min {int(seconds) % 60} s"


def static_phrases(run: dict[str, Any]) -> list[str]:
    """What the articles page says of a run's static experiments."""
    models, generation = run["models"], run["generation"]
    return [
        f"dense16 has **{_counts(models['dense16']['inactive_count'])}** of 16",
        f"**{generation['inactive_zeroed_mean_abs_diff']:.4f}**",
        f"**{generation['active_zeroed_mean_abs_diff']:.3f}**",
        f"Without the KL term no variable is inactive ({_counts(models['dense16_no_kl']['inactive_count'])})",
        f"**{_devs(models['dense16']['variance_law_max_abs_dev'])}** (dense16)",
        f"**{_devs(models['conv16']['variance_law_max_abs_dev'])}** (conv16)",
        f"conv16 has **{_counts(models['conv16']['inactive_count'])}** inactive",
    ]


def noise_phrases(run: dict[str, Any]) -> list[str]:
    noise = run["noise_collapse"]
    collapsed = next(h for h in noise["history"] if h["collapsed"])
    peak = max(noise["history"], key=lambda h: h["mu_variance"])
    return [
        f"Var(mu) rose from {noise['history'][0]['mu_variance']:.1f} to {peak['mu_variance']:.1f} at noise std "
        f"{peak['noise_std']:.1f}",
        f"Variable {noise['variable']} (gain {noise['gain_before']:.1f} nats, KL {noise['kl_before']:.1f} nats)",
        f"**collapsed** at epoch {noise['collapse_epoch']} (Var(mu) {collapsed['mu_variance']:.4f}, "
        f"mean sigma^2 {collapsed['sigma2_mean']:.3f})",
        f"regained **{noise['recovered_fraction']:.0%}** of its gain ({noise['gain_after']:.1f} nats)",
    ]


def coverage_phrases(run: dict[str, Any]) -> list[str]:
    on, off = run["kl_ablation"]["with_sampling"], run["kl_ablation"]["without_sampling"]
    return [
        f"nearest code is {on['nearest_code_distance']:.3f} ({on['prior_reference_distance']:.3f} if the codes",
        f"the Gaussian fit is {on['gaussian_fit_kl']:.2f} nats from N(0, I)",
        f"the distance more than doubles to {off['nearest_code_distance']:.3f} and the KL is "
        f"{off['gaussian_fit_kl']:.2f} nats",
    ]


def trajectory_phrases(run: dict[str, Any]) -> list[str]:
    t = run["trajectories"]
    return [f"start at mean sigma^2 {t['sigma2_mean_start']:.2f} and end the first epoch at "
            f"{t['sigma2_mean_end']:.3f}; after 10 epochs the snapshot digits average {t['sigma2_mean_final']:.4f}"]


def time_phrases(run: dict[str, Any]) -> list[str]:
    timing = run["timing"]
    total, steps = timing["total_seconds"], timing["step_seconds"]
    return [f"**{total:.0f} s ({_minutes(total)})**", f"training the 12 runs {steps['train']:.0f} s",
            f"noise collapse {steps['noise-collapse']:.0f} s", f"trajectories {steps['trajectories']:.0f} s"]


def provenance_phrases(run: dict[str, Any]) -> list[str]:
    """The commit the run names; a run from a working tree with uncommitted edits ("-dirty") must say so."""
    commit = run["provenance"]["commit"]
    clean = commit.removesuffix("-dirty")
    return [f"at commit {clean}"] + ([f"`{commit}`"] if commit != clean else [])


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_the_kept_runs_are_what_the_command_writes(mode):
    run = _run(mode)
    assert run["mode"] == mode and run["seeds"] == [0, 1, 2] and run["dataset"] == "mnist"
    assert run["provenance"]["command"].startswith(f"vaescope reproduce {'--quick ' if mode == 'quick' else ''}--out")
    epochs = {"quick": {"dense16": 10, "dense16_no_kl": 10, "conv16": 5},
              "full": {"dense16": 40, "dense16_no_kl": 40, "conv16": 20}}[mode]
    assert {m: run["models"][m]["epochs"] for m in epochs} == epochs
    assert not any(any(run["models"][m]["reused"]) for m in epochs)  # trained from scratch: the times hold


def test_the_articles_page_quotes_the_quick_run():
    page, run = _page("articles.md"), _run("quick")
    section = page.split("## What `--quick` gives", 1)[1].split("## The full settings", 1)[0]
    gains = run["reconstruction_gain"]["dense16"]
    active = [v["active"] for v in run["models"]["dense16"]["first_seed_statistics"]["variables"]]
    active_gains = [g for g, a in zip(gains, active, strict=True) if a]
    assert max(abs(g) for g, a in zip(gains, active, strict=True) if not a) < 5e-4  # "below 5e-4 nats"
    gain_phrase = f"against {min(active_gains):.0f} to {max(active_gains):.0f} nats for the active ones"
    missing = [p for p in static_phrases(run) + provenance_phrases(run) + [gain_phrase] if p not in section]
    assert missing == []
    timing = page.split("## Time of `--quick`", 1)[1]
    old = json.loads((DATA / "reproduce-quick-58c938d.json").read_text())
    steps, old_steps = run["timing"]["step_seconds"], old["timing"]["step_seconds"]
    conv = run["models"]["conv16"]
    phrases = time_phrases(run)[:1] + provenance_phrases(run) + [
        f"`train_many` call, {steps['train']:.0f} s; noise collapse {steps['noise-collapse']:.0f} s; reconstruction "
        f"gains {steps['reconstruction-gain']:.0f} s; trajectories {steps['trajectories']:.0f} s",
        f"conv16's 15 epochs ({conv['train_seconds'][0] / conv['epochs']:.1f} s each on one thread)",
        f"it took **{old['timing']['total_seconds']:.0f} s**",
        f"took {run['timing']['total_seconds'] / old['timing']['total_seconds'] - 1:.0%} longer than 58c938d's in all "
        f"and {steps['train'] / old_steps['train'] - 1:.0%} longer in training ({steps['train']:.0f} s against "
        f"{old_steps['train']:.0f} s;",
    ]
    assert [p for p in phrases if p not in timing] == []
    assert old["models"]["dense16"]["inactive_count"] == run["models"]["dense16"]["inactive_count"]  # "identical"


def test_the_commands_at_the_top_give_the_measured_times():
    head = _page("articles.md").split("One command trains", 1)[0]
    for mode in ("quick", "full"):
        assert f"({_run(mode)['timing']['total_seconds']:.0f} s measured)" in head, mode


def test_the_articles_page_quotes_the_full_run():
    page, run = _page("articles.md"), _run("full")
    section = page.split("## The full settings", 1)[1].split("## Time of `--quick`", 1)[0]
    noise = run["noise_collapse"]
    phrases = [
        f"dense16 **{_counts(run['models']['dense16']['inactive_count'])}** inactive",
        f"variance law within **{_devs(run['models']['dense16']['variance_law_max_abs_dev'])}**",
        f"no-KL {_counts(run['models']['dense16_no_kl']['inactive_count'])}",
        f"conv16 **{_counts(run['models']['conv16']['inactive_count'])}**, variance law within "
        f"{_devs(run['models']['conv16']['variance_law_max_abs_dev'])}",
        f"changes generated pixels by {run['generation']['inactive_zeroed_mean_abs_diff']:.4f}, as many low-KL "
        f"active ones by {run['generation']['active_zeroed_mean_abs_diff']:.3f}",
        f"variable {noise['variable']} (gain {noise['gain_before']:.1f} nats) collapsed at epoch "
        f"{noise['collapse_epoch']} (noise std {noise['noise_at_stop']:.2f}) and regained "
        f"{noise['recovered_fraction']:.0%} of its gain",
        *provenance_phrases(run),
        *time_phrases(run),
    ]
    assert [p for p in phrases if p not in section] == []


def test_the_dynamics_page_quotes_the_quick_run():
    page, quick, full = _page("dynamics.md"), _run("quick"), _run("full")
    observed = page.split("## What we observed", 1)[1]
    phrases = noise_phrases(quick) + coverage_phrases(quick) + trajectory_phrases(quick) + provenance_phrases(quick) + [
        f"With the full settings it collapsed at epoch {full['noise_collapse']['collapse_epoch']} and regained "
        f"{full['noise_collapse']['recovered_fraction']:.0%}",
    ]
    assert [p for p in phrases if p not in observed] == []
    times = page.split("## Time", 1)[1].split("## What we observed", 1)[0]
    rows = [f"| noise collapse (after dense16 is trained) | {quick['timing']['step_seconds']['noise-collapse']:.0f} s "
            f"| {full['timing']['step_seconds']['noise-collapse']:.0f} s |",
            f"| KL ablation (its dense3 runs trained in the first step) | "
            f"{quick['timing']['step_seconds']['kl-ablation']:.0f} s | {full['timing']['step_seconds']['kl-ablation']:.0f} s |",
            f"| trajectories (recording the first epochs of dense2 again; dense2 trained in the first step) | "
            f"{quick['timing']['step_seconds']['trajectories']:.0f} s | {full['timing']['step_seconds']['trajectories']:.0f} s |",
            f"{quick['timing']['total_seconds']:.0f} s of `--quick` and the {full['timing']['total_seconds']:.0f} s"]
    assert [r for r in rows if r not in times] == []


def test_the_phrases_move_with_the_numbers():
    """The control: a run with one count changed no longer matches the page."""
    run = _run("quick")
    run["models"]["dense16"]["inactive_count"] = [8, 9, 10]
    section = _page("articles.md").split("## What `--quick` gives", 1)[1]
    assert static_phrases(run)[0] not in section


@pytest.mark.parametrize("page", ["getting-started.md", "guide/measures.md"])
def test_the_stats_sample_pages_name_the_quick_runs_model(page):
    """Beside the README's `stats` sample, the pages quote the same model in the kept --quick run."""
    stats = _run("quick")["models"]["dense16"]["first_seed_statistics"]
    text = " ".join((ROOT / "docs" / page).read_text().split())
    assert (f"trains the same model: {stats['inactive_count']} of {stats['latent_dim']} inactive, variance law "
            f"within {stats['variance_law_max_abs_dev']:.3f}") in text


def _sweep(k: int) -> dict[str, Any]:
    return json.loads((DATA / f"known-factors-k{k}.json").read_text())


def test_the_known_factors_table_is_the_kept_sweeps():
    page = _page("known-factors.md")
    names = {2: "2 (x, y)", 3: "3 (x, y, size)", 5: "5 (x, y, size, elongation, angle)"}
    for k, name in names.items():
        sweep = _sweep(k)
        assert sweep["provenance"]["command"].startswith(f"vaescope sweep --preset dense16 --data synthetic:factors={k} "
                                                         "--grid model.latent_dim=2,4,8,16 --seeds 2 --epochs 10")
        cells = [_counts([r["active_mu_variance"] for r in sweep["rows"] if r["latent_dim"] == size])
                 for size in (2, 4, 8, 16)]
        reading = sweep["intrinsic_dimension"][0]["mu_variance"]
        value = f"{reading['value']:g}"
        row = f"| {name} | {' | '.join(cells)} | **{value}** (levels off at L = {reading['latent_size']}) |"
        assert row in page, row
    seconds = ", ".join(f"{_sweep(k)['seconds']:.0f}" for k in (2, 3)) + f" and {_sweep(5)['seconds']:.0f} s"
    assert f"({seconds} for K = 2, 3, 5)" in page
    assert "at commit " + _sweep(2)["provenance"]["commit"] in page


def test_the_known_factors_losses_are_the_kept_sweeps():
    page = _page("known-factors.md")

    def span(k: int, sizes: tuple[int, ...]) -> str:
        losses = [r["test_loss"] for r in _sweep(k)["rows"] if r["latent_dim"] in sizes]
        return f"{min(losses):.1f}-{max(losses):.1f}"

    assert (f"K = 3: {span(3, (2,))} at L = 2, {span(3, (4,))} at L = 4, {span(3, (8, 16))} at L = 8 and 16 nats"
            in page)
    assert f"loss ({span(2, (2,))} at L = 2 against {span(2, (4, 8, 16))} above)" in page
    at4 = [r["test_loss"] for r in _sweep(5)["rows"] if r["latent_dim"] == 4]
    assert f"differ by up to {max(at4) - min(at4):.0f} nats at L = 4" in page
    differing = [(k, r["run"]) for k in (2, 3, 5) for r in _sweep(k)["rows"]
                 if len({r["active_mu_variance"], r["active_sigma2"]}) > 1]
    assert differing == [(3, "latent_dim16-seed1")]  # "the only run of the 24 whose count differs"
    assert "run (L = 16, seed 1)" in page and "the only run of the 24 whose count differs" in page


def test_the_prune_page_quotes_the_kept_prune():
    prune = json.loads((DATA / "prune-k2-latent16.json").read_text())
    page = " ".join((ROOT / "docs" / "guide" / "prune.md").read_text().split())
    before, after = prune["parameters_before"], prune["parameters_after"]
    diff = prune["max_abs_difference"]
    phrases = [
        f"{len(prune['removed'])} variables removed; {before:,} parameters before, {after:,} after "
        f"({1 - after / before:.2%} fewer",
        f"decoded test images {diff['decoded_images']:.1e} (logits {diff['decoded_logits']:.1e}, kept means "
        f"{diff['mu']:.0e})".replace("e-0", "e-"),
        f"test loss {prune['test_before']['loss']:.3f} -> {prune['test_after']['loss']:.3f} nats (reconstruction "
        f"{prune['test_before']['reconstruction']:.3f} -> {prune['test_after']['reconstruction']:.3f}",
        f"({prune['latent_dim_after']} of {prune['latent_dim_before']} variables active)",
    ]
    assert [p for p in phrases if p not in page] == []


def test_the_measures_page_quotes_the_kept_stats():
    stats = json.loads((DATA / "stats-mi-iwae-dense16.json").read_text())
    timed = json.loads((DATA / "stats-mi-iwae-dense16.time.json").read_text())
    page = " ".join((ROOT / "docs" / "guide" / "measures.md").read_text().split())
    mi, bounds = stats["mutual_information"], stats["iwae_bound"]["bounds"]
    active = [v["active"] for v in stats["variables"]]
    on = [p for p, a in zip(mi["per_variable"], active, strict=True) if a]
    off = [p for p, a in zip(mi["per_variable"], active, strict=True) if not a]
    values = ", ".join(f"{bounds[k]['log_likelihood_bound']:.2f}" for k in ("1", "10", "100", "1000"))
    phrases = [
        f"**I(x; z) = {mi['joint']:.2f} nats** (standard error {mi['joint_standard_error']:.3f}) against its "
        f"ceiling of {mi['log_n_upper_bound']:.2f}",
        f"it gives {min(on):.2f} to {max(on):.2f} nats for the {len(on)} active variables and at most "
        f"{max(off):.4f} for the {len(off)} inactive ones (sum {mi['per_variable_sum']:.1f} nats",
        f"gives {values.replace(', -112', ' and -112')} nats for K = 1, 10, 100, 1000",
        f"| the whole command | **{timed['wall_seconds']:.0f} s** |",
        f"(joint {mi['joint']:.2f} nats, standard error {mi['joint_standard_error']:.3f}, ceiling log N = "
        f"{mi['log_n_upper_bound']:.2f}) | **{mi['seconds']:.1f} s** |",
        f"({values} nats, grey levels) | **{stats['iwae_bound']['seconds']:.0f} s** |",
        f"at commit {timed['commit']} on {timed['date']}",
    ]
    assert [p for p in phrases if p not in page] == []
