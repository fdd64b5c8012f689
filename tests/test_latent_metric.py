"""vaescope.integrations.metric: the torchmetrics Metric gives latent_statistics' numbers, batch by batch, across
processes (a real gloo DDP reduction), and stays stable where naive sums of squares are not."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vaescope.core.config import StatsConfig
from vaescope.core.errors import VaescopeError
from vaescope.integrations.metric import LatentStatisticsMetric, merge_moments
from vaescope.measures.statistics import LatentStatistics, latent_statistics
from vaescope.models.adapters import as_latent_model

D = 6
FIELDS = ("mu_mean", "mu_variance", "sigma2_mean", "log_sigma2_mean", "kl_mean")
# float64 accumulation of float32 encodings on both sides; observed bit-identical, asserted to 1e-12 relative
RTOL = 1e-12


def encodings(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) (n, D) float32; variables 4 and 5 nearly constant (inactive at threshold 0.01)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, D, generator=g) + torch.arange(D, dtype=torch.float32)
    mu[:, 4:] = 0.3 + 0.01 * mu[:, 4:]
    logvar = 0.5 * torch.randn(n, D, generator=g) - torch.linspace(2, 0, D)
    return mu, logvar


def reference(mu: torch.Tensor, logvar: torch.Tensor, batch_size: int) -> LatentStatistics:
    """latent_statistics through a functions adapter whose encoder returns the stored encodings."""
    model = as_latent_model(encode_fn=lambda x: (x[:, :D], x[:, D:]))
    return latent_statistics(model, torch.cat([mu, logvar], 1), batch_size=batch_size)


def assert_same(a: LatentStatistics, b: LatentStatistics) -> None:
    assert a.n == b.n
    for name in FIELDS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=RTOL, atol=0, err_msg=name)
    assert np.array_equal(a.active, b.active) and np.array_equal(a.inactive_by_kl, b.inactive_by_kl)


def test_equals_latent_statistics_on_the_same_encodings():
    mu, logvar = encodings()
    metric = LatentStatisticsMetric(D)
    for start in range(0, len(mu), 50):
        metric.update(mu[start : start + 50], logvar[start : start + 50])
    ours, theirs = metric.statistics(), reference(mu, logvar, batch_size=50)
    assert_same(ours, theirs)
    assert ours.active.tolist() == [True] * 4 + [False] * 2  # the mask is not trivially all True
    values = metric.compute()
    assert int(values["n"]) == 120
    np.testing.assert_allclose(values["variance_law"].numpy(), theirs.variance_law, rtol=RTOL, atol=0)
    assert values["active"].tolist() == theirs.active.tolist()
    # population variance (ddof 0), as latent_statistics: against numpy directly
    np.testing.assert_allclose(ours.mu_variance, np.var(mu.double().numpy(), axis=0, ddof=0), rtol=1e-10)


def test_several_batches_equal_one_batch_and_forward_accumulates():
    mu, logvar = encodings(90, seed=1)
    one = LatentStatisticsMetric(D)
    one.update(mu, logvar)
    many = LatentStatisticsMetric(D)
    bounds = (0, 1, 8, 38, 90)  # uneven batches of 1, 7, 30 and 52 rows
    for start, stop in itertools.pairwise(bounds):
        many.update(mu[start:stop], logvar[start:stop])
    assert_same(many.statistics(), one.statistics())
    stepped = LatentStatisticsMetric(D)
    batch_value = stepped(mu[:40], logvar[:40])  # forward: this batch's value, and accumulates
    assert int(batch_value["n"]) == 40
    stepped(mu[40:], logvar[40:])
    assert_same(stepped.statistics(), one.statistics())
    half_a, half_b = LatentStatisticsMetric(D), LatentStatisticsMetric(D)
    half_a.update(mu[:33], logvar[:33])
    half_b.update(mu[33:], logvar[33:])
    half_a.merge_state(half_b)
    assert_same(half_a.statistics(), one.statistics())


def test_reset_and_compute_before_update():
    mu, logvar = encodings(40, seed=2)
    metric = LatentStatisticsMetric(D, thresholds=StatsConfig(mu_variance_threshold=0.5))
    metric.update(*encodings(10, seed=9))
    metric.reset()
    metric.update(mu, logvar)
    fresh = LatentStatisticsMetric(D)
    fresh.update(mu, logvar)
    assert_same(metric.statistics(), fresh.statistics())
    assert metric.statistics().thresholds.mu_variance_threshold == 0.5
    metric.reset()
    with warnings.catch_warnings():  # torchmetrics warns that compute runs before update
        warnings.simplefilter("ignore")
        with pytest.raises(VaescopeError, match="no encodings yet"):
            metric.compute()


def test_variance_is_stable_where_naive_sums_of_squares_cancel():
    g = torch.Generator().manual_seed(3)
    mu = 1e8 + torch.randn(1000, 2, generator=g, dtype=torch.float64)  # |mean| / std = 1e8
    metric = LatentStatisticsMetric(2)
    for start in range(0, 1000, 100):
        metric.update(mu[start : start + 100], torch.zeros(100, 2, dtype=torch.float64))
    exact = np.var(mu.numpy() - 1e8, axis=0)  # two-pass on the centred values: the known answer
    np.testing.assert_allclose(metric.statistics().mu_variance, exact, rtol=1e-6)
    # control: the float64 sum / sum-of-squares reduction gets it badly wrong
    naive = (mu.square().sum(0) / 1000 - (mu.sum(0) / 1000).square()).numpy()
    assert np.abs(naive - exact).max() > 0.1


def test_merge_moments_of_an_empty_side_and_latent_maps():
    empty = torch.zeros(3, 2, dtype=torch.float64)
    some = torch.tensor([[3.0, 3.0], [1.0, 2.0], [4.0, 5.0]], dtype=torch.float64)
    assert torch.equal(merge_moments(torch.stack([empty, some])), some)
    assert torch.equal(merge_moments(torch.stack([some, empty, empty])), some)
    mu, logvar = encodings(20, seed=4)
    flat, maps = LatentStatisticsMetric(D), LatentStatisticsMetric(D)
    flat.update(mu, logvar)
    maps.update(mu.reshape(20, 2, 3, 1), logvar.reshape(20, 2, 3, 1))  # flattened row-major
    assert_same(maps.statistics(), flat.statistics())


def test_bad_updates():
    metric = LatentStatisticsMetric(D)
    for mu, logvar in ((torch.zeros(4, D + 1), torch.zeros(4, D + 1)), (torch.zeros(4, D), torch.zeros(4, D - 1)),
                       (torch.zeros(D), torch.zeros(D))):
        with pytest.raises(VaescopeError) as excinfo:
            metric.update(mu, logvar)
        assert "\n" not in str(excinfo.value) and "latent_dim=" in str(excinfo.value)
    with pytest.raises(VaescopeError, match="latent_dim="):
        LatentStatisticsMetric(0)


# ---------------------------------------------------------------------------- a real DDP reduction

SPLIT = 47  # rank 0 gets 47 rows, rank 1 the other 73: an uneven split tests the weights of the merge


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mu, logvar = encodings()
        rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
        synced = LatentStatisticsMetric(D)
        local = LatentStatisticsMetric(D, sync_on_compute=False)
        for metric in (synced, local):
            metric.update(mu[rows], logvar[rows])
        result = {"synced": synced.compute(), "local": local.compute(),
                  "after": int(synced.moments[0, 0])}  # the rank's own state is back after the synced compute
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_reduce_to_the_whole(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    mu, logvar = encodings()
    whole = LatentStatisticsMetric(D)
    whole.update(mu, logvar)
    expected = whole.compute()
    for rank, own in ((0, SPLIT), (1, 120 - SPLIT)):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        synced, local = result["synced"], result["local"]
        assert int(synced["n"]) == 120 and result["after"] == own
        for name in FIELDS + ("variance_law",):
            torch.testing.assert_close(synced[name], expected[name], rtol=RTOL, atol=0)
        assert torch.equal(synced["active"], expected["active"])
        # control: without the reduction each rank sees its own rows only
        assert int(local["n"]) == own
        assert not torch.allclose(local["mu_variance"], expected["mu_variance"], rtol=1e-3)


# ---------------------------------------------------------------------------- torchmetrics stays optional

def test_importing_vaescope_does_not_import_torchmetrics():
    code = ("import sys, vaescope, vaescope.data.batches, vaescope.models.likelihoods, vaescope.models.isolation, "
            "vaescope.measures.statistics; print('torchmetrics' in sys.modules); "
            "metric = vaescope.LatentStatisticsMetric; print('torchmetrics' in sys.modules); "
            "import vaescope.integrations.metric as m; print(metric is m.LatentStatisticsMetric)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    # the public name is lazy: torchmetrics comes in when it is first used (the control: the check sees it)
    assert out.stdout.split() == ["False", "True", "True"]
