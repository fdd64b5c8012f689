"""Sweeps on tiny data: every run an ordinary run directory equal to `train`'s, reuse, the lock, a
failed run retried once, Ray, and a killed sweep finished with the same weights."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_OVERRIDES

from vaescope.cli import main as cli
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError
from vaescope.core.storage import directory_lock
from vaescope.measures.criteria import criteria_table
from vaescope.measures.run import run_statistics
from vaescope.runs.checkpoint import load_checkpoint, load_run
from vaescope.runs.files import read_metrics
from vaescope.sweeps.execute import sweep
from vaescope.sweeps.plan import RunSpec, expand, parse_grid, point_groups, point_name
from vaescope.sweeps.tasks import DataBundle, run_group, run_one
from vaescope.training.train import train

GRID = {"model.latent_dim": [1, 3]}


def weights(run_dir: Path) -> bytes:
    return (run_dir / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, tiny_npz):
    """2 latent sizes x 2 seeds on 2 local workers of 1 thread."""
    cfg = config_mod.resolve("dense16", overrides=[*TINY_OVERRIDES, f"data.source={tiny_npz}"])
    out = tmp_path_factory.mktemp("sweep")
    rows = sweep(cfg, out, GRID, seeds=2, workers=2, threads=1, progress=False)
    return cfg, out, rows


def test_grid_is_parsed_and_bad_grids_refused_in_one_line(tiny_config, tmp_path):
    assert parse_grid(["model.latent_dim=2, 4,8", "loss.beta=0.5,1", "model.hidden=[8]"]) == {
        "model.latent_dim": [2, 4, 8], "loss.beta": [0.5, 1], "model.hidden": [[8]]}
    cases = {
        ("model.latent_dim=",): "--grid model.latent_dim has an empty value list",
        ("model.latent_dim=2,,4",): "empty value",
        ("model.latent_dim",): "not of the form section.key=v1,v2",
        ("model.latent_dim=2", "model.latent_dim=4"): "given twice",
        ("train.seed=1,2",): "--seeds",
        ("model.latent_dim=2,2",): "lists a value twice",
    }
    for texts, message in cases.items():
        with pytest.raises(VaescopeError, match=message):
            parse_grid(list(texts))
    for texts, message in {("model.latnt_dim=2",): "unknown key 'model.latnt_dim'",
                           ("model.latent_dim=2,big",): "model.latent_dim must be an integer, got 'big'",
                           ("loss.beta=-1",): "loss.beta is -1.0"}.items():
        with pytest.raises(VaescopeError, match=message) as err:
            expand(tiny_config, parse_grid(list(texts)), [0], tmp_path, threads=1)
        assert "\n" not in str(err.value) and str(err.value).startswith("--grid ")
    result = CliRunner().invoke(cli, ["sweep", "--preset", "dense16", "--grid", "model.latent_dim=4,x",
                                      "--out", str(tmp_path / "never")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert not (tmp_path / "never").exists()  # refused before anything was written


def test_point_names():
    assert point_name({"model.latent_dim": 8, "loss.beta": 0.5}, "dense16") == "latent_dim8-beta0.5"
    assert point_name({}, "dense16") == "dense16"
    assert point_name({"model.hidden": [64, 32], "data.source": "synthetic:factors=3"}, "x") == \
        "hidden64x32-sourcesynthetic_factors_3"
    assert point_name({"train.lr": 0.1, "model.lr": 1}, "x") == "train_lr0.1-model_lr1"


def test_every_run_is_an_ordinary_run_equal_to_train(local_sweep, tmp_path):
    cfg, out, rows = local_sweep
    assert [r["run"] for r in rows] == ["latent_dim1-seed0", "latent_dim1-seed1", "latent_dim3-seed0", "latent_dim3-seed1"]
    for row in rows:
        run_dir = out / "runs" / row["run"]
        assert row["status"] == "trained" and row["attempts"] == 1 and row["run_dir"] == f"runs/{row['run']}"
        run = load_run(run_dir)
        assert run.config.model.latent_dim == row["model.latent_dim"] == row["latent_dim"]
        assert run.config.train.seed == row["seed"] and run.config.train.threads == 1
        stats = run_statistics(run, write=False)
        assert row["active_mu_variance"] == int(stats.active.sum())
        assert row["inactive_kl"] == int(stats.inactive_by_kl.sum())
        polarised = criteria_table(stats).polarisation
        assert row["in_between_variables"] == np.flatnonzero(polarised == "between").tolist()
        assert row["variance_law_max_abs_dev"] == pytest.approx(stats.variance_law_max_abs_dev)
        assert (run_dir / "stats-test.json").is_file()
    # a sweep point is exactly the run `train` makes of the same config
    reference = config_mod.replace(cfg, **{"model.latent_dim": 3, "train.seed": 1})
    train(reference, tmp_path / "alone", progress=False)
    assert weights(tmp_path / "alone") == weights(out / "runs" / "latent_dim3-seed1")

    saved = json.loads((out / "sweep.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert saved["grid"] == {"model.latent_dim": [1, 3]} and saved["seeds"] == [0, 1]
    assert {r["group"] == {} for r in saved["intrinsic_dimension"]} == {True}
    reading = saved["intrinsic_dimension"][0]["mu_variance"]
    assert reading["latent_sizes"] == [1, 3]
    with (out / "sweep.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["run"] for r in table] == [r["run"] for r in rows]
    assert [int(r["active_mu_variance"]) for r in table] == [r["active_mu_variance"] for r in rows]
    html = (out / "report.html").read_text()
    assert "The intrinsic dimension" in html and "data:image/png;base64," in html


def test_finished_runs_are_reused_and_the_folder_is_locked(local_sweep):
    cfg, out, rows = local_sweep
    before = {r["run"]: weights(out / "runs" / r["run"]) for r in rows}
    again = sweep(cfg, out, GRID, seeds=2, workers=2, threads=1, progress=False, report=False)
    assert {r["status"] for r in again} == {"reused"}
    assert {k: v for k, v in again[0].items() if k != "status"} == {k: v for k, v in rows[0].items() if k != "status"}
    assert {r["run"]: weights(out / "runs" / r["run"]) for r in again} == before
    with directory_lock(out, what="sweep folder"), \
            pytest.raises(VaescopeError, match=f"sweep folder .* is in use by process {os.getpid()}"):
        sweep(cfg, out, GRID, seeds=2, progress=False)
    other = config_mod.replace(cfg, **{"train.epochs": 4})
    with pytest.raises(VaescopeError, match="holds a run of another config \\(train.epochs differ\\)"):
        sweep(other, out, GRID, seeds=2, progress=False)


def test_a_failed_run_is_retried_once_and_the_others_go_on(tiny_config, tmp_path, caplog):
    blocked = tmp_path / "runs" / "latent_dim1-seed0"
    with directory_lock(blocked):  # another process is training this run
        rows = sweep(tiny_config, tmp_path, GRID, seeds=1, workers=2, threads=1, progress=False, report=False)
    failed, ok = rows[0], rows[1]
    assert failed["status"] == "failed" and failed["attempts"] == 2
    assert f"is in use by process {os.getpid()}" in failed["error"]
    assert ok["status"] == "trained" and (tmp_path / "runs" / ok["run"] / "model.safetensors").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.name == "vaescope.sweeps.execute"]
    assert any("latent_dim1-seed0 failed" in w and "once more" in w for w in warnings)
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"][0]["status"] == "failed"
    # the next sweep trains what failed and reuses the rest
    again = sweep(tiny_config, tmp_path, GRID, seeds=1, workers=2, threads=1, progress=False, report=False)
    assert [r["status"] for r in again] == ["trained", "reused"]


def test_known_factors_are_matched_to_active_variables(tiny_config, tmp_path, tiny_dataset):
    # the bar position of the tiny images as a known factor
    bundle = DataBundle(tiny_dataset, ("bar_position",), tiny_dataset.y_test[:, None].astype(np.float32))
    cfg = config_mod.replace(tiny_config, **{"train.epochs": 6, "model.latent_dim": 2})
    row = run_one(RunSpec("factor-seed0", {}, 0, cfg, str(tmp_path / "run")), bundle)
    factors = row["factors"]
    assert factors["names"] == ["bar_position"] and np.array(factors["correlation"]).shape == (2, 1)
    match = factors["matches"][0]
    assert match["variable"] in row["active_variables"]
    mu = load_run(tmp_path / "run").model.encode(
        __import__("torch").as_tensor(tiny_dataset.x_test).float() / 255)[0].detach().numpy()
    expected = np.corrcoef(mu[:, match["variable"]], tiny_dataset.y_test)[0, 1]
    assert match["correlation"] == pytest.approx(expected, abs=1e-4)
    # R^2 of the factor on every active variable, by least squares with an intercept, computed here
    design = np.column_stack([mu[:, row["active_variables"]], np.ones(len(mu))]).astype(np.float64)
    y = tiny_dataset.y_test.astype(np.float64)
    residual = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    assert match["r2_active"] == pytest.approx(1 - residual @ residual / ((y - y.mean()) @ (y - y.mean())), abs=1e-3)


@pytest.mark.slow
def test_ray_runs_the_same_runs(local_sweep, tmp_path):
    pytest.importorskip("ray")
    cfg, out, rows = local_sweep
    ray_rows = sweep(cfg, tmp_path, GRID, seeds=2, threads=1, ray="local", progress=False)
    assert [r["status"] for r in ray_rows] == ["trained"] * 4
    for row in ray_rows:
        assert weights(tmp_path / "runs" / row["run"]) == weights(out / "runs" / row["run"])
    keep = ("active_mu_variance", "test_loss", "variance_law_max_abs_dev")
    assert [[r[k] for k in keep] for r in ray_rows] == [[r[k] for k in keep] for r in rows]


def sweep_command(npz: Path, out: Path, epochs: int) -> list[str]:
    sets = [a for o in TINY_OVERRIDES if not o.startswith("train.epochs") for a in ("--set", o)]
    return ["sweep", "--preset", "dense16", *sets, "--data", str(npz), "--epochs", str(epochs),
            "--grid", "model.latent_dim=2,3", "--seeds", "2", "--workers", "2", "--threads-per-worker", "1",
            "--out", str(out), "--quiet"]


FAULT_SITE = Path(__file__).with_name("faultsite")  # its sitecustomize arms VAESCOPE_TEST_FAULT


@pytest.mark.slow
def test_a_killed_sweep_finishes_with_the_weights_of_an_uninterrupted_one(tmp_path, tiny_npz):
    """Killed (SIGKILL to the sweep and its workers) right after the 4th epoch's checkpoint of
    ``latent_dim2-seed0`` is in place, in the worker process that trains it."""
    epochs = 12
    killed, marker = tmp_path / "killed", tmp_path / "marker"
    first = killed / "runs" / "latent_dim2-seed0"
    env = dict(os.environ, VAESCOPE_TEST_FAULT=f"latest.json|{first.name}|4|{marker}",
               PYTHONPATH=os.pathsep.join([str(FAULT_SITE), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "vaescope.cli", *sweep_command(tiny_npz, killed, epochs)]
    with open(tmp_path / "child.log", "w") as child_log:
        child = subprocess.Popen(command, stdout=child_log, stderr=subprocess.STDOUT, start_new_session=True,
                                 env=env)
    deadline = time.monotonic() + 180
    try:
        while not marker.exists():
            assert child.poll() is None, (tmp_path / "child.log").read_text()
            assert time.monotonic() < deadline, "the sweep never reached its fault point"
            time.sleep(0.02)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the sweep and its workers, as a closed terminal would
        child.wait()
    assert load_checkpoint(first).meta["epoch"] == 4
    interrupted = [d for d in (killed / "runs").iterdir() if not (d / "model.safetensors").exists()]
    assert first in interrupted
    result = CliRunner().invoke(cli, sweep_command(tiny_npz, killed, epochs))
    assert result.exit_code == 0, result.output
    rows = json.loads((killed / "sweep.json").read_text())["rows"]
    assert {r["status"] for r in rows if killed / r["run_dir"] in interrupted} <= {"resumed", "trained"}
    assert next(r for r in rows if r["run"] == first.name)["status"] == "resumed"

    reference = tmp_path / "reference"
    assert CliRunner().invoke(cli, sweep_command(tiny_npz, reference, epochs)).exit_code == 0
    for row in rows:
        name = row["run"]
        assert weights(killed / "runs" / name) == weights(reference / "runs" / name), name
        assert load_checkpoint(killed / "runs" / name).meta["epoch"] == epochs


def test_curves_of_a_two_key_grid_are_read_apart(tmp_path):
    """Rows of a latent size x beta grid: one intrinsic-dimension reading and one curve per beta."""
    from vaescope.sweeps.plan import Execution
    from vaescope.sweeps.report import write_results, write_sweep_report

    cfg = config_mod.resolve("dense16")
    grid = {"model.latent_dim": [2, 4, 8], "loss.beta": [0.5, 2.0]}
    active = {0.5: {2: 2, 4: 3, 8: 3}, 2.0: {2: 2, 4: 4, 8: 8}}  # levels at 3; still growing
    rows = []
    for beta, counts in active.items():
        for size, count in counts.items():
            row = {"run": f"latent_dim{size}-beta{beta}-seed0", "model.latent_dim": size, "loss.beta": beta,
                   "seed": 0, "latent_dim": size, "test_loss": 40.0 - count, "test_reconstruction": 30.0,
                   "test_kl": 10.0, "variance_law_max_abs_dev": 0.1, "seconds": 1.0, "status": "trained",
                   "attempts": 1, "error": "", "run_dir": "runs/x", "in_between": 0}
            for criterion in ("mu_variance", "sigma2", "kl"):
                row[f"active_{criterion}"], row[f"inactive_{criterion}"] = count, size - count
            rows.append(row)
    results = write_results(tmp_path, cfg, grid, [0], Execution(2, 1), rows)
    readings = {r["group"]["loss.beta"]: r["mu_variance"] for r in results["intrinsic_dimension"]}
    assert readings[0.5]["value"] == 3 and readings[0.5]["latent_size"] == 4
    assert readings[2.0]["value"] is None and "every variable is active" in readings[2.0]["reason"]
    write_sweep_report(tmp_path, results)
    markdown = (tmp_path / "report.md").read_text()
    assert "| loss.beta = 0.5 | Var(mu) < 0.01 | **3** |" in markdown
    assert "| loss.beta = 2.0 | Var(mu) < 0.01 | not reached |" in markdown
    with (tmp_path / "sweep.csv").open(newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:3] == ["run", "model.latent_dim", "loss.beta"]


def test_the_seeds_of_a_point_are_one_task_split_only_to_feed_idle_workers(tiny_config, tmp_path):
    grid = {"model.latent_dim": [2, 3]}
    specs = expand(tiny_config, grid, [0, 1, 2], tmp_path, threads=1)
    names = lambda groups: [[s.name for s in g] for g in groups]
    two_points = point_groups(specs, workers=2)
    assert names(two_points) == [[f"latent_dim2-seed{s}" for s in range(3)], [f"latent_dim3-seed{s}" for s in range(3)]]
    one_point = [s for s in specs if s.point["model.latent_dim"] == 2]
    assert [[s.seed for s in g] for g in point_groups(one_point, workers=2)] == [[0, 2], [1]]
    assert [[s.seed for s in g] for g in point_groups(one_point, workers=1)] == [[0, 1, 2]]


def test_a_group_trains_its_seeds_together_and_reports_each_run(tiny_config, tmp_path, tiny_dataset):
    """run_group: the seeds of a point stacked (each as a separate run within float tolerance), each
    run's own row and status; a run that cannot train gets its error line, the others their rows."""
    specs = expand(config_mod.replace(tiny_config, **{"train.epochs": 2}), {}, [0, 1, 2], tmp_path, threads=1)
    Path(specs[2].run_dir).mkdir(parents=True)  # a run of another config is in the way of seed 2
    (Path(specs[2].run_dir) / "config.json").write_text(json.dumps(
        config_mod.replace(specs[2].config, **{"model.latent_dim": 7}).to_dict()))
    bundle = DataBundle(tiny_dataset)
    rows = run_group(specs, bundle)
    assert [r["status"] for r in rows[:2]] == ["trained", "trained"]
    assert isinstance(rows[2], str) and "model.latent_dim" in rows[2]
    for spec, row in zip(specs[:2], rows[:2]):
        alone = tmp_path / f"alone{spec.seed}"
        train(spec.config, alone, dataset=tiny_dataset, progress=False)
        reference = load_run(alone).model.state_dict()
        for key, value in load_run(spec.run_dir).model.state_dict().items():
            torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-6)
        assert row["test_loss"] == pytest.approx(read_metrics(alone)[-1]["test_loss"], rel=1e-5)
    assert [r["status"] for r in run_group(specs[:2], bundle)] == ["reused", "reused"]


def markdown_section(text: str, anchor: str) -> str:
    """The body of the section ``<a id="anchor">`` of a report.md, up to the next section."""
    start = text.index(f'<a id="{anchor}"></a>')
    end = text.find("<a id=", start + 1)
    return text[start:end if end > 0 else None]


def markdown_rows(section: str) -> list[list[str]]:
    """The cells of every body row of the tables in ``section``, bold marks removed."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    rows = [[cell.strip().strip("*") for cell in line.strip("|").split("|")] for line in lines]
    return [row for row in rows if not set("".join(row)) <= set("- ")][1:]  # skip the header and --- lines


def test_every_word_of_the_sweep_report_comes_from_sweep_json(local_sweep):
    """Each number and name of report.md's intro, intrinsic-dimension, active and run tables is
    read back and compared with sweep.json: the report describes its own results (written again
    here: another test sweeps into the same folder with report=False)."""
    cfg, out, _ = local_sweep
    sweep(cfg, out, GRID, seeds=2, workers=1, threads=1, progress=False)
    saved = json.loads((out / "sweep.json").read_text())
    text = (out / "report.md").read_text()
    rows = {r["run"]: r for r in saved["rows"]}

    intro = text.split("\n\n")[1]
    assert f"Config `{saved['config']['name']}` on data `{saved['config']['data']['source']}`" in intro
    assert f"{saved['config']['train']['epochs']} epochs" in intro
    assert f"seeds {', '.join(map(str, saved['seeds']))}: {len(saved['rows'])} runs" in intro
    assert "`model.latent_dim` = " + ", ".join(map(str, saved["grid"]["model.latent_dim"])) in intro

    table = markdown_rows(markdown_section(text, "runs"))
    assert [cells[0] for cells in table] == list(rows)
    for name, size, seed, status, active, loss, reconstruction, law, _time in table:
        row = rows[name]
        assert (int(size), int(seed), status) == (row["model.latent_dim"], row["seed"], row["status"])
        assert active == f"{row['active_mu_variance']}/{row['active_sigma2']}/{row['active_kl']}"
        assert float(loss) == pytest.approx(row["test_loss"], abs=0.005)
        assert float(reconstruction) == pytest.approx(row["test_reconstruction"], abs=0.005)
        assert float(law) == pytest.approx(row["variance_law_max_abs_dev"], abs=0.0005)

    readings = saved["intrinsic_dimension"][0]
    intrinsic = markdown_rows(markdown_section(text, "intrinsic"))
    assert len(intrinsic) == 3
    for cells, key in zip(intrinsic, ("mu_variance", "sigma2", "kl"), strict=True):
        reading = readings[key]
        assert cells[2] == f"{reading['value']:g}" and cells[4] == reading["reason"]
        assert cells[3] == ", ".join(f"{s}: {m:g}" for s, m in zip(reading["latent_sizes"], reading["median_active"],
                                                                       strict=True))

    active = markdown_rows(markdown_section(text, "active"))
    for cells in active:
        size = int(cells[1])
        runs = sorted((r for r in saved["rows"] if r["model.latent_dim"] == size), key=lambda r: r["seed"])
        assert cells[2] == ", ".join(f"{r['active_mu_variance']} (seed {r['seed']})" for r in runs)
        assert float(cells[3]) == np.median([r["active_mu_variance"] for r in runs])
        assert cells[5] == ", ".join(str(r["in_between"]) for r in runs)
    assert sorted(int(cells[1]) for cells in active) == saved["grid"]["model.latent_dim"]
