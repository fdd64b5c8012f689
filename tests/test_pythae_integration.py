"""pythae models and pythae's own TrainingPipeline: vaescope reads them with no hand-written adapter,
and its callback watches the training; numbers checked against an independent numpy computation."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from pythae.models import VAE, VAEConfig
from pythae.pipelines import TrainingPipeline
from pythae.trainers import BaseTrainerConfig
from pythae.trainers.training_callbacks import TrainingCallback

import vaescope
from vaescope.cli import main
from vaescope.integrations.pythae import LatentMonitorCallback
from vaescope.runs.files import read_trace


def train_with_pipeline(x_train: np.ndarray, x_eval: np.ndarray, out, latent_dim: int, epochs: int, batch: int,
                        callbacks: list) -> VAE:
    torch.manual_seed(0)
    model = VAE(VAEConfig(input_dim=x_train.shape[1:], latent_dim=latent_dim, reconstruction_loss="bce"))
    config = BaseTrainerConfig(output_dir=str(out), num_epochs=epochs, learning_rate=1e-3,
                               per_device_train_batch_size=batch, per_device_eval_batch_size=batch, no_cuda=True,
                               seed=0, steps_saving=None)
    TrainingPipeline(model=model, training_config=config)(train_data=x_train, eval_data=x_eval, callbacks=callbacks)
    return model


def by_hand(model: VAE, x: np.ndarray) -> dict[str, np.ndarray]:
    """Var(mu), mean sigma^2 and mean KL from pythae's encoder, computed with numpy in float64."""
    with torch.no_grad():
        out = model.encoder(torch.tensor(x, dtype=torch.float32))
    mu, logvar = out.embedding.double().numpy(), out.log_covariance.double().numpy()
    return {"mu_variance": mu.var(0), "sigma2_mean": np.exp(logvar).mean(0),
            "kl_mean": (0.5 * (mu**2 + np.exp(logvar) - logvar - 1)).mean(0)}


class ModeSpy(TrainingCallback):
    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_step_end(self, training_config, **kwargs) -> None:
        self.modes.append(kwargs["model"].training)


def test_callback_watches_a_pythae_pipeline(tmp_path, tiny_dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x_train = tiny_dataset.x_train.astype(np.float32) / 255  # 512 images: 8 steps of 64 per epoch
    probe = tiny_dataset.x_test.astype(np.float32) / 255
    callback = LatentMonitorCallback(probe=probe, every=4)
    spy = ModeSpy()  # called after ours at every step: the model must be back in train mode
    model = train_with_pipeline(x_train, probe, tmp_path, latent_dim=4, epochs=2, batch=64, callbacks=[callback, spy])
    log_dir = tmp_path / "latent_monitor"
    trace = read_trace(log_dir)
    assert trace.steps == [0, 4, 8, 12, 16] and trace.epochs == [0.0, 0.5, 1.0, 1.5, 2.0]
    final = by_hand(model, probe)  # step 16 is the last step: the trained model
    assert np.allclose(trace.mu_variance[-1], final["mu_variance"], rtol=1e-5)
    assert np.allclose(trace.sigma2_mean[-1], final["sigma2_mean"], rtol=1e-5)
    board = EventAccumulator(str(log_dir))
    board.Reload()
    kl = board.Scalars("latent/kl/02")
    assert [e.step for e in kl] == trace.steps and kl[-1].value == pytest.approx(final["kl_mean"][2], rel=1e-5)
    assert spy.modes == [True] * 16


@pytest.mark.slow
def test_pythae_vae_trained_on_mnist_is_measured_and_inspected_without_an_adapter(tmp_path, monkeypatch):
    data = vaescope.load_dataset("mnist")
    x_train = data.x_train[:6000].astype(np.float32) / 255  # 2 epochs of 60 steps: kept short for CI
    x_test = data.x_test[:2000].astype(np.float32) / 255
    callback = LatentMonitorCallback(probe=x_test[:500], every=25)
    model = train_with_pipeline(x_train, x_test, tmp_path / "pythae", latent_dim=12, epochs=2, batch=100,
                                callbacks=[callback])
    model.eval()
    want = by_hand(model, x_test)

    stats = vaescope.latent_statistics(model, data.x_test[:2000])  # uint8 images, no adapter
    for key in ("mu_variance", "sigma2_mean", "kl_mean"):
        assert np.allclose(getattr(stats, key), want[key], rtol=1e-6, atol=1e-12), key

    result = vaescope.inspect(model, x_test, tmp_path / "report")
    variables = result.results["statistics"]["variables"]
    assert np.allclose([v["mu_variance"] for v in variables], want["mu_variance"], rtol=1e-6, atol=1e-12)
    assert result.results["model"]["reconstruction"] == "bernoulli"
    with torch.no_grad():  # the gains' baseline: pythae's own BCE of the decoded mean at z = mu
        mu = model.encoder(torch.tensor(x_test)).embedding
        mean = model.decoder(mu)["reconstruction"].reshape(len(x_test), -1)
        bce = F.binary_cross_entropy(mean, torch.tensor(x_test).reshape(len(x_test), -1), reduction="none")
    assert result.results["reconstruction_gain"]["baseline_error"] == pytest.approx(float(bce.sum(1).mean()), rel=1e-3)
    assert "<img" in result.report.read_text() and read_trace(tmp_path / "pythae" / "latent_monitor").steps[-1] == 100

    # the same model through the command line: a factory module and safetensors weights
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    (tmp_path / "pythae_factory.py").write_text(
        "from pythae.models import VAE, VAEConfig\n\n"
        "def make(image_shape):\n"
        "    return VAE(VAEConfig(input_dim=image_shape, latent_dim=12, reconstruction_loss='bce'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    subset = tmp_path / "mnist-part.npz"  # MNIST digits as any user's data file: 2,000 test images
    np.savez(subset, x_train=data.x_train[:100], x_test=data.x_test[2000:4000])
    out = tmp_path / "cli"
    run = CliRunner().invoke(main, ["inspect", "--model", "pythae_factory:make", "--weights",
                                    str(tmp_path / "vae.safetensors"), "--data", str(subset), "--out", str(out),
                                    "--samples", "200"])
    assert run.exit_code == 0, run.output
    payload = json.loads((out / "inspect.json").read_text())
    other = by_hand(model, data.x_test[2000:4000].astype(np.float32) / 255)
    assert payload["statistics"]["n"] == 2000
    assert np.allclose([v["sigma2_mean"] for v in payload["statistics"]["variables"]], other["sigma2_mean"], rtol=1e-6)


def test_readme_pythae_example_runs(tiny_npz, tiny_dataset, tmp_path, monkeypatch):
    from test_docs import marked_block

    monkeypatch.chdir(tmp_path)
    code = marked_block("pythae-example").replace('load_dataset("mnist")', f"load_dataset({str(tiny_npz)!r})")
    code = code.replace("every=50", "every=2")  # 8 steps here (512 images, 2 epochs of 4 batches)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README's own example)
    assert read_trace(tmp_path / "runs" / "pythae" / "latent_monitor").steps == [0, 2, 4, 6, 8]
    want = by_hand(namespace["model"], tiny_dataset.x_test.astype(np.float32) / 255)
    assert np.allclose(namespace["stats"].sigma2_mean, want["sigma2_mean"], rtol=1e-6)
    payload = json.loads((tmp_path / "runs" / "pythae" / "inspect" / "inspect.json").read_text())
    assert payload["trace"]["points"] == 5 and payload["statistics"]["n"] == len(tiny_dataset.x_test)
