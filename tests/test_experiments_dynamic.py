"""The dynamic experiments (noise collapse, 3-D KL ablation, 2-D trajectories) on tiny models."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, LogLines
from matplotlib.figure import Figure
from PIL import Image

from vaescope.core import config as config_mod
from vaescope.core.config import LossConfig, StatsConfig
from vaescope.core.errors import VaescopeError
from vaescope.data.batches import images_to_device
from vaescope.data.dataset import Dataset
from vaescope.experiments.kl_ablation import (
    KLAblationSettings,
    ablation_arm,
    fit_gaussian,
    gaussian_kl_to_standard,
    mean_nearest_distance,
    prior_levels,
    slice_generations,
)
from vaescope.experiments.noise_collapse import NoiseCollapseSettings, choose_variable, latent_mask_hook, noise_collapse
from vaescope.experiments.trajectories import TrajectorySettings, add_final_layout, pick_per_class, record_trajectories
from vaescope.measures.statistics import latent_statistics
from vaescope.models.networks import DenseVAE
from vaescope.models.objectives import kl_per_variable
from vaescope.reports.figures import dynamics
from vaescope.reproduce import dynamics as reproduce_dynamics
from vaescope.reproduce import make_settings, reproduce
from vaescope.runs.checkpoint import load_run
from vaescope.training.engine import make_optimizer, train_epoch

TINY = ["model.hidden=[32, 16]", "train.batch_size=64", "train.threads=1"]


def tiny_model(dataset: Dataset, latent_dim: int, epochs: int, seed: int = 0) -> DenseVAE:
    torch.manual_seed(seed)
    model = DenseVAE(dataset.image_shape, (32, 16), latent_dim)
    optimizer = make_optimizer(model, 3e-3)
    x = images_to_device(dataset.x_train, torch.device("cpu"))
    shuffle, noise = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    for _ in range(epochs):
        train_epoch(model, optimizer, x, LossConfig(), 64, shuffle, noise)
    return model.eval()


# ---------------------------------------------------------------------------- Gaussian fit and coverage

def test_gaussian_kl_is_zero_for_the_prior_and_matches_the_per_variable_kl_when_diagonal():
    assert gaussian_kl_to_standard(np.zeros(3), np.eye(3)) == pytest.approx(0.0, abs=1e-15)
    mean, var = np.array([0.5, -1.0, 2.0]), np.array([0.3, 1.7, 0.01])
    expected = kl_per_variable(torch.tensor(mean), torch.tensor(np.log(var))).sum().item()
    assert gaussian_kl_to_standard(mean, np.diag(var)) == pytest.approx(expected, rel=1e-12)


def test_gaussian_kl_is_rotation_invariant_for_a_centred_gaussian_and_infinite_when_singular():
    # N(0, R diag(v) R^T) is N(0, diag(v)) seen in rotated axes; N(0, I) does not change.
    angle = 0.7
    rotation = np.array([[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
    v = np.array([4.0, 0.25, 1.0])
    diagonal = gaussian_kl_to_standard(np.zeros(3), np.diag(v))
    assert diagonal == pytest.approx(0.5 * (v.sum() - 3 - np.log(v).sum()))
    assert gaussian_kl_to_standard(np.zeros(3), rotation @ np.diag(v) @ rotation.T) == pytest.approx(diagonal)
    assert gaussian_kl_to_standard(np.zeros(2), np.array([[1.0, 1.0], [1.0, 1.0]])) == math.inf


def test_fit_gaussian_known_answer():
    codes = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]]) + [3.0, -1.0]
    mean, cov = fit_gaussian(codes)
    np.testing.assert_allclose(mean, [3.0, -1.0])
    np.testing.assert_allclose(cov, np.diag([0.5, 2.0]))


def test_mean_nearest_distance_known_answers_and_chunking():
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((300, 3))
    assert mean_nearest_distance(queries, queries) == pytest.approx(0.0, abs=1e-12)
    # A single point at the origin: the mean norm of the queries.
    assert mean_nearest_distance(queries, np.zeros((1, 3)), chunk=7) == pytest.approx(
        np.linalg.norm(queries, axis=1).mean(), rel=1e-12)
    # Points on the integer lattice, queries 0.3 away from a lattice point along x: 0.3 exactly.
    lattice = np.stack(np.meshgrid(*[np.arange(-3, 4)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    near = lattice[rng.integers(0, len(lattice), 200)] + [0.3, 0.0, 0.0]
    assert mean_nearest_distance(near, lattice, chunk=33) == pytest.approx(0.3, rel=1e-12)
    with pytest.raises(ValueError):
        mean_nearest_distance(np.zeros((0, 3)), lattice)


def test_prior_levels_are_equal_probability_quantiles():
    levels = prior_levels(5)
    np.testing.assert_allclose(levels, -levels[::-1], atol=1e-12)
    assert levels[2] == pytest.approx(0.0, abs=1e-12)
    assert levels[3] == pytest.approx(0.5244, abs=1e-4)  # Phi^-1(0.7)


class CoordinateDecoder(torch.nn.Module):
    """decode(z) puts logit(z_k / 10 + 0.5) in pixel (0, k): the image tells which z made it."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def decode(self, z):
        images = torch.full((len(z), 1, 4, 4), -30.0)
        images[:, 0, 0, :3] = torch.logit(z / 10 + 0.5)
        return images


def test_slice_generations_put_z3_in_slices_z2_in_rows_upwards_and_z1_in_columns():
    levels = np.array([-1.0, 0.0, 2.0])
    images = slice_generations(CoordinateDecoder(), levels)
    assert images.shape == (3, 3, 3, 4, 4)
    z = (images[..., 0, :3] - 0.5) * 10  # (s, r, c, 3)
    for s in range(3):
        for r in range(3):
            for c in range(3):
                np.testing.assert_allclose(z[s, r, c], [levels[c], levels[2 - r], levels[s]], atol=1e-4)


def test_ablation_arm_on_a_tiny_3d_model(tiny_dataset):
    model = tiny_model(tiny_dataset, 3, epochs=2)
    settings = KLAblationSettings(n_codes=100, n_prior=200, levels=3)
    arm = ablation_arm(model, tiny_dataset.x_test, tiny_dataset.y_test, settings)
    assert arm.codes.shape == (100, 3) and arm.labels.shape == (100,)
    assert arm.generations.shape == (3, 3, 3, 8, 8)
    mean, cov = fit_gaussian(arm.codes)
    assert arm.fitted_kl == pytest.approx(gaussian_kl_to_standard(mean, cov))
    summary = arm.summary()
    # the distances are the nearest-code distance of the arm's own codes and prior samples
    assert summary["nearest_code_distance"] == pytest.approx(arm.nearest_code_distance)
    with pytest.raises(VaescopeError, match="3-D"):
        ablation_arm(tiny_model(tiny_dataset, 2, epochs=0), tiny_dataset.x_test, tiny_dataset.y_test, settings)
    with pytest.raises(VaescopeError, match="labels"):
        ablation_arm(model, tiny_dataset.x_test, None, settings)


# ---------------------------------------------------------------------------- noise collapse

def test_latent_mask_hook_zeroes_silenced_variables_and_adds_noise_of_the_given_std():
    generator = torch.Generator().manual_seed(0)
    z = torch.ones(20000, 4, requires_grad=True)
    out = latent_mask_hook(4, zeroed=[1, 3], variable=2, noise_std=3.0, generator=generator)(z)
    assert torch.all(out[:, [1, 3]] == 0) and torch.all(out[:, 0] == 1)
    assert out[:, 2].mean().item() == pytest.approx(1.0, abs=0.1)
    assert out[:, 2].std().item() == pytest.approx(3.0, rel=0.03)
    out.sum().backward()  # gradients still reach z, but not through the silenced variables
    assert torch.all(z.grad[:, [0, 2]] == 1) and torch.all(z.grad[:, [1, 3]] == 0)


@pytest.fixture(scope="module")
def trained4(tiny_dataset) -> DenseVAE:
    """4 latent variables, 40 short epochs: two clearly active, one inactive, one marginal."""
    return tiny_model(tiny_dataset, 4, epochs=40)


def test_choose_variable_picks_the_active_variable_with_the_smallest_gain(tiny_dataset, trained4):
    x = images_to_device(tiny_dataset.x_test, torch.device("cpu"))
    variable, zeroed, gains = choose_variable(trained4, x, "bernoulli", StatsConfig())
    active = latent_statistics(trained4, x).active
    assert active.sum() >= 2 and not active.all()
    assert active[variable] and variable not in zeroed
    assert sorted(zeroed) == [j for j in range(4) if not active[j]]
    assert gains[variable] == min(gains[j] for j in range(4) if active[j])
    assert np.all(np.abs(gains[zeroed]) == 0)  # zeroed in the baseline too: nothing left to lose
    with pytest.raises(VaescopeError, match="does not exist"):
        choose_variable(trained4, x, "bernoulli", StatsConfig(), variable=9)
    with pytest.raises(VaescopeError, match="already inactive"):
        choose_variable(trained4, x, "bernoulli", StatsConfig(), variable=zeroed[0])


@pytest.fixture(scope="module")
def collapse_result(tiny_dataset, trained4):
    x = images_to_device(tiny_dataset.x_test, torch.device("cpu"))
    strongest = int(np.argmax(choose_variable(trained4, x, "bernoulli", StatsConfig())[2]))
    before = [p.detach().clone() for p in trained4.parameters()]
    # Steps of 2 up to std 24: the strongest variable (gain ~11 nats, codes of std ~1) gives in
    # gradually, not at the first step, and the loop goes through every phase.
    settings = NoiseCollapseSettings(variable=strongest, noise_step=2.0, max_noise_epochs=12, max_hold_epochs=40,
                                     max_recovery_epochs=30, settle_epochs=1, batch_size=32, lr=3e-3)
    result = noise_collapse(trained4, tiny_dataset.x_train, tiny_dataset.x_test, LossConfig(), settings)
    # The caller's model is untouched.
    assert all(torch.equal(a, b) for a, b in zip(before, trained4.parameters()))
    return result


def test_noise_collapse_loop_on_a_tiny_model(collapse_result):
    result = collapse_result
    rows = result.history
    assert [r["epoch"] for r in rows] == list(range(len(rows)))
    phases = [r["phase"] for r in rows]
    assert phases[0] == "start" and phases == sorted(phases, key=["start", "noise", "hold", "recovery"].index)
    noise = [r for r in rows if r["phase"] == "noise"]
    assert [r["noise_std"] for r in noise] == [2.0 * (i + 1) for i in range(len(noise))]
    assert len(noise) == 12 and [r["gain"] for r in noise][-1] < 0.2 * rows[0]["gain"]  # raised to the limit
    # Raising stopped at the first epoch where gain < KL (or collapse), or at the limit.
    for r in noise[:-1]:
        assert r["gain"] >= r["kl"] and not r["collapsed"]
    assert all(r["noise_std"] == result.noise_at_stop for r in rows if r["phase"] == "hold")
    assert all(r["noise_std"] == 0.0 for r in rows if r["phase"] == "recovery")
    assert 0 < len([r for r in rows if r["phase"] == "recovery"]) <= 30
    assert result.gain_before == rows[0]["gain"] and result.gain_after == rows[-1]["gain"]
    assert result.recovered_fraction == pytest.approx(result.gain_after / result.gain_before)
    # Held at std 24, the variable collapses after some epochs of hold, not at once.
    assert result.gain_before > 1 and result.collapsed
    at = rows[result.collapse_epoch]
    assert at["mu_variance"] < 0.01 and at["sigma2_mean"] > 0.8 and at["phase"] in ("noise", "hold")
    assert all(not r["collapsed"] for r in rows[: result.collapse_epoch])
    assert rows[result.collapse_epoch]["phase"] == "hold"
    # Without noise it comes back, and stays active for settle_epochs + 1 epochs in a row.
    assert result.recovered and rows[-1]["active"]
    assert all(r["active"] and r["phase"] == "recovery" for r in rows[result.recovery_epoch:])
    assert len(rows[result.recovery_epoch:]) == 2  # settle_epochs + 1: the streak ends the loop
    before = rows[result.recovery_epoch - 1]
    assert before["phase"] != "recovery" or not before["active"]
    payload = result.to_dict()
    assert {"variable", "collapsed", "collapse_epoch", "gain_before", "recovered", "gain_after",
            "recovered_fraction"} <= set(payload)


# ---------------------------------------------------------------------------- trajectories

def test_pick_per_class_is_grouped_deterministic_and_refuses_small_classes():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    picked = pick_per_class(labels, 2, seed=3)
    assert labels[picked].tolist() == [0, 0, 1, 1, 2, 2]
    assert picked.tolist() == pick_per_class(labels, 2, seed=3).tolist()
    with pytest.raises(VaescopeError, match="class 0"):
        pick_per_class(labels, 4)


@pytest.fixture(scope="module")
def tiny_trajectories(tiny_dataset):
    cfg = config_mod.resolve("dense2", overrides=TINY)
    settings = TrajectorySettings(record_epochs=2, record_every=3, epochs=3, final_per_class=2)
    recorded = record_trajectories(cfg, tiny_dataset, settings)
    assert recorded.sigma2_mean_final is None and len(recorded.final_mu) == 0
    return add_final_layout(recorded, tiny_model(tiny_dataset, 2, epochs=3), tiny_dataset, 3, settings)


def test_trajectory_recording_length_and_shapes(tiny_trajectories):
    result = tiny_trajectories
    # 512 images / 64 per batch = 8 steps per epoch; 16 steps recorded every 3, plus step 0 and the last.
    assert result.steps_per_epoch == 8
    assert result.steps.tolist() == [0, 3, 6, 9, 12, 15, 16]
    assert result.mu.shape == result.sigma2.shape == (7, 4, 2)
    assert result.labels.tolist() == [0, 1, 2, 3]
    assert result.final_mu.shape == (8, 2) and result.final_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert result.epochs == 3 and result.sigma2_mean_final == pytest.approx(result.final_sigma2.mean())
    # before training the posterior variance is near the prior's 1 (the KL article: it then shrinks fast)
    assert 0.5 < result.sigma2[0].mean() < 2.0
    summary = result.summary()
    assert summary["frames"] == 7 and summary["sigma2_mean_start"] == pytest.approx(result.sigma2[0].mean())


def test_trajectories_refuse_a_latent_space_that_is_not_2d(tiny_dataset):
    cfg = config_mod.resolve("dense3", overrides=TINY)
    with pytest.raises(VaescopeError, match="2-D"):
        record_trajectories(cfg, tiny_dataset, TrajectorySettings())


# ---------------------------------------------------------------------------- figures

def test_circle_radius_is_the_fourth_root_of_the_product_of_variances():
    np.testing.assert_allclose(dynamics.circle_radius(np.array([[4.0, 1.0], [0.01, 0.01]])), [math.sqrt(2), 0.1])


def test_dynamic_figures_and_animation(tiny_dataset, tiny_trajectories, collapse_result, tmp_path):
    assert len(dynamics.noise_collapse_figure(collapse_result).axes) == 3  # two panels and the noise axis
    model = tiny_model(tiny_dataset, 3, epochs=1)
    settings = KLAblationSettings(n_codes=64, n_prior=64, levels=3)
    arm = ablation_arm(model, tiny_dataset.x_test, tiny_dataset.y_test, settings)
    arms = {"with sampling": arm, "without sampling": arm}
    codes = dynamics.kl_ablation_codes_figure(arms)
    assert isinstance(codes, Figure) and len([a for a in codes.axes if a.name == "3d"]) == 2
    assert len(dynamics.kl_ablation_generations_figure(arms).axes) == 6
    assert len(dynamics.trajectories_figure(tiny_trajectories).axes) == 1
    assert len(dynamics.final_layout_figure(tiny_trajectories).axes) == 1
    path = dynamics.save_animation(dynamics.trajectories_animation(tiny_trajectories), tmp_path / "a.gif", fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == len(tiny_trajectories.steps)
    assert [p.name for p in tmp_path.iterdir()] == ["a.gif"]  # no temporary left behind


# ---------------------------------------------------------------------------- inside reproduce

@pytest.mark.slow  # ~25 s: trains four tiny models and draws every figure twice
def test_reproduce_runs_the_dynamic_steps_and_writes_their_keys(tmp_path, tiny_dataset, tiny_npz):
    overrides = tuple(o for o in TINY_OVERRIDES if not o.startswith("train.epochs")) + ("train.lr=0.003",)
    settings = make_settings(quick=True, seeds=1, overrides=overrides, epochs={"dense16": 30, "dense3": 4},
                             data_source=str(tiny_npz), progress=False)
    reproduce(settings, tmp_path, steps=reproduce_dynamics.steps(settings), dataset=tiny_dataset)
    stored = json.loads((tmp_path / "results.json").read_text())
    collapse = stored["noise_collapse"]
    assert {"variable", "collapsed", "collapse_epoch", "gain_before", "recovered", "gain_after",
            "recovered_fraction"} <= set(collapse)
    assert collapse["gain_before"] == collapse["history"][0]["gain"]
    # The KL of the Gaussian fitted to each arm's codes, recomputed from its stored run.
    for arm, run_name in (("with_sampling", "dense3-seed0"), ("without_sampling", "dense3_no_sampling-seed0")):
        assert stored["kl_ablation"][arm]["model"] == run_name
        model = load_run(tmp_path / "runs" / run_name).model
        n = stored["kl_ablation"][arm]["n_codes"]
        with torch.no_grad():
            codes = model.encode(torch.from_numpy(tiny_dataset.x_test[:n]).float() / 255)[0].double().numpy()
        mean, cov = fit_gaussian(codes)
        assert stored["kl_ablation"][arm]["gaussian_fit_kl"] == pytest.approx(gaussian_kl_to_standard(mean, cov),
                                                                            rel=1e-5)
    trajectories_block = stored["trajectories"]
    assert (tmp_path / trajectories_block["animation"]).is_file()
    assert trajectories_block["epochs"] == 10
    page = (tmp_path / "report.html").read_text()
    assert re.findall(r'<section id="([^"]+)"', page) == ["noise-collapse", "kl-ablation", "trajectories",
                                                                "references"]
    assert "data:image/gif;base64," in page
    # A second run trains nothing new.
    with LogLines() as again:
        reproduce(settings, tmp_path, steps=reproduce_dynamics.steps(settings), dataset=tiny_dataset)
    assert not any(line.startswith("training ") for line in again)
