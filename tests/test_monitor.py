"""LatentMonitor: known collapse/revival events, the run-format trace, TensorBoard read back,
modes and gradients untouched, NaN and bad probes."""

import csv
import json
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from vaescope.bench.monitor import measure_overhead
from vaescope.core.errors import VaescopeError
from vaescope.integrations.monitor import EVENTS_FILE, LatentMonitor
from vaescope.runs.files import TRACE_FILE, Trace, read_trace

LOG_SIGMA2 = math.log(0.1)


class Switchable(nn.Module):
    """Two latent variables read from the first two pixels: mu_j = pixel_j, sigma_j^2 = 0.1.
    With ``alive = False`` variable 1 collapses to the prior: mu = 0, sigma^2 = 1 for every input."""

    def __init__(self) -> None:
        super().__init__()
        self.alive = True
        self.scale = nn.Parameter(torch.ones(()))

    def encode(self, x):
        mu = x.flatten(1)[:, :2].double() * self.scale
        logvar = torch.full_like(mu, LOG_SIGMA2)
        if not self.alive:
            mu = torch.cat([mu[:, :1], torch.zeros_like(mu[:, 1:])], 1)
            logvar = torch.cat([logvar[:, :1], torch.zeros_like(logvar[:, 1:])], 1)
        return mu, logvar


@pytest.fixture()
def probe() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.tensor(rng.uniform(0, 1, size=(200, 1, 4, 4)), dtype=torch.float32)


def by_hand(probe: torch.Tensor, alive: bool) -> tuple[np.ndarray, np.ndarray]:
    """Var(mu) and mean sigma^2 of Switchable on the probe, with numpy."""
    pixels = probe.double().numpy().reshape(len(probe), -1)[:, :2]
    variance = pixels.var(0)
    sigma2 = np.array([0.1, 0.1])
    if not alive:
        variance[1], sigma2[1] = 0.0, 1.0
    return variance, sigma2


def run_switching(monitor: LatentMonitor, model: Switchable, steps: int = 13) -> None:
    """Variable 1 collapses at step 5 and comes back at step 9."""
    for step in range(steps):
        model.alive = not 5 <= step < 9
        monitor.step(step)


def test_collapse_and_revival_appear_in_events_csv_and_the_log(tmp_path, probe, caplog):
    model = Switchable()
    caplog.set_level(logging.INFO, logger="vaescope")
    with LatentMonitor(model, probe, every=2, log_dir=tmp_path, tensorboard=False) as monitor:
        run_switching(monitor, model)
    with (tmp_path / EVENTS_FILE).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["step"], r["variable"], r["event"]) for r in rows] == [("6", "1", "collapse"), ("10", "1", "revival")]
    assert float(rows[0]["mu_variance"]) == 0.0 and float(rows[0]["sigma2_mean"]) == pytest.approx(1.0)
    assert float(rows[0]["kl_mean"]) == pytest.approx(0.0, abs=1e-12)
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("vaescope")]
    assert any("latent variable 1 collapsed at step 6" in m for m in messages)
    assert any("latent variable 1 revived at step 10" in m for m in messages)


def test_patience_ignores_a_verdict_that_does_not_hold(probe):
    model = Switchable()
    monitor = LatentMonitor(model, probe, every=1, patience=2)
    for step in range(8):
        model.alive = step != 3  # dead at one record only
        monitor.step(step)
    assert monitor.events == []
    for step in range(8, 11):
        model.alive = False
        monitor.step(step)
    assert [(e.step, e.event) for e in monitor.events] == [(9, "collapse")]


def test_trace_csv_is_the_run_format_and_holds_the_hand_computed_values(tmp_path, probe):
    model = Switchable()
    with LatentMonitor(model, probe, every=2, log_dir=tmp_path, tensorboard=False, steps_per_epoch=4) as monitor:
        run_switching(monitor, model)
    trace = read_trace(tmp_path)
    assert trace.steps == [0, 2, 4, 6, 8, 10, 12]
    assert trace.epochs == [s / 4 for s in trace.steps]
    for step, mu_variance, sigma2 in zip(trace.steps, trace.mu_variance, trace.sigma2_mean):
        want_variance, want_sigma2 = by_hand(probe, alive=not 5 <= step < 9)
        assert np.allclose(mu_variance, want_variance, rtol=1e-12, atol=1e-15)
        assert np.allclose(sigma2, want_sigma2, rtol=1e-12)
    expected = Trace(trace.steps, trace.epochs, trace.mu_variance, trace.sigma2_mean).to_csv()
    assert (tmp_path / TRACE_FILE).read_text() == expected


def test_tensorboard_scalars_and_histograms_read_back(tmp_path, probe):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = Switchable()
    with LatentMonitor(model, probe, every=2, log_dir=tmp_path, tensorboard=True) as monitor:
        run_switching(monitor, model)
    board = EventAccumulator(str(tmp_path))
    board.Reload()
    scalars = set(board.Tags()["scalars"])
    for name in ("mu_variance", "sigma2_mean", "kl"):
        assert {f"latent/{name}/00", f"latent/{name}/01"} <= scalars
    active = [(e.step, e.value) for e in board.Scalars("latent/active_count")]
    assert active == [(0, 2), (2, 2), (4, 2), (6, 1), (8, 1), (10, 2), (12, 2)]
    sigma2 = {e.step: e.value for e in board.Scalars("latent/sigma2_mean/01")}
    assert sigma2[6] == pytest.approx(1.0) and sigma2[4] == pytest.approx(0.1)
    want_variance, _ = by_hand(probe, alive=True)
    assert board.Scalars("latent/mu_variance/00")[0].value == pytest.approx(want_variance[0], rel=1e-6)
    assert "latent/hist/log10_mu_variance" in board.Tags()["histograms"]


class Mixed(nn.Module):
    """BatchNorm (train mode: would update its running statistics) and Dropout (set to eval by the
    user) before a linear encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.5)
        self.linear = nn.Linear(16, 4)

    def encode(self, x):
        return self.linear(self.drop(self.norm(x.flatten(1)))).chunk(2, dim=1)


def test_modes_gradients_weights_and_batchnorm_statistics_are_left_alone(probe):
    torch.manual_seed(0)
    model = Mixed()
    model.train()
    model.drop.eval()  # a user's own choice of modes, to be put back exactly
    model.norm(probe.flatten(1))  # running statistics away from their initial values
    loss = sum(t.square().sum() for t in model.encode(probe))
    loss.backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    monitor = LatentMonitor(model, probe, every=1)
    stats = monitor.step(1)
    assert model.training and model.norm.training and not model.drop.training and model.linear.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # running stats too
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    model.eval()  # the measurement is the eval-mode one (BatchNorm uses its running statistics)
    with torch.no_grad():
        mu, _ = model.encode(probe)
    assert np.allclose(stats.mu_variance, mu.double().var(0, unbiased=False).numpy(), rtol=1e-5)


def test_every_and_repeated_steps(probe):
    monitor = LatentMonitor(Switchable(), probe, every=3)
    recorded = [s for s in [0, 1, 2, 3, 3, 4, 5, 6, 6, 7] if monitor.step(s) is not None]
    assert recorded == [0, 3, 6] and monitor.trace.steps == [0, 3, 6]


class Diverging(Switchable):
    """Gives NaN once ``diverged`` is set."""

    diverged = False

    def encode(self, x):
        mu, logvar = super().encode(x)
        return (mu * float("nan") if self.diverged else mu), logvar


def test_nan_is_a_warning_unless_the_user_asks_to_stop(tmp_path, probe, caplog):
    model = Diverging()
    monitor = LatentMonitor(model, probe, every=1, log_dir=tmp_path, tensorboard=False)
    monitor.step(0)
    model.diverged = True
    with caplog.at_level(logging.WARNING, logger="vaescope"):
        assert monitor.step(1) is None
    assert any("NaN or Inf on the probe at step 1" in r.getMessage() for r in caplog.records)
    assert [(e.step, e.event) for e in monitor.events] == [(1, "nan")] and monitor.trace.steps == [0]
    strict = LatentMonitor(model, probe, every=1, on_nan="raise")
    with pytest.raises(VaescopeError, match="on_nan='raise'"):
        strict.step(1)


def test_bad_probes_and_options_are_one_line_at_construction(tmp_path, probe):
    from vaescope.models.networks import DenseVAE

    model = DenseVAE((1, 4, 4), (8,), 2)
    with pytest.raises(VaescopeError, match=r"probe of shape \(10, 1, 5, 5\) does not fit DenseVAE") as err:
        LatentMonitor(model, torch.zeros(10, 1, 5, 5))
    assert "\n" not in str(err.value)
    with pytest.raises(VaescopeError, match="at least 2 examples"):
        LatentMonitor(model, torch.zeros(1, 1, 4, 4))
    with pytest.raises(VaescopeError, match="every=0"):
        LatentMonitor(model, probe, every=0)
    with pytest.raises(VaescopeError, match="on_nan"):
        LatentMonitor(model, probe, on_nan="ignore")  # type: ignore[arg-type]
    LatentMonitor(model, probe, log_dir=tmp_path, tensorboard=False).close()
    (tmp_path / TRACE_FILE).write_text("step,epoch\n")
    with pytest.raises(VaescopeError, match="already holds trace.csv"):
        LatentMonitor(model, probe, log_dir=tmp_path, tensorboard=False)
    LatentMonitor(model, probe, log_dir=tmp_path, tensorboard=False, overwrite=True).close()
    assert not (tmp_path / TRACE_FILE).exists()  # the old trace is gone; nothing was recorded since


def test_uint8_probe_is_scaled(probe):
    as_bytes = (probe * 255).round().to(torch.uint8)
    stats = LatentMonitor(Switchable(), as_bytes, every=1).step(0)
    pixels = as_bytes.double().numpy().reshape(len(probe), -1)[:, :2] / 255.0
    assert np.allclose(stats.mu_variance, pixels.var(0))


def test_measure_overhead_reports_both_loops(tiny_dataset):
    result = measure_overhead(steps=4, every=2, probe_size=64, repeats=1, threads=1, dataset=tiny_dataset,
                              tensorboard=False)
    assert result["steps"] == 4 and result["every"] == 2 and result["probe_size"] == 64
    assert result["step_ms_off"] > 0 and result["step_ms_on"] > 0 and result["record_ms"] > 0
    assert result["predicted_overhead"] == pytest.approx(result["record_ms"] / (2 * result["step_ms_off"]))


def test_readme_monitor_example_runs(tiny_npz, tiny_dataset, tmp_path, monkeypatch):
    from test_api import readme_block

    import vaescope

    monkeypatch.chdir(tmp_path)
    code = readme_block("monitor-example").replace('load_dataset("mnist")', f"load_dataset({str(tiny_npz)!r})")
    code = code.replace("every=50", "every=2")  # 8 steps here (512 images, 2 epochs of 4 batches)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README's own example)
    trace = read_trace(tmp_path / "runs" / "my-loop")
    assert trace.steps == [2, 4, 6, 8] and trace.epochs == [0.5, 1.0, 1.5, 2.0]
    final = vaescope.latent_statistics(namespace["model"], tiny_dataset.x_test)  # the probe is all 128
    assert np.allclose(trace.mu_variance[-1], final.mu_variance, rtol=1e-6)
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "runs" / "my-loop").iterdir())


def test_a_monitor_resumed_from_its_state_continues_the_same_trace_and_events(tmp_path, probe):
    """Stopped at step 7 (variable 1 collapsed at 6, not yet back), saved as JSON, a new monitor in
    another folder continues: the revival at step 10 is seen, and the trace and events are those of
    the uninterrupted run."""
    model = Switchable()
    with LatentMonitor(model, probe, every=2, log_dir=tmp_path / "whole", tensorboard=False) as whole:
        run_switching(whole, model)
    model = Switchable()
    with LatentMonitor(model, probe, every=2, log_dir=tmp_path / "first", tensorboard=False) as first:
        for step in range(8):
            model.alive = not 5 <= step < 9
            first.step(step)
        saved = json.loads(json.dumps(first.state_dict()))
    with LatentMonitor(model, probe, every=2, log_dir=tmp_path / "second", tensorboard=False) as second:
        second.load_state_dict(saved)
        for step in range(8, 13):
            model.alive = not 5 <= step < 9
            second.step(step)
    assert second.trace.steps == whole.trace.steps == [0, 2, 4, 6, 8, 10, 12]
    np.testing.assert_array_equal(np.array(second.trace.mu_variance), np.array(whole.trace.mu_variance))
    assert [(e.step, e.variable, e.event) for e in second.events] == [(6, 1, "collapse"), (10, 1, "revival")]
    assert (tmp_path / "second" / EVENTS_FILE).read_text() == (tmp_path / "whole" / EVENTS_FILE).read_text()
    with pytest.raises(VaescopeError, match="LatentMonitor.load_state_dict got \\['steps'\\], not a monitor state"):
        second.load_state_dict({"steps": []})
