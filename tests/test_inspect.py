"""vaescope inspect: the report of one model from a run, from Python, from a user's factory;
numbers equal the analyses run directly; known answers on a latent map; refusals."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_OVERRIDES
from torch import nn
from torch.distributions import Independent, Normal

import vaescope
from vaescope.cli import main
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError
from vaescope.inspection import INSPECT_FILE
from vaescope.integrations.monitor import LatentMonitor
from vaescope.measures.gains import reconstruction_gain
from vaescope.measures.run import run_statistics
from vaescope.models.user_model import load_user_model
from vaescope.runs.checkpoint import load_run
from vaescope.runs.files import read_trace
from vaescope.training.train import train

SECTIONS = ["table1", "criteria", "variance-trace", "reconstruction-gain", "generation", "variance-law"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_npz: Path) -> Path:
    config = config_mod.resolve("dense16", overrides=TINY_OVERRIDES + [f"data.source={tiny_npz}"])
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(config, run_dir, progress=False)
    return run_dir


def variables(payload: dict, key: str) -> np.ndarray:
    return np.array([v[key] for v in payload["statistics"]["variables"]])


def test_inspect_a_run_directory(tiny_run, tiny_dataset):
    result = CliRunner().invoke(main, ["inspect", str(tiny_run), "--samples", "200"])
    assert result.exit_code == 0, result.output
    out = tiny_run / "inspect"
    page = (out / "report.html").read_text()
    assert all(f'id="{s}"' in page for s in SECTIONS)
    assert 'src="figures/' not in page and page.count("data:image/png;base64,") >= 5  # self-contained
    payload = json.loads((out / INSPECT_FILE).read_text())
    direct = run_statistics(tiny_run, write=False)
    assert np.allclose(variables(payload, "mu_variance"), direct.mu_variance, rtol=1e-12)
    assert np.allclose(variables(payload, "kl_mean"), direct.kl_mean, rtol=1e-12)
    gain = reconstruction_gain(load_run(tiny_run).model, tiny_dataset.x_test)
    assert np.allclose(payload["reconstruction_gain"]["gain"], gain.gain, rtol=1e-9, atol=1e-9)
    assert payload["trace"]["points"] == len(read_trace(tiny_run).steps)
    assert f"{direct.inactive_count} of 4 variables inactive" in result.output


def test_user_factory_with_the_runs_weights_gives_the_runs_numbers(tiny_run, tiny_npz, tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(textwrap.dedent("""
        from vaescope.models.networks import DenseVAE

        def dense(image_shape):
            return DenseVAE(image_shape, (32, 16), 4)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["inspect", "--model", "user_models:dense", "--weights",
                                       str(tiny_run / "model.safetensors"), "--data", str(tiny_npz), "--out", str(out),
                                       "--samples", "200"])
    assert result.exit_code == 0, result.output
    mine = json.loads((out / INSPECT_FILE).read_text())
    assert np.allclose(variables(mine, "mu_variance"), run_statistics(tiny_run, write=False).mu_variance, rtol=1e-12)
    assert "trace" not in mine  # no trace was given


class HalfCollapsed(nn.Module):
    """Latents (2, 2, 2): channel 0 copies 4 pixels (sigma^2 = 0.25), channel 1 is the prior
    (mu = 0, sigma^2 = 1) for every input. The decoder paints the codes back."""

    def encode(self, x):
        pixels = x.flatten(1)[:, :4].reshape(-1, 1, 2, 2)
        loc = torch.cat([pixels, torch.zeros_like(pixels)], 1)
        scale = torch.cat([torch.full_like(pixels, 0.5), torch.ones_like(pixels)], 1)
        return Independent(Normal(loc, scale), 3)

    def decode(self, z):
        return (4 * z.sum(1, keepdim=True) - 2).repeat_interleave(4, 2).repeat_interleave(4, 3)  # (B, 1, 8, 8)


def test_a_latent_map_gets_a_per_channel_summary(tmp_path, tiny_dataset):
    result = vaescope.inspect(HalfCollapsed(), tiny_dataset.x_test, tmp_path, samples=100)
    channels = result.results["channels"]
    assert [(c["channel"], c["variables"], c["active"]) for c in channels] == [(0, 4, 4), (1, 4, 0)]
    assert channels[1]["sigma2_mean_mean"] == pytest.approx(1.0) and channels[1]["gain_sum"] == 0.0
    assert channels[0]["sigma2_mean_mean"] == pytest.approx(0.25, rel=1e-6)
    gain = np.array(result.results["reconstruction_gain"]["gain"])  # flat order: channel 0 first
    assert np.all(np.abs(gain[:4]) > 1e-3) and np.all(gain[4:] == 0.0)
    assert channels[0]["gain_sum"] == pytest.approx(gain[:4].sum())
    assert result.results["model"]["latent_shape"] == [2, 2, 2]
    assert result.results["generation"]["inactive_zeroed_mean_abs_diff"] > 0  # prior samples of channel 1 move pixels
    # channel 1's posterior is the same for every input: no information, and every rule calls it off
    assert np.allclose(result.results["mutual_information"]["per_variable"][4:], 0.0, atol=1e-7)  # float32 codes
    counts = {r["key"]: r["active_count"] for r in result.results["criteria"]["rules"]}
    assert all(counts[k] == 4 for k in ("mu_variance@0.01", "sigma2_mean@0.8", "kl_mean@0.01", "mi@0.01"))
    assert result.results["criteria"]["polarisation"]["off"] == 4
    markdown = (tmp_path / "report.md").read_text()
    assert "| **1,1,0** |" in markdown and "| 0,1,1 |" in markdown and 'id="channels"' in (tmp_path / "report.html").read_text()


def test_a_monitor_log_dir_is_drawn_as_the_trace(tmp_path, tiny_dataset):
    torch.manual_seed(0)
    model = vaescope.models.networks.DenseVAE((1, 8, 8), (16,), 4)
    with LatentMonitor(model, tiny_dataset.x_test, every=1, log_dir=tmp_path / "monitor", tensorboard=False) as monitor:
        for step in range(3):
            with torch.no_grad():
                model.encoder[-1].bias.add_(0.1)  # a stand-in for training
            monitor.step(step)
    result = vaescope.inspect(model, tiny_dataset, tmp_path / "report", trace=tmp_path / "monitor", samples=100)
    assert result.results["trace"]["points"] == 3 and result.results["data"]["n"] == len(tiny_dataset.x_test)
    assert 'id="variance-trace"' in result.report.read_text()
    with pytest.raises(VaescopeError, match="holds no trace.csv"):
        vaescope.inspect(model, tiny_dataset, tmp_path / "other", trace=tmp_path)


def test_factories_are_called_by_their_signature_and_weights_must_fit(tmp_path, monkeypatch):
    (tmp_path / "factories.py").write_text(textwrap.dedent("""
        import torch
        from vaescope.models.networks import DenseVAE

        def bare():
            return DenseVAE((1, 4, 4), (8,), 2)

        def shaped(image_shape):
            return DenseVAE(image_shape, (8,), 2)

        def configured(image_shape, config):
            assert config.factory == "factories:configured"
            return DenseVAE(image_shape, (8,), 3)

        def broken():
            raise RuntimeError("no GPU here\\nsecond line")

        def not_a_module():
            return 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    shape = (1, 4, 4)
    assert load_user_model("factories:bare", shape).latent_dim == 2
    assert load_user_model("factories:shaped", shape).latent_dim == 2
    assert load_user_model("factories:configured", shape).latent_dim == 3
    with pytest.raises(VaescopeError, match="raised RuntimeError: no GPU here; fix the factory") as err:
        load_user_model("factories:broken", shape)
    assert "\n" not in str(err.value)
    with pytest.raises(VaescopeError, match="returned int"):
        load_user_model("factories:not_a_module", shape)
    with pytest.raises(VaescopeError, match="cannot import"):
        load_user_model("no_such_module_here:make", shape)

    from safetensors.torch import save_file

    source = load_user_model("factories:bare", shape)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_user_model("factories:shaped", shape, tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(VaescopeError, match="do not fit the model 'factories:configured'"):
        load_user_model("factories:configured", shape, tmp_path / "w.safetensors")
    (tmp_path / "w.pt").write_bytes(b"not read")
    with pytest.raises(VaescopeError, match="never unpickles"):
        load_user_model("factories:bare", shape, tmp_path / "w.pt")


@pytest.mark.parametrize("args, message", [
    ([], "give a RUN directory or --model"),
    (["--model", "x:y"], "--model needs --data"),
    (["RUN", "--weights", "w.safetensors"], "go with --model"),
    (["--model", "no_such_module_here:make", "--data", "DATA", "--out", "OUT"], "cannot import 'no_such_module_here'"),
    (["RUN", "--samples", "0"], "--samples is 0"),
])
def test_command_line_refusals_are_one_line(args, message, tiny_run, tiny_npz, tmp_path):
    args = [{"RUN": str(tiny_run), "DATA": str(tiny_npz), "OUT": str(tmp_path)}.get(a, a) for a in args]
    result = CliRunner().invoke(main, ["inspect", *args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_help_says_that_model_runs_user_code():
    result = CliRunner().invoke(main, ["inspect", "--help"])
    assert "IMPORTS AND RUNS YOUR PYTHON CODE" in " ".join(result.output.split())


def test_every_word_of_the_inspect_report_comes_from_inspect_json(tiny_run, tmp_path):
    """The intro, Table 1 and the closing lesson of report.md, read back against inspect.json."""
    from test_sweep import markdown_rows, markdown_section

    out = tmp_path / "inspect"
    result = CliRunner().invoke(main, ["inspect", str(tiny_run), "--samples", "200", "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / INSPECT_FILE).read_text())
    text = (out / "report.md").read_text()
    stats = payload["statistics"]
    intro = text.split("\n\n")[1]
    assert intro.startswith(payload["model"]["description"] + ".")
    assert f"Measured on {payload['data']['description']}" in intro
    assert (f"{stats['inactive_count']} of {stats['latent_dim']} latent variables inactive "
            f"(Var(mu) < {stats['thresholds']['mu_variance']:g})") in intro
    assert f"the largest |Var(mu) + mean sigma^2 - 1| is {stats['variance_law_max_abs_dev']:.3f}" in intro
    assert f"The decoder's likelihood: {payload['model']['likelihood']}" in intro

    table = markdown_rows(markdown_section(text, "table1"))
    assert [int(cells[0]) for cells in table] == [v["index"] for v in stats["variables"]]
    for cells, v in zip(table, stats["variables"], strict=True):
        assert float(cells[1]) == pytest.approx(v["mu_variance"], rel=5e-4)
        assert float(cells[2]) == pytest.approx(v["sigma2_mean"], rel=5e-4)
        assert float(cells[3]) == pytest.approx(v["variance_law"], abs=5e-5)
        assert float(cells[4]) == pytest.approx(v["kl_mean"], abs=5e-5)
        assert cells[-1] == ("active" if v["active"] else "INACTIVE")
    assert sum(cells[-1] == "INACTIVE" for cells in table) == stats["inactive_count"]
    lesson = " ".join(markdown_section(text, "lesson").split())
    assert payload["lesson"]["statements"] and all(s["text"] in lesson for s in payload["lesson"]["statements"])
    assert f"{stats['inactive_count']} of {stats['latent_dim']} latent variables are inactive" in lesson
