"""The benchmark's contract (JSON shape, FLOP counts) and the engine's results against a plain,
straightforward computation: speed must not change what vaescope computes."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import LogLines
from torch import nn

from vaescope.bench import suite as bench
from vaescope.cli import main
from vaescope.core.config import replace
from vaescope.core.errors import VaescopeError
from vaescope.measures.statistics import latent_statistics
from vaescope.models.networks import build_model
from vaescope.training import cost
from vaescope.training import engine as engine_mod
from vaescope.training.engine import make_optimizer, train_epoch

ROW_KEYS = {"vaescope_epoch_s", "reference_epoch_s", "reference_channels_last_epoch_s", "pythae_epoch_s",
            "speedup_vs_reference",
            "speedup_vs_pythae", "gflops", "fraction_of_matmul_peak"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and a busy machine cannot stall a second one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_shape(result: dict, with_pythae: bool) -> None:
    """The JSON contract: every key, a float where a contender ran, None where it did not."""
    targets = result.pop("targets", None)  # the CLI adds them (check_targets)
    if targets is not None:
        assert targets == bench.check_targets(result)
    where = result.pop("provenance")
    assert where["torch"] == torch.__version__ and where["machine"]["torch_threads"] == torch.get_num_threads()
    gpu = result.pop("gpu_stacking", None)  # the CLI's rows: on a machine without CUDA, why none was measured
    if gpu is not None and not torch.cuda.is_available():
        assert gpu["measured"] is False and gpu["reason"].startswith("no CUDA device")
    assert set(result) == {"dense16", "conv16", "stats", "matmul_peak_gflops"}
    for name in ("dense16", "conv16"):
        row = result[name]
        assert set(row) == ROW_KEYS
        for key in ("vaescope_epoch_s", "reference_epoch_s", "gflops", "fraction_of_matmul_peak"):
            assert isinstance(row[key], float), (name, key)
    assert result["conv16"]["pythae_epoch_s"] is None and result["conv16"]["speedup_vs_pythae"] is None
    assert isinstance(result["conv16"]["reference_channels_last_epoch_s"], float)
    assert result["dense16"]["reference_channels_last_epoch_s"] is None
    dense = result["dense16"]
    if with_pythae:
        assert isinstance(dense["pythae_epoch_s"], float) and isinstance(dense["speedup_vs_pythae"], float)
    else:
        assert dense["pythae_epoch_s"] is None and dense["speedup_vs_pythae"] is None
    assert set(result["stats"]) == {"seconds", "gflops", "fraction_of_matmul_peak"}
    json.dumps(result, allow_nan=False)


def test_smoke_run_gives_the_json_contract(tiny_dataset):
    with LogLines() as lines:
        result = bench.run_benchmark(tiny_dataset, repeats=2, n_train=256, matmul_size=128, threads=1,
                                     use_pythae=False)
    check_shape(result, with_pythae=False)
    assert any("pythae is not installed" in line for line in lines)
    assert sum(line.startswith("round ") for line in lines) == 2
    table = bench.format_report(result)
    assert "dense16 epoch" in table and "stats pass" in table


def test_targets_say_which_are_reached_and_by_how_much_the_others_miss():
    result = {"dense16": {"speedup_vs_reference": 1.2, "speedup_vs_pythae": 2.5, "fraction_of_matmul_peak": 0.45},
              "conv16": {"speedup_vs_reference": 1.5, "fraction_of_matmul_peak": 0.25},
              "stats": {"fraction_of_matmul_peak": 0.75},
              "whole_process": {"ratio_to_pythae": 0.6}}  # no multi_model row: not measured
    by_target = {t["target"]: t for t in bench.check_targets(result)}
    assert len(by_target) == len(bench.TARGETS)
    loop = by_target["dense16 epoch, speedup vs the plain loop"]
    assert (loop["wanted"], loop["measured"], loop["reached"]) == (">= 1.5", 1.2, False)
    assert loop["factor_short"] == pytest.approx(1.25)  # 1.5 / 1.2
    assert by_target["dense16 epoch, speedup vs pythae"]["reached"] is True
    assert by_target["dense16 epoch, speedup vs pythae"]["factor_short"] == 1.0
    assert by_target["conv16 epoch, speedup vs the faster plain loop"]["reached"] is True  # equal counts
    assert by_target["conv16 epoch, share of the matmul rate"]["factor_short"] == pytest.approx(2.0)
    process = by_target["whole process, vaescope's time over pythae's"]
    assert (process["wanted"], process["reached"]) == ("<= 0.5", False)
    assert process["factor_short"] == pytest.approx(1.2)  # a time: 0.6 / 0.5
    multi = by_target["many models at once, speedup vs one after the other"]
    assert (multi["measured"], multi["reached"], multi["factor_short"]) == (None, None, None)
    text = bench.format_report({**_report_rows(), "targets": bench.check_targets(result)})
    assert "  dense16 epoch, speedup vs the plain loop >= 1.5: 1.20, missed: 1.25x short" in text
    assert "  many models at once, speedup vs one after the other >= 1.4: -, not measured" in text


def _report_rows() -> dict:
    row = {"vaescope_epoch_s": 1.0, "reference_epoch_s": 1.2, "reference_channels_last_epoch_s": None,
           "pythae_epoch_s": None, "speedup_vs_reference": 1.2, "speedup_vs_pythae": None, "gflops": 50.0,
           "fraction_of_matmul_peak": 0.45}
    return {"dense16": row, "conv16": row, "stats": {"seconds": 0.2, "gflops": 100.0, "fraction_of_matmul_peak": 0.75},
            "matmul_peak_gflops": 180.0}


@pytest.mark.slow
def test_cli_with_pythae(tiny_npz):
    pytest.importorskip("pythae")
    outcome = CliRunner().invoke(main, ["bench", "--json", "--repeats", "1", "--n-train", "128",
                                        "--data", str(tiny_npz)])
    assert outcome.exit_code == 0, outcome.output
    check_shape(json.loads(outcome.stdout), with_pythae=True)


def test_bad_settings_are_refused(tiny_dataset):
    with pytest.raises(VaescopeError, match="--repeats is 0"):
        bench.run_benchmark(tiny_dataset, repeats=0)
    with pytest.raises(VaescopeError, match="--n-train is 10; use 128 to 512"):
        bench.run_benchmark(tiny_dataset, n_train=10)
    with pytest.raises(VaescopeError, match="--threads is -1"):
        bench.run_benchmark(tiny_dataset, threads=-1)


def test_flop_counts_match_the_layer_arithmetic():
    dense = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 32))
    x = torch.zeros(5, 1, 28, 28)
    assert cost.forward_flops(lambda: dense(x)) == 5 * 2 * (784 * 256 + 256 * 32)
    conv = nn.Conv2d(1, 16, 4, stride=2, padding=1)  # 28x28 -> 14x14
    assert cost.forward_flops(lambda: conv(x)) == 5 * 2 * (14 * 14 * 16 * 1 * 16)
    up = nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)  # 7x7 -> 14x14
    assert cost.forward_flops(lambda: up(torch.zeros(1, 32, 7, 7))) == 2 * (7 * 7 * 32 * 16 * 16)


def test_dense16_costs_what_its_widths_say(tiny_config):
    from vaescope.core.config import resolve

    model = build_model(resolve("dense16").model, (1, 28, 28))
    macs = (784 * 256 + 256 * 64 + 64 * 32 + 32 * 32) + (16 * 32 + 32 * 64 + 64 * 256 + 256 * 784)
    assert bench.training_flops_per_example(model, (1, 28, 28)) == 3 * 2 * macs
    assert bench.encoder_flops_per_example(model, (1, 28, 28)) == 2 * (784 * 256 + 256 * 64 + 64 * 32 + 32 * 32)


# ---------------------------------------------------------------------------- same results

def plain_training(model, x_uint8, epochs, batch_size, lr, shuffle, noise):
    """The textbook loop, written out: float images, reparameterised z, BCE + closed-form KL,
    unfused Adam. Same generators as the engine, so the same batches and the same noise."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=False, fused=False)
    for _ in range(epochs):
        order = torch.randperm(len(x_uint8), generator=shuffle)
        for start in range(0, len(x_uint8), batch_size):
            x = x_uint8[order[start : start + batch_size]].to(torch.float32) / 255
            mu, logvar = model.encode(x)
            eps = torch.randn(mu.shape, generator=noise)
            logits = model.decode(mu + torch.exp(0.5 * logvar) * eps).flatten(1)
            target = x.flatten(1)
            bce = (torch.clamp(logits, min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))).sum(1)
            kl = 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1)
            optimizer.zero_grad()
            (bce.mean() + kl.mean()).backward()
            optimizer.step()


def plain_statistics(model, x_uint8):
    """Per-variable statistics from all encodings at once, in float64 NumPy."""
    with torch.no_grad():
        mu, logvar = (t.double().numpy() for t in model.encode(torch.from_numpy(x_uint8).float() / 255))
    return {"mu_mean": mu.mean(0), "mu_variance": mu.var(0), "sigma2_mean": np.exp(logvar).mean(0),
            "log_sigma2_mean": logvar.mean(0), "kl_mean": (0.5 * (mu**2 + np.exp(logvar) - logvar - 1)).mean(0)}


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_engine_gives_the_same_statistics_as_a_plain_computation(tiny_config, tiny_dataset, kind):
    config = replace(tiny_config, **{"model.kind": kind})
    t_cfg = config.train
    x = torch.from_numpy(tiny_dataset.x_train)
    models = []
    for _ in range(2):
        torch.manual_seed(t_cfg.seed)
        models.append(build_model(config.model, tiny_dataset.image_shape))
    engine, plain = models
    shuffle, noise = torch.Generator().manual_seed(t_cfg.seed), torch.Generator().manual_seed(t_cfg.seed + 1)
    optimizer = make_optimizer(engine, t_cfg.lr)
    step = 0
    for _ in range(t_cfg.epochs):
        step, _ = train_epoch(engine, optimizer, x, config.loss, t_cfg.batch_size, shuffle, noise, step)
    plain_training(plain, x, t_cfg.epochs, t_cfg.batch_size, t_cfg.lr,
                   torch.Generator().manual_seed(t_cfg.seed), torch.Generator().manual_seed(t_cfg.seed + 1))
    assert step == t_cfg.epochs * math.ceil(len(x) / t_cfg.batch_size)

    ours = latent_statistics(engine, tiny_dataset.x_test, batch_size=50)  # batches that do not divide N
    expected = plain_statistics(plain, tiny_dataset.x_test)
    for key, value in expected.items():
        # float32 training: fused and textbook Adam round differently, nothing more
        np.testing.assert_allclose(getattr(ours, key), value, rtol=1e-4, atol=1e-6, err_msg=key)
    # and the streaming pass equals the all-at-once computation on the very same model
    same = plain_statistics(engine, tiny_dataset.x_test)
    for key, value in same.items():
        np.testing.assert_allclose(getattr(ours, key), value, rtol=1e-6, atol=1e-9, err_msg=key)


# ---------------------------------------------------------------------------- the accelerator path

def poisoned_epoch(config, dataset, interval, monkeypatch, poison):
    """One epoch with the fault check every ``interval`` steps; ``poison`` (loss or gradient) hits
    step 6. Returns the model, the optimizer and the NonFiniteLoss raised (or None)."""
    monkeypatch.setattr(engine_mod.NonFiniteGuard, "interval", classmethod(lambda cls, device, optimizer: interval))
    torch.manual_seed(0)
    model = build_model(config.model, dataset.image_shape)
    optimizer = make_optimizer(model, 1e-3)
    calls = {"loss": 0, "grad": 0}
    real = engine_mod.loss_terms

    def loss_terms(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["loss"] += 1
        if poison == "loss" and calls["loss"] == 6:
            terms.total = terms.total * float("nan")
        return terms

    def hook(grad):
        calls["grad"] += 1
        return grad * float("inf") if poison == "gradient" and calls["grad"] == 6 else grad

    monkeypatch.setattr(engine_mod, "loss_terms", loss_terms)
    next(model.parameters()).register_hook(hook)
    try:
        train_epoch(model, optimizer, torch.from_numpy(dataset.x_train), config.loss, 32,
                    torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
    except engine_mod.NonFiniteLoss as fault:
        return model, optimizer, fault
    return model, optimizer, None


@pytest.mark.parametrize("amp_check", [True, False])
@pytest.mark.parametrize("poison", ["loss", "gradient", None])
def test_device_side_fault_flag_matches_the_per_step_check(tiny_config, tiny_dataset, monkeypatch, poison,
                                                          amp_check):
    """On an accelerator the host looks at the fault flag only every few steps and fused Adam skips
    the steps in between on the device; run here on the CPU, that path must report the same step
    and leave the same weights and Adam state as the per-step check."""
    if not amp_check:  # a torch without AMP's fused check falls back to the gradient norm
        monkeypatch.delattr(torch, "_amp_foreach_non_finite_check_and_unscale_")
    every, every_fifth = (poisoned_epoch(tiny_config, tiny_dataset, k, monkeypatch, poison) for k in (1, 5))
    if poison is None:
        assert every[2] is None and every_fifth[2] is None
    else:
        assert (every[2].step, every[2].gradient) == (6, poison == "gradient")
        assert (every_fifth[2].step, every_fifth[2].gradient) == (6, poison == "gradient")
    for a, b in zip(every[0].parameters(), every_fifth[0].parameters()):
        assert torch.equal(a, b) and torch.isfinite(a).all()
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(every[1].state[a][key], every_fifth[1].state[b][key])
    assert getattr(every_fifth[1], "found_inf", None) is None  # the optimizer is left as it was given
    if poison is None:  # and it goes on stepping after the epoch
        before = [p.detach().clone() for p in every_fifth[0].parameters()]
        train_epoch(every_fifth[0], every_fifth[1], torch.from_numpy(tiny_dataset.x_train[:64]), tiny_config.loss,
                    32, torch.Generator().manual_seed(0), torch.Generator().manual_seed(1))
        assert not all(torch.equal(a, b) for a, b in zip(before, every_fifth[0].parameters()))


def test_the_bench_says_when_no_gpu_was_measured(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # whatever machine runs the tests
    row = bench.extra_rows()["gpu_stacking"]
    assert row["measured"] is False and row["reason"].startswith("no CUDA device on this machine")
    text = bench.format_report({**_report_rows(), "gpu_stacking": row})
    assert "GPU stacking: not measured (no CUDA device on this machine" in text


def test_the_bench_report_reads_a_measured_gpu_row() -> None:
    gpu = {"measured": True, "device_name": "Some GPU", "single_epoch_s": 0.5, "knee": 2,
           "stacked": [{"models": 1, "epoch_s": 0.5, "model_epochs_per_s": 2.0, "speedup": 1.0},
                       {"models": 2, "epoch_s": 0.5, "model_epochs_per_s": 4.0, "speedup": 2.0}]}
    text = bench.format_report({**_report_rows(), "gpu_stacking": gpu})
    assert ("GPU stacking on Some GPU: one dense16 model 0.50 s an epoch; 1 stacked 2.00 model-epochs/s (1.0x), "
            "2 stacked 4.00 model-epochs/s (2.0x); throughput grows up to 2 models") in text

