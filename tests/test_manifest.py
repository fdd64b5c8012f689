"""The manifest of a finished run: the SHA-256 of its final files, checked by every reader.

A flipped byte in the weights is a different model that safetensors cannot notice (it checks the
structure, not the values); the manifest is what refuses it, naming the file and the way back.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_OVERRIDES, LogLines
from safetensors.torch import load_file

from vaescope.cli import main as cli
from vaescope.core import config as config_mod
from vaescope.core.errors import VaescopeError
from vaescope.runs import checkpoint
from vaescope.runs import files as rundir
from vaescope.runs.checkpoint import load_run
from vaescope.runs.manifest import FINAL_FILES, MANIFEST_FILE, verify_run, write_manifest
from vaescope.training.train import train


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_npz) -> Path:
    """One finished tiny run; tests work on copies of it."""
    cfg = config_mod.resolve("dense16", overrides=[*TINY_OVERRIDES, f"data.source={tiny_npz}"])
    return train(cfg, tmp_path_factory.mktemp("finished") / "run", progress=False).run_dir


@pytest.fixture()
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def flip_first_weight(path: Path) -> None:
    """Flip the lowest bit of the first tensor byte: a float's last mantissa bit, a valid file."""
    raw = bytearray(path.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    raw[8 + header] ^= 0x01
    path.write_bytes(bytes(raw))


def errors(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("Error:")]


def test_the_final_file_names_are_those_of_the_run_directory():
    assert FINAL_FILES == (rundir.CONFIG_FILE, checkpoint.WEIGHTS_FILE, rundir.METRICS_FILE, rundir.TRACE_FILE,
                           rundir.TIMING_FILE)


def test_a_finished_run_records_the_sha256_of_each_final_file(finished):
    manifest = json.loads((finished / MANIFEST_FILE).read_text())
    assert manifest["format"] == 1 and sorted(manifest["files"]) == sorted(FINAL_FILES)
    for name, entry in manifest["files"].items():
        raw = (finished / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw)}


def test_a_flipped_byte_in_the_weights_is_refused_by_stats(run):
    original = {k: v.clone() for k, v in load_file(run / "model.safetensors").items()}
    flip_first_weight(run / "model.safetensors")
    flipped = load_file(run / "model.safetensors")  # safetensors itself sees a valid file ...
    assert any(not torch.equal(original[k], flipped[k]) for k in original)  # ... of other weights
    result = CliRunner().invoke(cli, ["stats", str(run)])
    assert result.exit_code == 2
    assert errors(result.output) == [(
        f"Error: {run}/model.safetensors changed since the run finished (its SHA-256 is not the one in manifest.json); "
        f"rebuild it from the last good checkpoint with 'vaescope train --out {run} --resume', or retrain the run")]
    assert not (run / "stats-test.json").exists()


def test_without_its_manifest_the_flipped_weights_would_load(run):
    """Control: the same flipped file with the manifest deleted loads (an older run's case), so the
    refusal above is the manifest's doing."""
    flip_first_weight(run / "model.safetensors")
    (run / MANIFEST_FILE).unlink()
    assert load_run(run).config.model.latent_dim == 4
    result = CliRunner().invoke(cli, ["verify", str(run)])
    assert result.exit_code == 2
    assert errors(result.output) == [(
        f"Error: {run} has no manifest.json: the run is unfinished, or was written before vaescope recorded "
        f"manifests; 'vaescope train --out {run} --resume' finishes it and writes one")]


def test_verify_names_each_changed_or_missing_file(run):
    result = CliRunner().invoke(cli, ["verify", str(run)])
    assert result.exit_code == 0
    assert result.output.strip() == (f"{run}: 5 files match manifest.json (config.json, model.safetensors, "
                                     "metrics.csv, trace.csv, timing.csv)")
    flip_first_weight(run / "model.safetensors")
    (run / "metrics.csv").unlink()
    result = CliRunner().invoke(cli, ["verify", str(run)])
    assert result.exit_code == 2
    lines = errors(result.output)
    assert len(lines) == 2
    assert lines[0].startswith(f"Error: {run}/model.safetensors changed since the run finished")
    assert lines[1].startswith(f"Error: {run}/metrics.csv is missing (manifest.json lists it); rebuild it from")
    with pytest.raises(VaescopeError, match=r"model.safetensors changed .* \(and 1 more file: vaescope verify "):
        load_run(run)


def test_an_appended_byte_is_a_change_too(run):
    with open(run / "trace.csv", "a") as handle:
        handle.write("\n")
    assert verify_run(run).changed == ["trace.csv"]


def test_resume_rewrites_changed_files_from_the_last_checkpoint(run, finished):
    flip_first_weight(run / "model.safetensors")
    config = json.loads((run / "config.json").read_text())
    config["loss"]["beta"] = 4.0  # an edit that would make a resumed run another run
    (run / "config.json").write_text(json.dumps(config))
    (run / "trace.csv").write_text("step,epoch\n")
    with LogLines() as lines:
        result = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "model.safetensors", "trace.csv"):
        assert f"{run}/{name} changed since the run finished (its SHA-256 is not the one in manifest.json); " \
               "rewriting it from the last checkpoint" in lines
    for name in (*FINAL_FILES, MANIFEST_FILE):
        assert (run / name).read_bytes() == (finished / name).read_bytes(), name
    assert verify_run(run).intact


def test_resuming_an_intact_run_touches_nothing(run):
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    with LogLines() as lines:
        train(None, run, resume=True, progress=False)
    assert f"{run} is already trained (3 epochs)" in lines
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()} == before


def test_without_a_checkpoint_the_way_back_is_to_retrain(run):
    shutil.rmtree(run / "checkpoints")
    flip_first_weight(run / "model.safetensors")
    with pytest.raises(VaescopeError, match=r"model.safetensors changed since the run finished \(.*\); retrain the "
                                            r"run \(no checkpoint is left to rebuild it from\)$"):
        load_run(run)


def test_a_damaged_manifest_is_refused_and_resume_writes_it_again(run, finished):
    (run / MANIFEST_FILE).write_text('{"format": 1, "files": ')
    with pytest.raises(VaescopeError, match=rf"manifest {run}/manifest.json is not valid JSON \(.*\); delete it, then "
                                            rf"'vaescope train --out {run} --resume' rebuilds the final files"):
        load_run(run)
    (run / MANIFEST_FILE).unlink()
    train(None, run, resume=True, progress=False)
    assert (run / MANIFEST_FILE).read_bytes() == (finished / MANIFEST_FILE).read_bytes()


@pytest.mark.parametrize("name", ["../config.json", "/etc/passwd", "checkpoints/../../x", "a\\b", "manifest.json", ""])
def test_a_manifest_names_only_files_of_its_run(run, name):
    entry = {"sha256": "0" * 64, "bytes": 1}
    (run / MANIFEST_FILE).write_text(json.dumps({"format": 1, "files": {name: entry}}))
    with pytest.raises(VaescopeError, match=r"manifest.json names .*, not a file of its run directory; refusing it"):
        verify_run(run)
    with pytest.raises(VaescopeError, match="not a file of its run directory"):
        write_manifest(run, [name])


@pytest.mark.parametrize("manifest, what", [
    ({"format": 2, "files": {}}, "is not a vaescope manifest"),
    ({"format": 1, "files": {"config.json": {"sha256": "xyz", "bytes": 3}}}, "malformed entry for config.json"),
    ({"format": 1, "files": {"config.json": {"sha256": "0" * 64, "bytes": "3"}}}, "malformed entry for config.json"),
    ([1, 2], "is not a vaescope manifest"),
])
def test_a_malformed_manifest_is_one_line(run, manifest, what):
    (run / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(VaescopeError, match=what) as caught:
        load_run(run)
    assert "\n" not in str(caught.value)


def test_write_manifest_lists_the_files_present(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "extra.json").write_bytes(b"x" * 10)
    write_manifest(tmp_path, [*FINAL_FILES, "extra.json"])
    files = json.loads((tmp_path / MANIFEST_FILE).read_text())["files"]
    assert files == {"config.json": {"sha256": hashlib.sha256(b"{}").hexdigest(), "bytes": 2},
                     "extra.json": {"sha256": hashlib.sha256(b"x" * 10).hexdigest(), "bytes": 10}}
