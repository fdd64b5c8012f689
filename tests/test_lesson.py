"""The lesson: each statement on statistics whose answer is known (constructed by hand, the exact optimum of a
linear VAE from probabilistic PCA, and a tiny run trained with a KL weight that collapses every variable)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vaescope.core import config as config_mod
from vaescope.measures.lesson import LAW_TOLERANCE, lesson
from vaescope.measures.oracle import optimal_encoder
from vaescope.measures.statistics import LatentStatistics, latent_statistics


def made(mu_variance, sigma2_mean) -> LatentStatistics:
    mu_variance, sigma2_mean = np.asarray(mu_variance, float), np.asarray(sigma2_mean, float)
    zeros = np.zeros_like(mu_variance)
    kl = 0.5 * (mu_variance + sigma2_mean - np.log(sigma2_mean) - 1)  # the KL of mean-zero codes
    return LatentStatistics(100, zeros, mu_variance, sigma2_mean, np.log(sigma2_mean), kl)


def test_inactive_variables_point_to_prune_with_the_numbers():
    said = lesson(made([0.9, 0.7, 0.001, 0.002], [0.1, 0.3, 0.999, 0.998]))
    assert said.keys == ("inactive", "law-holds")
    text = said.statements[0].text
    assert "2 of 4 latent variables are inactive (Var(mu) < 0.01; the largest among them is 0.002)" in text
    assert "variables 2, 3" in text and "`vaescope prune`" in text and "smaller model of 2 variables" in text
    assert said.statements[1].numbers["max_abs_deviation"] == pytest.approx(0.0, abs=1e-12)
    assert f"within {LAW_TOLERANCE:g}" in said.statements[1].text


def test_none_inactive_points_to_a_sweep_over_the_latent_size():
    said = lesson(made([0.7, 0.8], [0.3, 0.2]))
    assert said.keys == ("all-active", "law-holds")
    assert "All 2 latent variables are active (the smallest Var(mu) is 0.7 >= 0.01)" in said.statements[0].text
    assert "model.latent_dim" in said.statements[0].text


@pytest.mark.parametrize("beta, warmup, reason", [
    (None, None, "has not converged, or the KL term is weighted (beta != 1, or a KL warm-up"),
    (4.0, None, "the KL term is weighted (beta = 4, not 1)"),
    (1.0, 0.15, "a KL warm-up is still under way (15% done"),
    (1.0, 1.0, "has not converged (the KL weight is beta = 1, with no warm-up)"),
])
def test_a_law_far_from_one_says_why_it_may_be(beta, warmup, reason):
    # sums 0.5 and 0.501: the largest deviation is 0.5, at variable 0
    said = lesson(made([0.3, 0.001], [0.2, 0.5]), beta=beta, warmup=warmup)
    law = said.statements[1]
    assert law.key == "law-off" and reason in law.text
    assert "the largest |Var(mu) + mean sigma^2 - 1| is 0.5 (variable 0, sum 0.5), above 0.2" in law.text


def test_variables_in_between_are_named_with_the_margin():
    # Var(mu) 0.02: active, but within half a decade of 0.01 (0.0316): neither clearly on nor off
    said = lesson(made([0.98, 0.02, 0.001], [0.02, 0.98, 0.999]))
    between = said.statements[-1]
    assert between.key == "between" and between.numbers["variables"] == [1]
    assert "1 variable(s) are in between (1)" in between.text and "3.2x" in between.text


class LinearVAE(nn.Module):
    """mu = A x, fixed posterior variances, decoder W z: the exact optimum for the data's spectrum."""

    def __init__(self, a: np.ndarray, variances: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("a", torch.as_tensor(a))
        self.register_buffer("logvar", torch.as_tensor(np.log(variances)))

    def encode(self, x):
        mu = x.double() @ self.a.T
        return mu, self.logvar.expand_as(mu)


def test_the_exact_linear_optimum_has_its_closed_form_lesson():
    # x ~ N(0, diag(4, 2, 0.05, 0.05)), decoder variance 0.2: active iff lambda_j > 0.2 (Lucas et al.)
    rng = np.random.default_rng(0)
    eigenvalues = np.array([4.0, 2.0, 0.05, 0.05])
    x = rng.normal(size=(20000, 4)) * np.sqrt(eigenvalues)
    a, variances = optimal_encoder(np.eye(4), eigenvalues, sigma2=0.2)
    said = lesson(latent_statistics(LinearVAE(a, variances), x, batch_size=5000), beta=1.0, warmup=1.0)
    assert said.keys == ("inactive", "law-holds")
    assert said.statements[0].numbers["variables"] == [2, 3]  # the two directions below sigma^2
    assert said.statements[1].numbers["max_abs_deviation"] < 0.05  # the law holds exactly, up to sampling


def test_a_run_trained_with_a_heavy_kl_weight_collapses_and_says_so(tiny_npz, tmp_path):
    from vaescope.measures.run import run_measures
    from vaescope.training.train import train

    cfg = config_mod.resolve("dense16", overrides=[
        "model.hidden=[32, 16]", "model.latent_dim=4", "train.epochs=3", "train.batch_size=64", "train.threads=1",
        "train.trace_subset=64", "loss.beta=50", f"data.source={tiny_npz}"])
    train(cfg, tmp_path / "run", progress=False)
    result = run_measures(tmp_path / "run", write=False)
    said = result.lesson
    # beta = 50 > any eigenvalue of 8x8 images in [0, 1] over the decoder's noise: every variable collapses
    assert result.stats.inactive_count == 4
    assert said.statements[0].key == "inactive" and "4 of 4 latent variables are inactive" in said.statements[0].text
    assert result.to_dict()["lesson"]["text"] == said.text()


def sweep_row(run, latent_dim, active, dev, beta=None):
    row = {"run": run, "latent_dim": latent_dim, "active_mu_variance": active, "variance_law_max_abs_dev": dev,
           "status": "trained"}
    if beta is not None:
        row["loss.beta"] = beta
    return row


def test_the_sweep_lesson_from_its_rows():
    from vaescope.measures.lesson import sweep_lesson

    rows = [sweep_row("d2", 2, 2, 0.05), sweep_row("d4", 4, 4, 0.08), sweep_row("d8", 8, 5, 0.31),
            sweep_row("d16", 16, 5, 0.1), {"run": "bad", "status": "failed"}]
    said = sweep_lesson(rows)
    assert said.keys == ("inactive", "all-active", "law-off")
    assert said.statements[0].text.startswith("2 of 4 runs have inactive variables (Var(mu) < 0.01), from latent size 8")
    assert "up to latent size 4" in said.statements[1].text and said.statements[1].numbers["reached"] is True
    assert "at most 0.31, run d8" in said.statements[2].text and "train longer" in said.statements[2].text
    only_full = sweep_lesson([sweep_row("d2", 2, 2, 0.05), sweep_row("d3", 3, 3, 0.5, beta=4.0)])
    assert "no latent size of the sweep (2, 3) leaves a variable inactive" in only_full.statements[0].text
    assert "beta = 4" in only_full.statements[1].text


def test_the_sweep_report_ends_with_the_lesson_of_its_own_rows(tiny_npz, tmp_path):
    import json

    from conftest import TINY_OVERRIDES

    from vaescope.measures.lesson import sweep_lesson
    from vaescope.sweeps.execute import sweep

    cfg = config_mod.resolve("dense16", overrides=[*TINY_OVERRIDES, "train.epochs=1", f"data.source={tiny_npz}"])
    sweep(cfg, tmp_path, {"model.latent_dim": [2, 4]}, seeds=1, workers=1, threads=1, progress=False)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    text = (tmp_path / "report.md").read_text()
    tail = text[text.index('<a id="lesson"></a>'):]
    for statement in sweep_lesson(saved["rows"]).statements:  # the words come from sweep.json's rows
        assert statement.text in tail
