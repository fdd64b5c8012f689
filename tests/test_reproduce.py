"""``vaescope reproduce`` end to end on a tiny dataset with tiny models: files, keys, reuse, extension."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_OVERRIDES, LogLines

from vaescope import reproduce as reproduce_mod
from vaescope.cli import main
from vaescope.core.errors import VaescopeError
from vaescope.data.dataset import Dataset
from vaescope.reports.html import Paragraph, Section
from vaescope.reproduce import Context, Step, default_steps, make_settings, reproduce
from vaescope.runs.checkpoint import load_run

SECTION_IDS = ["summary", "variance-trace", "table1", "generation", "reconstruction-gain", "variance-law",
               "no-kl", "run-to-run", "noise-collapse", "kl-ablation", "trajectories"]
TINY_EPOCHS = {"dense16": 2, "dense16_no_kl": 2, "conv16": 1}


def _settings(tiny_npz: Path, **changes: Any):
    overrides = tuple(o for o in TINY_OVERRIDES if not o.startswith("train.epochs"))
    kwargs: dict[str, Any] = {"seeds": 2, "overrides": overrides, "epochs": TINY_EPOCHS,
                              "data_source": str(tiny_npz), "generation_samples": 50, "progress": False}
    kwargs.update(changes)
    return make_settings(quick=True, **kwargs)


@pytest.fixture(scope="module")
def tiny_reproduction(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Dataset,
                      tiny_npz: Path) -> tuple[Path, dict[str, Any], list[str], Path]:
    out = tmp_path_factory.mktemp("repro")
    with LogLines() as lines:
        results = reproduce(_settings(tiny_npz), out, dataset=tiny_dataset)
    return out, results, lines, tiny_npz


def _encode(out: Path, name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
    run = load_run(out / "runs" / name)
    with torch.no_grad():
        mu, logvar = run.model.encode(torch.from_numpy(x).float() / 255)
    return mu.double().numpy(), logvar.double().numpy(), run


def test_results_match_an_independent_computation_from_the_stored_runs(tiny_reproduction, tiny_dataset) -> None:
    out, _, _, _ = tiny_reproduction
    stored = json.loads((out / "results.json").read_text())
    for model in ("dense16", "conv16", "dense16_no_kl"):
        counts, devs = [], []
        for seed in (0, 1):
            mu, logvar, _ = _encode(out, f"{model}-seed{seed}", tiny_dataset.x_test)
            mu_variance = mu.var(axis=0)  # population variance over the test split
            counts.append(int((mu_variance < 0.01).sum()))
            devs.append(float(np.abs(mu_variance + np.exp(logvar).mean(axis=0) - 1).max()))
        assert stored["models"][model]["inactive_count"] == counts
        assert stored["models"][model]["variance_law_max_abs_dev"] == pytest.approx(devs, rel=1e-6)
    # reconstruction gain of each dense16 variable: BCE (summed over pixels) with mu_j = 0 minus without
    mu, _, run = _encode(out, "dense16-seed0", tiny_dataset.x_test)
    x = torch.from_numpy(tiny_dataset.x_test).float().flatten(1) / 255

    def error(z: np.ndarray) -> float:
        with torch.no_grad():
            logits = run.model.decode(torch.from_numpy(z).float()).flatten(1)
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1).mean())

    base = error(mu)
    expected = [error(np.where(np.arange(mu.shape[1]) == j, 0.0, mu)) - base for j in range(mu.shape[1])]
    assert stored["reconstruction_gain"]["dense16"] == pytest.approx(expected, abs=1e-3)
    assert stored["run_to_run"]["dense16"]["counts"] == stored["models"]["dense16"]["inactive_count"]
    assert stored["variance_law"]["stationary_check"]["max_abs_error"] < 1e-6
    assert stored["seeds"] == [0, 1] and stored["mode"] == "quick"
    assert [r["key"] for r in stored["references"]][:3] == ["kl", "sparsity", "stationary"]


def test_report_has_every_section_and_embeds_every_figure(tiny_reproduction) -> None:
    out, _, _, _ = tiny_reproduction
    page = (out / "report.html").read_text()
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert ids == [*SECTION_IDS, "references"]
    assert "Sparsity in Variational Autoencoders" in page and "the seed" not in page.lower()
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(pngs) >= 12  # 8 static; noise collapse, KL ablation (2), trajectories (2) when not skipped
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(pngs) + 1  # and the trajectories animation
    assert sum(s.startswith("data:image/png;base64,") for s in sources) == len(pngs)
    assert sum(s.startswith("data:image/gif;base64,") for s in sources) == 1
    markdown = (out / "report.md").read_text()
    for name in pngs:
        assert f"(figures/{name})" in markdown


def test_progress_names_steps_models_and_epochs(tiny_reproduction) -> None:
    _, _, lines, _ = tiny_reproduction
    text = "\n".join(lines)
    assert "[1/11] train or reuse" in text and "[8/11] run-to-run" in text
    # every run a step reads trained together, once (dense16 seed 0 is read by two steps), before the
    # first step that reads them: the static models for each seed, then the dynamic experiments' models
    assert re.search(r"^training 9 runs together .*: dense16-seed0, dense16-seed1, dense16_no_kl-seed0, "
                     r"dense16_no_kl-seed1, conv16-seed0, conv16-seed1, dense3-seed0, dense3_no_sampling-seed0, "
                     r"dense2-seed0$", text, re.MULTILINE)
    assert not re.search(r"^training (dense3|dense2)", text, re.MULTILINE)  # not again, one by one
    assert re.search(r"^dense16_no_kl-seed1: epoch 2/2 ", text, re.MULTILINE)


def test_second_run_reuses_every_model(tiny_reproduction, tiny_dataset: Dataset) -> None:
    out, first, _, tiny_npz = tiny_reproduction
    with LogLines() as lines:
        again = reproduce(_settings(tiny_npz), out, dataset=tiny_dataset)
    assert not any(line.startswith("training ") for line in lines)
    assert all(all(again["models"][m]["reused"]) for m in again["models"])
    assert again["models"]["dense16"]["inactive_count"] == first["models"]["dense16"]["inactive_count"]
    assert again["reconstruction_gain"]["dense16"] == first["reconstruction_gain"]["dense16"]


def test_changed_config_retrains_only_that_model(tmp_path: Path, tiny_dataset: Dataset, tiny_npz: Path) -> None:
    steps = [s for s in default_steps(_settings(tiny_npz)) if s.id == "train"]
    reproduce(_settings(tiny_npz, seeds=1), tmp_path, steps=steps, dataset=tiny_dataset)
    changed = _settings(tiny_npz, seeds=1, epochs={**TINY_EPOCHS, "dense16": 3})
    with LogLines() as lines:
        results = reproduce(changed, tmp_path, steps=steps, dataset=tiny_dataset)
    assert any("different config (train.epochs)" in line for line in lines)
    assert results["models"]["dense16"]["reused"] == [False] and results["models"]["conv16"]["reused"] == [True]
    assert results["models"]["dense16"]["epochs"] == 3


def test_another_module_can_add_a_step_and_a_section(tmp_path: Path, tiny_dataset: Dataset, tiny_npz: Path) -> None:
    def extra(ctx: Context) -> None:
        tr = ctx.trained("dense16", 0)
        ctx.results["extra"] = {"inactive": tr.stats.inactive_count}
        ctx.sections.append(Section("extra", "An added experiment", [Paragraph("added")]))

    settings = _settings(tiny_npz, seeds=1)
    results = reproduce(settings, tmp_path, steps=[*default_steps(settings), Step("extra", "extra", extra)],
                        dataset=tiny_dataset)
    assert results["extra"]["inactive"] == results["models"]["dense16"]["inactive_count"][0]
    ids = re.findall(r'<section id="([^"]+)"', (tmp_path / "report.html").read_text())
    assert ids == [*SECTION_IDS, "extra", "references"]


def test_settings_refuse_zero_seeds_and_choose_epochs() -> None:
    with pytest.raises(VaescopeError, match="--seeds"):
        make_settings(seeds=0)
    quick, full = make_settings(quick=True), make_settings(quick=False)
    assert quick.epochs_for("dense16") < full.epochs_for("dense16")
    assert quick.mode == "quick" and full.mode == "full"


def test_cli_parses_and_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[Any, Path, bool]] = []
    monkeypatch.setattr(reproduce_mod, "reproduce", lambda settings, out, wait: calls.append((settings, out, wait)))
    result = CliRunner().invoke(main, ["reproduce", "--quick", "--seeds", "2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    settings, out, wait = calls[0]
    assert settings.quick and settings.seeds == 2 and out == tmp_path / "r" and not wait
    assert CliRunner().invoke(main, ["reproduce", "--wait", "--out", str(tmp_path / "r")]).exit_code == 0
    assert calls[1][2] is True
    bad = CliRunner().invoke(main, ["reproduce", "--seeds", "0"])
    assert bad.exit_code == 2 and "--seeds" in bad.output and "0" in bad.output


def _markdown_section(report: str, section_id: str) -> str:
    start = report.index(f'<a id="{section_id}"></a>')
    end = report.find('<a id="', start + 1)
    return report[start:end if end != -1 else None]


def _markdown_tables(text: str) -> list[list[list[str]]]:
    """Each ``| a | b |`` table of ``text`` as rows of cells (header first, the ``---`` row dropped),
    with Markdown bold stripped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_the_summary_and_its_tables_say_what_results_json_says(tiny_reproduction) -> None:
    from vaescope.reproduce.sparsity import MODEL_LABELS, MODELS, SPARSE_MODELS

    out, _, _, _ = tiny_reproduction
    results = json.loads((out / "results.json").read_text())
    summary = _markdown_section((out / "report.md").read_text(), "summary")
    models = results["models"]
    for model in MODELS:  # each model's own counts follow its own name (they once followed another's)
        found = re.search(re.escape(MODEL_LABELS[model]) + r" \[([\d, ]+)\]", summary)
        assert found, f"the summary does not name {model}"
        assert [int(v) for v in found.group(1).split(",")] == models[model]["inactive_count"]
    for model in SPARSE_MODELS:
        found = re.search(re.escape(MODEL_LABELS[model]) + r" \[([\d., ]+)\](?! \(the)", summary.split("Largest")[1])
        assert [float(v) for v in found.group(1).split(",")] == [round(v, 3) for v in
                                                                  models[model]["variance_law_max_abs_dev"]]
    for model, count in (("dense16", 8), ("conv16", 3)):
        assert f"{MODEL_LABELS[model]} {models[model]['inactive_count']} (the sparsity article: {count} of 16)" in summary
    generation = results["generation"]
    assert f"by {generation['inactive_zeroed_mean_abs_diff']:.2e} on average" in summary
    assert f"low-KL active ones by {generation['active_zeroed_mean_abs_diff']:.2e}." in summary
    assert "without sampling" not in summary  # the no-KL net is not the no-sampling ablation

    (counts_table,) = _markdown_tables(summary)
    assert counts_table[0][:3] == ["model", "epochs", "inactive per random seed"]
    for row in counts_table[1:]:
        stored = models[row[0]]
        assert int(row[1]) == stored["epochs"] == results["epochs"][row[0]]
        assert [int(v) for v in row[2].split(",")] == stored["inactive_count"]
        assert float(row[4]) == pytest.approx(np.mean(stored["inactive_count"]), abs=0.005)
        assert row[6] == str(stored.get("article_inactive_count") or "-")
    assert [r[0] for r in counts_table[1:]] == list(MODELS)

    table1 = _markdown_section((out / "report.md").read_text(), "table1")
    *tables, comparison = _markdown_tables(table1)
    assert len(tables) == len(SPARSE_MODELS)
    for row, stored in zip(comparison[1:], results["table1"]["comparison"], strict=True):
        assert row[0] == stored["model"] and row[2] == str(stored["article"]) and int(row[3]) == stored["latent_dim"]
        assert [int(v) for v in row[1].split(",")] == models[stored["model"]]["inactive_count"]
    for model, table in zip(SPARSE_MODELS, tables):
        variables = models[model]["first_seed_statistics"]["variables"]
        assert len(table) - 1 == len(variables)
        for row, stored in zip(table[1:], variables):
            assert int(row[0]) == stored["index"]
            assert float(row[1]) == pytest.approx(stored["mu_variance"], rel=1e-3)
            assert float(row[2]) == pytest.approx(stored["sigma2_mean"], rel=1e-3)
            assert float(row[3]) == pytest.approx(stored["variance_law"], abs=1e-4)
            assert float(row[4]) == pytest.approx(stored["kl_mean"], abs=1e-4)
            assert (row[-1] == "INACTIVE") == (not stored["active"])
        inactive = models[model]["first_seed_statistics"]["inactive_count"]
        assert f"{model}, seed 0: {inactive} of {len(variables)} inactive" in table1


def test_results_record_the_code_command_and_machine_that_made_them(tiny_reproduction) -> None:
    out, _, _, _ = tiny_reproduction
    block = json.loads((out / "results.json").read_text())["provenance"]
    assert block["torch"] == torch.__version__ and block["machine"]["cores"] == __import__("os").cpu_count()
    assert block["vaescope"] == __import__("importlib.metadata").metadata.version("vaescope")
    report = (out / "report.md").read_text()
    assert f"vaescope {block['vaescope']}" in report and block["machine"]["cpu"] in report


@pytest.mark.parametrize("argv, expected", [
    (["/venv/bin/vaescope", "inspect", "runs/a"], "vaescope inspect runs/a"),
    (["/site-packages/vaescope/__main__.py", "stats", "r"], "vaescope stats r"),
    (["/site-packages/pytest/__main__.py", "-q"], "/site-packages/pytest/__main__.py -q"),
    (["script.py", "--x"], "script.py --x"),
])
def test_the_recorded_command_is_the_one_typed(monkeypatch, argv, expected):
    from vaescope.core import provenance as provenance_mod

    monkeypatch.setattr(provenance_mod.sys, "argv", argv)
    assert provenance_mod.command_line() == expected
