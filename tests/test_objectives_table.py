"""The objectives x samplers table (vaescope.generative.table): trained and measured on tiny 28x28 bars
(two seeds of every objective on a tiny dense16; conv16's runs are planned alike, test_the_plan...), with the score's features from a
LeNet of fixed random weights (the cached MNIST one is not needed to check the plumbing). Checked: the
report's every number against objectives.json, the resume, the -ELBO's units, and the summary
sentences on hand-made rows whose answer is known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_images
from test_sweep import markdown_rows, markdown_section

from vaescope.cli import main
from vaescope.data.dataset import Dataset
from vaescope.generative.plan import OBJECTIVES, TableSettings, table_runs, table_settings
from vaescope.generative.samplers import SamplerSettings
from vaescope.generative.score import Classifier
from vaescope.generative.table import (
    MEASURES_FILE,
    REPORT_MD,
    RESULTS_JSON,
    negative_elbo,
    objectives_table,
    trained_likelihood,
)
from vaescope.generative.table_report import (
    finding_sentences,
    findings,
    generation_table,
    latent_table,
    markdown_table,
    markdown_tables,
    summarise,
)
from vaescope.measures.bound import importance_weighted_bound
from vaescope.models.classifier import LeNet
from vaescope.runs.checkpoint import WEIGHTS_FILE, load_run
from vaescope.training.two_stage import SecondStageSettings

TINY = ("model.hidden=[32, 16]", "model.latent_dim=4", "model.conv_channels=[4, 8]", "model.conv_dense=16",
        "train.batch_size=32", "train.lr=0.01", "train.trace_subset=64", "train.trace_every=4", "train.threads=1")


@pytest.fixture(scope="module")
def bars28(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, Path]:
    x_train, y_train = make_images(256, 0, side=28)
    x_test, y_test = make_images(128, 1, side=28)
    path = tmp_path_factory.mktemp("bars") / "bars28.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return Dataset("bars28", x_train[:, None], y_train, x_test[:, None], y_test), path


@pytest.fixture(scope="module")
def random_classifier() -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LeNet().eval()
    return Classifier(model, "bars28", {"sha256": "f" * 64, "test_accuracy": 0.25, "seconds": 0.0})


def tiny_settings(source: Path) -> TableSettings:
    return TableSettings(dense_epochs=2, conv_epochs=1, seeds=2, data_source=str(source), overrides=TINY,
                         architectures=("dense16",),
                         samples=32, nearest_k=3, bound_k=4, bound_images=8,
                         sampler=SamplerSettings(components=3, codes=128, gmm_max_iter=20,
                                                 second_stage=SecondStageSettings(hidden=(16,), epochs=2)),
                         mode="test")


@pytest.fixture(scope="module")
def table(bars28, random_classifier, tmp_path_factory) -> tuple[Path, dict, TableSettings]:
    data, source = bars28
    out = tmp_path_factory.mktemp("objectives")
    settings = tiny_settings(source)
    results = objectives_table(settings, out, dataset=data, classifier=random_classifier, progress=False)
    return out, results, settings


def _stats(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1))


def _check_cell(text: str, values: list[float], digits: int) -> None:
    """A ``mean ± spread`` cell against the values it summarises, to its printed decimals (the mean
    alone for one value, "-" for none)."""
    if not values:
        assert text == "-"
        return
    if len(values) == 1:
        assert text == f"{values[0]:.{digits}f}"
        return
    mean, sd = _stats(values)
    shown_mean, shown_sd = (float(part) for part in text.split(" ± "))
    assert shown_mean == pytest.approx(mean, abs=0.51 * 10**-digits)
    assert shown_sd == pytest.approx(sd, abs=0.51 * 10**-digits)


def test_every_number_of_the_report_comes_from_objectives_json(table):
    out, _, settings = table
    saved = json.loads((out / RESULTS_JSON).read_text())
    text = (out / REPORT_MD).read_text()
    runs = saved["runs"]
    assert len(runs) == len(OBJECTIVES) * 2 and saved["provenance"]["torch"] == torch.__version__

    latent = markdown_rows(markdown_section(text, "latent"))
    expected = [("dense16", d) for d in OBJECTIVES.values()]
    assert [(cells[0], cells[1]) for cells in latent] == expected
    for arch, desc, seeds, active, law, variance, likelihood, elbo, bound in latent:
        members = [r for r in runs if r["architecture"] == arch and r["description"] == desc]
        assert int(seeds) == len(members) == 2
        count, dim = active.split(" / ")
        assert int(dim) == members[0]["latent_dim"] == 4
        _check_cell(count, [r["active"] for r in members], 2)
        _check_cell(law, [r["variance_law_max_abs_dev"] for r in members], 3)
        _check_cell(elbo, [r["test_negative_elbo"] for r in members], 1)
        _check_cell(bound, [r["bound"]["negative_log_likelihood"] for r in members], 1)
        assert likelihood == members[0]["likelihood"] == ("bernoulli" if desc == OBJECTIVES[""] else "gaussian")
        if likelihood == "bernoulli":
            assert variance == "-"
        else:
            _check_cell(variance, [r["decoder_variance"] for r in members], 4)

    generation = markdown_rows(markdown_section(text, "generation"))
    assert len(generation) == len(expected) * 3
    for arch, desc, sampler, scored, *scores in generation:
        members = [r for r in runs if r["architecture"] == arch and r["description"] == desc and r["samplers"][sampler]]
        assert scored == f"{len(members)} of 2" and (sampler != "prior" or len(members) == 2)
        for shown, score in zip(scores, ("frechet_distance", "precision", "recall", "density", "coverage"), strict=True):
            _check_cell(shown, [r["samplers"][sampler][score] for r in members], 2 if score == "frechet_distance" else 3)

    words = " ".join(markdown_section(text, "findings").split())
    sentences = finding_sentences(saved["findings"])
    assert len(sentences) == 2 + 2 + 1 and all(s in words for s in sentences)
    assert saved["findings"] == findings(runs)  # the stored findings are those of the stored runs
    intro = text.split("\n\n")[1]
    assert (f"K = {settings.bound_k}, on the first {settings.bound_images} test images" in intro
            and f"{settings.samples} samples of each sampler against the first {settings.samples} test images" in intro)
    assert f"{saved['settings']['sampler']['gmm']['components']} components" in intro
    # what the docs page pastes (markdown_tables) is what the report shows
    tables = [markdown_table(latent_table(saved)), markdown_table(generation_table(saved))]
    assert all(t in text for t in tables) and markdown_tables(saved) == "\n\n".join(tables)
    stages = " ".join(markdown_section(text, "time").split())
    assert f"training {saved['stages']['training']:.1f} s" in stages


def test_the_findings_agree_with_the_runs(table):
    """The verdicts, recomputed here from the raw numbers of each run."""
    _, results, _ = table
    runs = results["runs"]
    for f in results["findings"]["samplers"]:
        members = [r for r in runs if r["architecture"] == f["architecture"] and r["samplers"][f["sampler"]]]
        unfitted = [r for r in runs if r["architecture"] == f["architecture"] and f["sampler"] in r["unfitted"]]
        assert f["unfitted_runs"] == len(unfitted) and all(r["active"] == 0 for r in unfitted)
        better = sum(r["samplers"][f["sampler"]]["frechet_distance"] < r["samplers"]["prior"]["frechet_distance"]
                     for r in members)
        assert (f["better"], f["runs"]) == (better, len(members))
    for f in results["findings"]["balancing"]:
        counts = {key: [r["active"] for r in runs if r["architecture"] == f["architecture"] and r["objective"] == key]
                  for key in ("_balanced", f["against"])}
        assert f["balanced_active"]["values"] == counts["_balanced"] and f["plain_active"]["values"] == counts[f["against"]]


def test_the_elbo_is_in_nats_per_image_of_the_runs_own_likelihood(table, bars28):
    """metrics.csv's test loss with the Gaussian constant put back is the Monte Carlo -ELBO of the run's
    own likelihood (K = 1 of the bound, other noise) over the same test images; without the constant
    (392 log(pi) = 449 nats at 28x28) it would be far off."""
    out, results, _ = table
    data, _ = bars28
    constant = 0.5 * 784 * math.log(math.pi)
    assert negative_elbo(10.0, "gaussian", (1, 28, 28)) == pytest.approx(10.0 + constant)
    assert negative_elbo(10.0, "bernoulli", (1, 28, 28)) == 10.0
    for row in results["runs"]:
        if row["seed"] != 0 or row["objective"] == "_sigma":  # _sigma's test loss uses each test batch's own MSE
            continue
        run = load_run(out / row["run"])
        bound = importance_weighted_bound(run.model, data.x_test, (1,), likelihood=trained_likelihood(run), seed=5)
        assert -bound.bound(1) == pytest.approx(row["test_negative_elbo"], abs=3.0), row["run"]


def test_a_second_invocation_trains_and_measures_nothing_again(table, random_classifier, bars28):
    out, first, settings = table
    data, _ = bars28
    files = sorted(out.glob(f"runs/*/{WEIGHTS_FILE}")) + sorted(out.glob(f"runs/*/{MEASURES_FILE}"))
    assert len(files) == 2 * 10
    before = {p: p.stat().st_mtime_ns for p in files}
    again = objectives_table(settings, out, dataset=data, classifier=random_classifier, progress=False)
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert again["counts"] == {"trained": 0, "reused": 10, "measured": 0, "measures_reused": 10}
    assert again["runs"] == first["runs"]
    # the control: a run whose measures are gone is measured again, and only that one
    (out / "runs" / "dense16_balanced-seed1" / MEASURES_FILE).unlink()
    third = objectives_table(settings, out, dataset=data, classifier=random_classifier, progress=False)
    assert third["counts"] == {"trained": 0, "reused": 10, "measured": 1, "measures_reused": 9}


def _run(arch: str, objective: str, seed: int, active: int, fd: dict[str, float]) -> dict:
    scores = {k: {"frechet_distance": v, "precision": 0.5, "recall": 0.5, "density": 1.0, "coverage": 0.5}
              for k, v in fd.items()}
    return {"architecture": arch, "objective": objective, "description": OBJECTIVES[objective], "seed": seed,
            "likelihood": "bernoulli" if objective == "" else "gaussian", "latent_dim": 16, "active": active,
            "variance_law_max_abs_dev": 0.1, "decoder_variance": None if objective == "" else 0.01,
            "test_negative_elbo": 100.0, "bound": {"negative_log_likelihood": 95.0}, "samplers": scores}


def _table(balanced: list[int], plain: list[int], gmm: list[float], prior: float = 20.0) -> list[dict]:
    runs = []
    for objective in OBJECTIVES:
        for seed in range(3):
            active = balanced[seed] if objective == "_balanced" else plain[seed]
            fitted = gmm[seed] if objective == "_balanced" else prior + 1.0
            runs.append(_run("dense16", objective, seed, active, {"prior": prior, "gmm": fitted, "two-stage": prior - 2.0}))
    return runs


def test_the_sentences_flip_with_the_numbers():
    """Hand-made rows whose answers are known: balancing raises, lowers, keeps or blurs the active count;
    the mixture beats the prior in every, no or some runs; the lowest Frechet distance is found."""
    more = findings(_table([9, 10, 9], [6, 7, 6], [15.0, 15.0, 15.0]))
    text = " ".join(finding_sentences(more))
    assert [f["verdict"] for f in more["balancing"]] == ["more", "more"]
    assert ("On dense16, balancing (Asperti & Trentin 2020) raised the active count: 9.33 ± 0.58 active variables "
            "of 16 against 6.33 ± 0.58 with the plain ELBO, Bernoulli decoder, more in every seed (9 to 10 against "
            "6 to 7).") in text
    assert "the Gaussian mixture beat the prior on Frechet distance in 3 of 15 runs (mean Frechet distance 19.8 " \
           "against 20)" in text
    assert "the second stage beat the prior on Frechet distance in every run (15 of 15; mean Frechet distance " \
           "18 against 20)" in text
    assert ("The lowest Frechet distance on dense16: balanced (Asperti & Trentin 2020) with the Gaussian mixture, "
            "15.00 ± 0.00.") in text

    fewer = findings(_table([3, 4, 3], [6, 7, 6], [25.0, 25.0, 25.0]))
    assert [f["verdict"] for f in fewer["balancing"]] == ["fewer", "fewer"]
    text = " ".join(finding_sentences(fewer))
    assert "balancing (Asperti & Trentin 2020) lowered the active count: 3.33 ± 0.58" in text
    assert "the Gaussian mixture beat the prior on Frechet distance in no run (0 of 15" in text
    assert "The lowest Frechet distance on dense16: ELBO, Bernoulli decoder with the second stage, 18.00 ± 0.00." in text

    same = findings(_table([6, 6, 6], [6, 6, 6], [15.0, 15.0, 15.0], prior=10.0))
    assert "left the active count as it was: 6.00 ± 0.00 active variables of 16 against 6.00 ± 0.00" in \
           " ".join(finding_sentences(same))
    overlapping = findings(_table([5, 7, 6], [6, 6, 6], [15.0, 15.0, 15.0]))
    assert ("did not change the active count beyond the spread over seeds: 6.00 ± 1.00 active variables of 16 "
            "against 6.00 ± 0.00 with the plain ELBO, Bernoulli decoder (seeds: 5 to 7 against 6).") in \
           " ".join(finding_sentences(overlapping))
    every = findings([_run("conv16", o, s, 3, {"prior": 9.0, "gmm": 8.0}) for o in OBJECTIVES for s in range(2)])
    assert [(f["sampler"], f["verdict"], f["better"]) for f in every["samplers"]] == [("gmm", "every", 10)]


def test_one_seed_has_no_spread_and_rows_keep_the_runs_order():
    rows = summarise([_run("dense16", o, 0, 4, {"prior": 3.0}) for o in OBJECTIVES])
    assert [r["objective"] for r in rows] == list(OBJECTIVES)
    assert rows[0]["active"] == {"mean": 4.0, "spread": None, "values": [4.0]}


def test_the_plan_and_the_quick_setting():
    full, quick = table_settings(), table_settings(quick=True, seeds=2)
    assert (full.seeds, quick.seeds, quick.mode) == (3, 2, "quick")
    assert quick.samples < full.samples and quick.dense_epochs < full.dense_epochs
    runs = table_runs(full, Path("out"))
    assert len(runs) == 2 * 5 * 3 and len({r.directory for r in runs}) == len(runs)
    assert runs[0].directory == Path("out/runs/dense16-seed0") and runs[-1].config.name == "conv16_learned_sigma"
    assert {r.config.train.epochs for r in runs if r.architecture == "conv16"} == {full.conv_epochs}


def test_the_command_refuses_data_the_score_cannot_read_before_training(bars28, tmp_path):
    _, source = bars28
    result = CliRunner().invoke(main, ["objectives", "--quick", "--data", str(source), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "trained on mnist or fashion-mnist" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "o" / "runs").exists()
    helptext = " ".join(CliRunner().invoke(main, ["objectives", "--help"]).output.split())
    assert "Asperti and M. Trentin" in helptext and "Dai and D. Wipf" in helptext and "Rybkin" in helptext


def test_the_docs_page_shows_the_measured_table_or_says_it_is_to_be_measured():
    """docs/results/objectives.md holds the tables rendered from docs/results/data/objectives.json once that
    file is there; until then it says the section is to be filled from a measured run (and shows no table)."""
    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "results" / "objectives.md").read_text()
    measured = root / "docs" / "results" / "data" / "objectives.json"
    section = page.split("## The measured table", 1)[1]
    if not measured.is_file():
        assert "To be filled from a measured run" in section and "| architecture |" not in section
        return
    data = json.loads(measured.read_text())
    assert markdown_tables(data) in section
    assert all(sentence in " ".join(section.split()) for sentence in finding_sentences(data["findings"]))
