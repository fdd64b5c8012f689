"""A user's own model: trained with ``--model package.module:factory``, resumed, measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_OVERRIDES

from vaescope.cli import main
from vaescope.core.config import resolve
from vaescope.core.errors import VaescopeError
from vaescope.measures.statistics import latent_statistics
from vaescope.runs.checkpoint import load_run
from vaescope.training import train as train_mod
from vaescope.training.train import train

TESTS = str(Path(__file__).parent)


@pytest.fixture()
def own_config(tiny_npz, monkeypatch):
    monkeypatch.syspath_prepend(TESTS)
    return resolve("dense16", overrides=[*TINY_OVERRIDES, f"data.source={tiny_npz}", "model.factory=own_model:make"])


def test_cli_trains_resumes_and_measures_a_factory_model(tmp_path, tiny_npz, monkeypatch, own_config):
    args = ["train", "--preset", "dense16", "--model", "own_model:make", "--data", str(tiny_npz),
            *[a for o in TINY_OVERRIDES for a in ("--set", o)], "--quiet"]
    whole = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    stored = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert stored["model"]["factory"] == "own_model:make"
    run = load_run(tmp_path / "whole")
    assert type(run.model).__name__ == "TinyVAE"

    # interrupted after the first epoch's checkpoint, then resumed: the same weights, byte for byte
    real_save = train_mod.save_checkpoint

    def interrupt_after_first(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt  # as a Ctrl-C right after the epoch-1 checkpoint

    monkeypatch.setattr(train_mod, "save_checkpoint", interrupt_after_first)
    cut = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cut")])
    assert cut.exit_code == 1 and "Aborted" in cut.output
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "cut"), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    for name in ("model.safetensors", "metrics.csv", "trace.csv"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name

    measured = CliRunner().invoke(main, ["stats", str(tmp_path / "cut"), "--json"])
    assert measured.exit_code == 0, measured.output
    payload = json.loads(measured.output)
    # the same numbers as an independent pass over the test split with the loaded model
    from vaescope.data.sources import load_dataset

    x = load_dataset(str(tiny_npz)).x_test
    with torch.no_grad():
        mu, _ = run.model.encode(torch.from_numpy(x).float() / 255)
    expected = mu.double().var(0, unbiased=False).numpy()
    assert [v["mu_variance"] for v in payload["variables"]] == pytest.approx(expected.tolist(), rel=1e-6)


def test_a_model_object_trains_and_resume_needs_the_same_config(tmp_path, tiny_dataset, own_config):
    import own_model

    model = own_model.make(tiny_dataset.image_shape, own_config.model)
    result = train(own_config, tmp_path / "run", dataset=tiny_dataset, progress=False, model=model)
    assert result.model is model
    other = resolve("dense16", overrides=[*TINY_OVERRIDES, "train.epochs=5"])
    with pytest.raises(VaescopeError, match=r"holds a run of another config \(.*train.epochs"):
        train(other, tmp_path / "run", resume=True, dataset=tiny_dataset, progress=False)


@pytest.mark.parametrize("reference, message", [
    ("own_model:missing", "has no 'missing'"),
    ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
    ("own_model:broken", "raised RuntimeError: this factory always fails; fix the factory"),
    ("own_model:not_a_model", "returned str; it must return an nn.Module with encode"),
])
def test_bad_factories_give_one_line(tmp_path, tiny_npz, monkeypatch, reference, message):
    monkeypatch.syspath_prepend(TESTS)
    result = CliRunner().invoke(main, ["train", "--preset", "dense16", "--model", reference, "--data", str(tiny_npz),
                                       "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_latent_statistics_of_the_factory_model_match_numpy(tiny_dataset, own_config):
    import own_model

    torch.manual_seed(0)
    model = own_model.make(tiny_dataset.image_shape, own_config.model)
    stats = latent_statistics(model, tiny_dataset.x_test)
    with torch.no_grad():
        mu, logvar = model.encode(torch.from_numpy(tiny_dataset.x_test).float() / 255)
    assert stats.sigma2_mean == pytest.approx(logvar.double().exp().mean(0).numpy(), rel=1e-6)


def test_a_factory_model_trains_from_the_cli_without_a_preset(tmp_path, tiny_npz, monkeypatch):
    monkeypatch.syspath_prepend(TESTS)
    out = tmp_path / "own"
    args = ["train", "--model", "own_model:make", "--data", str(tiny_npz), "--epochs", "1", "--out", str(out),
            "--quiet", *[a for o in TINY_OVERRIDES if not o.startswith("train.epochs") for a in ("--set", o)]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "config.json").read_text())
    # no preset: the config dataclasses' defaults, with the user's model and data
    assert stored["name"] == "custom" and stored["model"]["factory"] == "own_model:make"
    assert stored["data"]["source"] == str(tiny_npz) and stored["loss"]["beta"] == resolve().loss.beta
    assert type(load_run(out).model).__name__ == "TinyVAE"
