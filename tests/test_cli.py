import json
import re

import pytest
from click.testing import CliRunner
from conftest import TINY_OVERRIDES

from vaescope.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_npz):
    out = tmp_path_factory.mktemp("cli") / "run"
    sets = [a for o in TINY_OVERRIDES for a in ("--set", o)]
    result = invoke("train", "--preset", "dense16", "--data", str(tiny_npz), *sets, "--epochs", "2",
                    "--seed", "3", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "epoch 2/2" in result.output and f"vaescope stats {out}" in result.output
    return out


def test_train_then_stats_table(trained_run):
    result = invoke("stats", str(trained_run))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[1].split()[:3] == ["var", "Var(mu)", "mean"]
    rows = [line for line in lines if re.match(r"^\s*\d+\s+\d\.\d{4}e[+-]\d\d", line)]
    assert [int(row.split()[0]) for row in rows] == [0, 1, 2, 3]
    assert all(row.split()[6] in ("active", "INACTIVE") for row in rows)
    assert "variance law" in result.output
    assert json.loads((trained_run / "config.json").read_text())["train"]["seed"] == 3


def test_stats_json_contract_and_files(trained_run):
    result = invoke("stats", str(trained_run), "--json", "--split", "train")
    payload = json.loads(result.output)
    assert payload["split"] == "train" and payload["n"] == 512 and payload["latent_dim"] == 4
    assert payload["inactive_count"] == sum(not v["active"] for v in payload["variables"])
    for v in payload["variables"]:
        assert v["variance_law"] == pytest.approx(v["mu_variance"] + v["sigma2_mean"])
    saved = json.loads((trained_run / "stats-train.json").read_text())
    assert saved == payload
    assert (trained_run / "stats-train.csv").read_text().startswith("index,mu_mean,mu_variance")


def test_stats_threshold_option_changes_the_verdict(trained_run):
    strict = json.loads(invoke("stats", str(trained_run), "--json", "--mu-variance-threshold", "1e9").output)
    assert strict["inactive_count"] == 4 and strict["thresholds"]["mu_variance"] == 1e9
    kept = json.loads(invoke("stats", str(trained_run), "--json", "--kl-threshold", "0.5").output)["thresholds"]
    assert kept == {"mu_variance": 0.01, "sigma2_mean": 0.8, "kl_mean": 0.5}  # the others: the run's config


@pytest.mark.parametrize("command", ["stats", "prune"])
def test_a_bad_threshold_is_refused_as_a_config_value(trained_run, tmp_path, command):
    extra = ["--out", str(tmp_path / "pruned")] if command == "prune" else []
    result = invoke(command, str(trained_run), *extra, "--kl-threshold", "-1")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: invalid config: stats.kl_threshold must be positive"


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'; choose one of"),
    (["train", "--preset", "dense16", "--set", "model.latent_dim=0"], "model.latent_dim is 0; it must be at least 1"),
    (["train", "--preset", "dense16", "--set", "train.batch_size=-5"], "train.batch_size is -5"),
    (["train", "--preset", "dense16", "--set", "train.epochs=ten"], "train.epochs must be an integer"),
    (["train", "--preset", "dense16", "--set", "train.epoch=3"], "unknown key 'train.epoch'"),
    (["train", "--preset", "dense16", "--set", "noequals"], "is not of the form section.key=value"),
    (["train", "--preset", "dense16", "--epochs", "0"], "Invalid value for '--epochs': 0 is not in the range x>=1"),
    (["train", "--resume"], "--resume needs --out"),
    (["train", "--preset", "dense16", "--config", "/nonexistent.toml"], "config file /nonexistent.toml does not exist"),
    (["stats", "/nonexistent/run"], "run directory /nonexistent/run does not exist"),
])
def test_bad_options_give_one_clear_line(args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_presets_lists_the_seed_architectures():
    output = invoke("presets").output
    assert "dense16        dense 256-64-32-16" in output and "dense3" in output and "conv16" in output
