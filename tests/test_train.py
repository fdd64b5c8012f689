import json
import math

import pytest
import torch

from vaescope.core.config import replace
from vaescope.core.errors import VaescopeError
from vaescope.models.networks import build_model
from vaescope.runs import checkpoint as checkpoint_mod
from vaescope.runs.checkpoint import load_run
from vaescope.runs.files import read_metrics, read_trace
from vaescope.training import engine as engine_mod
from vaescope.training import train as train_mod
from vaescope.training.engine import make_optimizer, train_epoch
from vaescope.training.train import train

RUN_FILES = ("model.safetensors", "metrics.csv", "trace.csv", "config.json")


def test_one_step_changes_every_weight(tiny_config, tiny_dataset):
    torch.manual_seed(0)
    model = build_model(tiny_config.model, tiny_dataset.image_shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, 1e-3)
    x = torch.from_numpy(tiny_dataset.x_train[:64])
    step, means = train_epoch(model, optimizer, x, tiny_config.loss, 64, torch.Generator().manual_seed(0),
                              torch.Generator().manual_seed(1))
    assert step == 1
    # the terms add up, and a fresh decoder (logits ~ 0) costs ~ln 2 nats a pixel whatever the image: BCE(x, 1/2)
    assert means["loss"] == pytest.approx(means["reconstruction"] + tiny_config.loss.beta * means["kl"], rel=1e-5)
    assert means["reconstruction"] == pytest.approx(x[0].numel() * math.log(2), rel=0.2)
    for name, value in model.state_dict().items():
        assert not torch.equal(before[name], value), f"{name} did not change"


@pytest.mark.parametrize("preset", ["dense16", "conv16"])
def test_training_lowers_the_loss_and_writes_the_run(tmp_path, tiny_config, tiny_dataset, preset):
    config = replace(tiny_config, **{"model.kind": "conv" if preset == "conv16" else "dense", "train.epochs": 4})
    result = train(config, tmp_path / "run", dataset=tiny_dataset, progress=False)
    for name in RUN_FILES:
        assert (tmp_path / "run" / name).is_file()
    metrics = read_metrics(tmp_path / "run")
    assert [row["epoch"] for row in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["test_loss"] < metrics[0]["test_loss"]
    trace = read_trace(tmp_path / "run")
    assert trace.steps[0] == 0 and trace.steps == sorted(trace.steps) and len(trace.mu_variance[0]) == 4
    assert len(trace.steps) == 1 + metrics[-1]["step"] // 2  # trace_every = 2 minibatches
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored == config.to_dict()
    run = load_run(tmp_path / "run")
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(run.model.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["dense", "conv"])  # conv: channels-last weights and Adam moments
def test_resume_gives_the_same_run_as_no_interruption(tmp_path, tiny_config, tiny_dataset, monkeypatch, kind):
    tiny_config = replace(tiny_config, **{"model.kind": kind})
    quiet = {"dataset": tiny_dataset, "progress": False}
    train(tiny_config, tmp_path / "whole", **quiet)

    real_save = checkpoint_mod.save_checkpoint
    calls = []

    def interrupt_after_first(*args, **kwargs):
        path = real_save(*args, **kwargs)
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as a user's Ctrl-C right after the epoch-1 checkpoint
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config, tmp_path / "cut", **quiet)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    with pytest.raises(VaescopeError, match="already holds a run; pass --resume"):
        train(tiny_config, tmp_path / "cut", **quiet)
    train(tiny_config, tmp_path / "cut", resume=True, **quiet)
    for name in RUN_FILES:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name


def test_resume_of_a_finished_run_changes_nothing(tmp_path, tiny_config, tiny_dataset):
    quiet = {"dataset": tiny_dataset, "progress": False}
    train(tiny_config, tmp_path / "run", **quiet)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    result = train(tiny_config, tmp_path / "run", resume=True, **quiet)
    assert len(result.metrics) == tiny_config.train.epochs
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_nan_loss_stops_with_epoch_and_step_and_keeps_checkpoint(tmp_path, tiny_config, tiny_dataset, monkeypatch):
    real = engine_mod.loss_terms
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls["n"] += torch.is_grad_enabled()  # count training steps, not test evaluation
        if calls["n"] == 12 and torch.is_grad_enabled():  # epoch 2 (8 steps per epoch), step 12
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(engine_mod, "loss_terms", poisoned)
    with pytest.raises(VaescopeError, match=r"NaN or infinite at epoch 2, step 12; the last good checkpoint \(epoch 1\)"):
        train(tiny_config, tmp_path / "run", dataset=tiny_dataset, progress=False)
    latest = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    assert latest["epoch"] == 1
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_resumed_run_keeps_its_config_but_takes_the_callers_execution_keys(tmp_path, tiny_config):
    """train.compile says how a run is computed, not what: a run resumes under another value, and
    under that value; any other difference is refused, naming the key."""
    from vaescope.core.config import EXECUTION_KEYS, replace
    from vaescope.core.errors import VaescopeError
    from vaescope.runs.files import CONFIG_FILE, resolve_run_config

    assert EXECUTION_KEYS == ("train.compile",)
    stored = replace(tiny_config, **{"train.compile": "off"})
    (tmp_path / CONFIG_FILE).write_text(stored.to_json())
    resumed = resolve_run_config(tmp_path, replace(stored, **{"train.compile": "on"}), resume=True)
    assert resumed.train.compile == "on" and replace(resumed, **{"train.compile": "off"}) == stored
    assert resolve_run_config(tmp_path, None, resume=True).train.compile == "off"
    with pytest.raises(VaescopeError, match=r"holds a run of another config \(train.seed differ\)"):
        resolve_run_config(tmp_path, replace(stored, **{"train.seed": 7}), resume=True)
