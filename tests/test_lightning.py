"""vaescope.integrations.lightning.LatentMonitorCallback with a real Lightning Trainer: where it finds the
model, TensorBoard through the trainer's logger (read back), its own files, modes put back."""

import csv

import lightning
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vaescope.core.config import LossConfig
from vaescope.core.errors import VaescopeError
from vaescope.integrations.lightning import LatentMonitorCallback, find_latent_model
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
