"""vaescope.integrations.lightning.LatentMonitorCallback with a real Lightning Trainer: where it finds the
model (or an encode_fn, an adapter), TensorBoard through the trainer's logger (read back), its own files,
modes put back; EarlyStopping and ModelCheckpoint on its metrics, and a resumed fit, on a fit whose trace
is known by hand."""

import csv
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vaescope.core.config import LossConfig
from vaescope.core.errors import VaescopeError
from vaescope.integrations.lightning import ACTIVE_METRIC, DEVIATION_METRIC, LatentMonitorCallback, find_latent_model
from vaescope.models.adapters import as_latent_model
from vaescope.models.networks import DenseVAE
from vaescope.models.objectives import loss_terms
from vaescope.runs.files import TRACE_FILE, read_trace

BATCHES = 8  # per epoch: 512 images of batch 64
# a CI machine with more cores than these 2 would suggest DataLoader workers: not what is tested here
pytestmark = pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers")


class LitVAE(lightning.LightningModule):
    """A LightningModule that keeps its VAE in ``.vae`` (found by the callback's lookup)."""

    def __init__(self) -> None:
        super().__init__()
        self.vae = DenseVAE((1, 8, 8), (32,), 4)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return loss_terms(self.vae, x, LossConfig()).total

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def fit(module: lightning.LightningModule, callback: LatentMonitorCallback, root, epochs: int = 2, **trainer_options):
    torch.manual_seed(0)
    x = torch.rand(512, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    trainer = lightning.Trainer(max_epochs=epochs, callbacks=[callback], default_root_dir=str(root), accelerator="cpu",
                                enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                                log_every_n_steps=1, **trainer_options)
    trainer.fit(module, DataLoader(TensorDataset(x), batch_size=64))
    return trainer


@pytest.fixture()
def probe() -> torch.Tensor:
    return torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def test_callback_logs_through_the_trainers_tensorboard_logger(tmp_path, probe):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = LatentMonitorCallback(probe=probe, every=5)
    trainer = fit(LitVAE(), callback, tmp_path)
    log_dir = trainer.logger.log_dir  # lightning_logs/version_0
    trace = read_trace(log_dir)
    assert trace.steps == [0, 5, 10, 15] and trainer.global_step == 2 * BATCHES
    assert trace.epochs == pytest.approx([0.0, 5 / BATCHES, 10 / BATCHES, 15 / BATCHES])
    board = EventAccumulator(log_dir)
    board.Reload()
    scalars = set(board.Tags()["scalars"])
    assert {f"latent/{n}/{j:02d}" for n in ("mu_variance", "sigma2_mean", "kl") for j in range(4)} <= scalars
    logged = [(e.step, e.value) for e in board.Scalars("latent/mu_variance/03")]
    assert logged == [(s, pytest.approx(v[3], rel=1e-6)) for s, v in zip(trace.steps, trace.mu_variance)]
    assert [e.step for e in board.Scalars("latent/active_count")] == [0, 5, 10, 15]
    assert list((tmp_path / "lightning_logs").iterdir()) == [tmp_path / "lightning_logs" / "version_0"]


def test_callback_without_logger_writes_its_own_files_and_restores_train_mode(tmp_path, probe):
    module = LitVAE()
    callback = LatentMonitorCallback(probe=probe, every=4, tensorboard=True)
    modes = []
    original = module.training_step

    def training_step(batch, batch_idx):
        modes.append(module.vae.training)  # the monitor ran between steps; the VAE must train
        return original(batch, batch_idx)

    module.training_step = training_step
    fit(module, callback, tmp_path, logger=False)
    own = tmp_path / "vaescope"
    assert read_trace(own).steps == [0, 4, 8, 12, 16]
    assert any(p.name.startswith("events.out.tfevents") for p in own.iterdir())
    assert all(modes) and len(modes) == 2 * BATCHES


def test_other_loggers_get_the_summary(tmp_path, probe):
    callback = LatentMonitorCallback(probe=probe, every=8, tensorboard=False)
    trainer = fit(LitVAE(), callback, tmp_path, logger=CSVLogger(str(tmp_path), name="csv"))
    with open(f"{trainer.logger.log_dir}/metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("latent/active_count")]
    assert [int(r["step"]) for r in rows] == [0, 8, 16]
    counts = [int(a.sum()) for a in (v >= 0.01 for v in read_trace(trainer.logger.log_dir).mu_variance)]
    assert [int(float(r["latent/active_count"])) for r in rows] == counts


class Direct(nn.Module):
    def encode(self, x):
        return x.flatten(1)[:, :2], torch.zeros(len(x), 2)


def test_model_lookup_order_and_refusal():
    class Holder(nn.Module):
        def __init__(self, **children):
            super().__init__()
            for name, child in children.items():
                setattr(self, name, child)

    direct, other = Direct(), Direct()
    assert find_latent_model(Holder(model=direct, vae=other)).module is direct
    assert find_latent_model(Holder(vae=other)).module is other
    assert find_latent_model(Holder(net=other), attribute="net").module is other
    with pytest.raises(VaescopeError, match="found no VAE in Holder"):
        find_latent_model(Holder(net=other))
    with pytest.raises(VaescopeError, match="attribute='missing'"):
        find_latent_model(Holder(), attribute="missing")


def test_trace_file_lands_in_the_given_log_dir(tmp_path, probe):
    callback = LatentMonitorCallback(probe=probe, every=16, log_dir=tmp_path / "mine", tensorboard=False)
    fit(LitVAE(), callback, tmp_path, epochs=1, logger=False)
    assert (tmp_path / "mine" / TRACE_FILE).is_file() and read_trace(tmp_path / "mine").steps == [0]


@pytest.mark.filterwarnings("ignore:The number of training batches .* is smaller than the logging interval")
@pytest.mark.filterwarnings("ignore:The 'train_dataloader' does not have many workers")
def test_readme_lightning_example_runs(tiny_npz, tmp_path, monkeypatch):
    from test_docs import marked_block

    monkeypatch.chdir(tmp_path)
    code = marked_block("lightning-example").replace('load_dataset("mnist")', f"load_dataset({str(tiny_npz)!r})")
    code = code.replace("every=50", "every=2")  # 8 steps here (512 images, 2 epochs of 4 batches)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 (the README's own example)
    version = tmp_path / "lightning_logs" / "version_0"
    assert read_trace(version).steps == [0, 2, 4, 6, 8]
    assert any(p.name.startswith("events.out.tfevents") for p in version.iterdir())


# ---------------------------------------------------------------------------- a fit whose trace is known by hand
# mu = w * x, logvar = 0, and SGD on the loss -(c . w) moves w_j by LR * c_j a step: after s steps
# w_j = LR s c_j. On a probe whose columns are half +1, half -1 (population variance exactly 1),
# Var(mu_j) = (LR s c_j)^2, mean sigma^2 = 1, so the variance law's largest deviation is
# max_j (LR s c_j)^2, and variable j is active (Var(mu_j) >= 0.01) once LR s c_j >= 0.1:
# j = 0 from s = 4 (w = 0.12), j = 1 from s = 8 (0.12; 0.06 at s = 4), j = 2 from s = 12 (0.108;
# 0.072 at s = 8), j = 3 never. With 4 steps an epoch and every=4, the active count at the end of
# epochs 0, 1, 2, 3, ... is 1, 2, 3, 3, ...

LR = 0.01
DRIFT = (3.0, 1.5, 0.9, 0.0)
STEPS_PER_EPOCH = 4


def drift_probe() -> torch.Tensor:
    x = torch.ones(16, len(DRIFT))
    x[8:] = -1.0
    return x


def expected_mu_variance(step: int) -> list[float]:
    return [(LR * step * c) ** 2 for c in DRIFT]


class Drift(lightning.LightningModule):
    """The VAE is the LightningModule itself (it has encode)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(len(DRIFT)))
        self.register_buffer("c", torch.tensor(DRIFT))
        self.modes: list[bool] = []

    def encode(self, x):
        return x * self.w, torch.zeros_like(x)

    def training_step(self, batch, batch_idx):
        self.modes.append(self.training)
        return -(self.c * self.w).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


class Opaque(nn.Module):
    """A network from another library: no encode, no encoder/decoder; its posterior is a method of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(len(DRIFT)))

    def posterior(self, x):
        return torch.distributions.Normal(x * self.w, torch.ones_like(x))


class OpaqueDrift(Drift):
    def __init__(self) -> None:
        super().__init__()
        del self.w
        self.net = Opaque()

    encode = None  # nothing for the lookup to find

    def training_step(self, batch, batch_idx):
        self.modes.append(self.training)
        return -(self.c * self.net.w).sum()


def fit_drift(module, callbacks, root, epochs: int, ckpt_path=None, **trainer_options):
    trainer = lightning.Trainer(max_epochs=epochs, callbacks=callbacks, default_root_dir=str(root), accelerator="cpu",
                                enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                                **trainer_options)
    loader = DataLoader(TensorDataset(torch.zeros(STEPS_PER_EPOCH * 4, len(DRIFT))), batch_size=4)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


def assert_trace_is_the_drift(trace, steps):
    assert trace.steps == steps
    for step, row in zip(trace.steps, trace.mu_variance):
        np.testing.assert_allclose(row, expected_mu_variance(step), rtol=1e-5, atol=1e-12)
    assert all(np.array_equal(q, np.ones(len(DRIFT))) for q in trace.sigma2_mean)


@pytest.mark.parametrize("stopper, stopped_epoch", [
    # the active count 1, 2, 3, 3, 3 at epochs 0-4: no gain for 2 epochs after epoch 2
    (lambda: EarlyStopping(monitor=ACTIVE_METRIC, mode="max", patience=2), 4),
    # the largest deviation (0.03 s)^2: 0.0144, 0.0576, 0.1296 at s = 4, 8, 12; above 0.1 at epoch 2
    (lambda: EarlyStopping(monitor=DEVIATION_METRIC, mode="max", stopping_threshold=0.1, patience=100), 2),
])
def test_early_stopping_and_checkpointing_on_the_logged_metrics(tmp_path, stopper, stopped_epoch):
    stopping, best = stopper(), ModelCheckpoint(dirpath=tmp_path / "best", monitor=ACTIVE_METRIC, mode="max")
    module = Drift()
    trainer = fit_drift(module, [LatentMonitorCallback(drift_probe(), every=STEPS_PER_EPOCH, tensorboard=False),
                                 stopping, best], tmp_path, epochs=50, logger=False)
    last = (stopped_epoch + 1) * STEPS_PER_EPOCH
    assert stopping.stopped_epoch == stopped_epoch and trainer.global_step == last
    assert float(trainer.callback_metrics[ACTIVE_METRIC]) == min(3, stopped_epoch + 1)
    assert float(trainer.callback_metrics[DEVIATION_METRIC]) == pytest.approx((LR * last * DRIFT[0]) ** 2, rel=1e-5)
    # the best active count, 3, first reached at the end of epoch 2 (step 12); later ties do not replace it
    expected_best = "epoch=2-step=12.ckpt" if stopped_epoch >= 2 else None
    assert Path(best.best_model_path).name == expected_best and float(best.best_model_score) == 3.0
    assert all(module.modes) and len(module.modes) == last


# a resume writes into the folder of the checkpoints it continues, as Lightning users do
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_a_resumed_fit_continues_the_trace_and_events(tmp_path):
    # patience=2: a new verdict counts at its second record, so the checkpoint at step 8 holds a
    # pending one (variable 1, active since step 8): revivals at steps 8, 12, 16 for variables 0, 1, 2
    expected_events = [(8, 0, "revival"), (12, 1, "revival"), (16, 2, "revival")]
    steps = list(range(0, 6 * STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH))
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    whole = LatentMonitorCallback(drift_probe(), every=STEPS_PER_EPOCH, patience=2, tensorboard=False)
    fit_drift(Drift(), [whole, every_epoch], tmp_path / "whole", epochs=6)
    assert_trace_is_the_drift(whole.monitor.trace, steps)
    assert [(e.step, e.variable, e.event) for e in whole.monitor.events] == expected_events

    checkpoint = tmp_path / "ckpt" / "epoch=1-step=8.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["callbacks"][whole.state_key]  # plain values only
    assert saved["steps"] == [0, 4, 8] and saved["streak"] == [0, 1, 0, 0] and saved["verdict"] == [True] + [False] * 3

    resumed = LatentMonitorCallback(drift_probe(), every=STEPS_PER_EPOCH, patience=2, tensorboard=False)
    again = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer = fit_drift(Drift(), [resumed, again], tmp_path / "resumed", epochs=6, ckpt_path=checkpoint)
    assert_trace_is_the_drift(resumed.monitor.trace, steps)  # no step twice, none missing
    assert [(e.step, e.variable, e.event) for e in resumed.monitor.events] == expected_events
    folder = Path(trainer.logger.log_dir)
    assert read_trace(folder).steps == steps
    with open(folder / "events.csv") as handle:
        assert [(int(r["step"]), int(r["variable"])) for r in csv.DictReader(handle)] == [(8, 0), (12, 1), (16, 2)]

    # control: the same resume without the callback's state starts a new trace at step 8 and
    # sees variable 1's revival late (its pending record at step 8 is lost)
    stripped = torch.load(checkpoint, weights_only=True)
    del stripped["callbacks"][whole.state_key]
    torch.save(stripped, tmp_path / "stripped.ckpt")
    blind = LatentMonitorCallback(drift_probe(), every=STEPS_PER_EPOCH, patience=2, tensorboard=False)
    fit_drift(Drift(), [blind, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)],
              tmp_path / "blind", epochs=6, ckpt_path=tmp_path / "stripped.ckpt")
    assert blind.monitor.trace.steps == steps[2:]
    assert [(e.step, e.variable) for e in blind.monitor.events] == [(16, 2)]


def test_a_module_without_encode_is_watched_through_encode_fn_or_an_adapter(tmp_path):
    steps = [0, 4, 8, 12]
    with pytest.raises(VaescopeError, match="found no VAE in OpaqueDrift.*encode_fn="):
        find_latent_model(OpaqueDrift())  # the control: the lookup alone cannot watch it
    module = OpaqueDrift()
    by_function = LatentMonitorCallback(drift_probe(), every=4, tensorboard=False,
                                        encode_fn=lambda x: module.net.posterior(x))
    fit_drift(module, [by_function], tmp_path / "fn", epochs=3, logger=False, enable_checkpointing=False)
    assert_trace_is_the_drift(by_function.monitor.trace, steps)
    assert all(module.modes) and len(module.modes) == 12  # measured in eval mode, trained in train mode

    other = OpaqueDrift()
    by_adapter = LatentMonitorCallback(drift_probe(), every=4, tensorboard=False,
                                       model=as_latent_model(encode_fn=other.net.posterior, module=other.net))
    fit_drift(other, [by_adapter], tmp_path / "adapter", epochs=3, logger=False, enable_checkpointing=False)
    assert_trace_is_the_drift(by_adapter.monitor.trace, steps)


def test_refusals_of_the_callback():
    with pytest.raises(VaescopeError, match="got model and encode_fn; pass one"):
        LatentMonitorCallback(drift_probe(), model=Drift(), encode_fn=lambda x: x)
    with pytest.raises(VaescopeError, match="encode_fn is int"):
        LatentMonitorCallback(drift_probe(), encode_fn=3)
    callback = LatentMonitorCallback(drift_probe())
    for bad in ({"steps": [0]}, {"version": 99}):
        with pytest.raises(VaescopeError, match="not a monitor state of version 1") as excinfo:
            callback.load_state_dict(bad)
        assert "\n" not in str(excinfo.value)


@pytest.mark.slow  # two processes start (about 10 s)
@pytest.mark.filterwarnings("ignore:.*does not have many workers")
def test_under_ddp_every_process_reads_the_metric_and_one_writes(tmp_path):
    # 32 rows, 2 processes: each sees 16, 4 batches of 4 an epoch; the gradient of -(c . w) is the same
    # constant on both, so w follows the hand-worked schedule and EarlyStopping stops after epoch 4
    # on both processes (one without the metric would raise: EarlyStopping is strict)
    callback = LatentMonitorCallback(drift_probe(), every=STEPS_PER_EPOCH, tensorboard=False,
                                     log_dir=tmp_path / "watch")
    trainer = lightning.Trainer(max_epochs=50, accelerator="cpu", devices=2, strategy="ddp_spawn",
                                callbacks=[callback, EarlyStopping(monitor=ACTIVE_METRIC, mode="max", patience=2),
                                           ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)],
                                default_root_dir=str(tmp_path), enable_progress_bar=False,
                                enable_model_summary=False, log_every_n_steps=1, logger=False)
    trainer.fit(Drift(), DataLoader(TensorDataset(torch.zeros(8 * STEPS_PER_EPOCH, len(DRIFT))), batch_size=4))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [f"epoch={e}-step={4 * e + 4}.ckpt" for e in range(5)]
    assert read_trace(tmp_path / "watch").steps == [0, 4, 8, 12, 16, 20]
    assert sorted(p.name for p in (tmp_path / "watch").iterdir()) == ["events.csv", TRACE_FILE]
