"""The sweep report's known answers: active counts against beta with each variable's collapse threshold
beside the closed form's, the intrinsic-dimension estimates beside the active count, MIG and DCI
beside the factor matches; each table's cells read back against sweep.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vaescope.core import config as config_mod
from vaescope.sweeps.execute import sweep
from vaescope.sweeps.report import _beta_section, _factor_section, beta_readings


def _rows(betas_and_counts, eigenvalues, sigma2=0.5):
    rows = []
    for beta, counts in betas_and_counts:
        for seed, count in enumerate(counts):
            predicted = int(np.sum(np.asarray(eigenvalues) > beta * sigma2))
            rows.append({"run": f"beta{beta}-seed{seed}", "loss.beta": beta, "seed": seed, "status": "trained",
                         "active_mu_variance": count, "latent_dim": len(eigenvalues),
                         "oracle": {"sigma2": sigma2, "beta": beta, "eigenvalues": list(eigenvalues),
                                    "predicted_active": predicted}})
    return rows


def test_beta_readings_and_their_table_by_hand():
    # lambda = (4, 1, 0.25), sigma2 = 0.5: beta_j = 8, 2, 0.5; counts 3, 2, 1, 0 at beta 0.25, 1, 4, 16
    rows = _rows([(0.25, [3]), (1.0, [2, 2]), (4.0, [1, 2]), (16.0, [0])], [4.0, 1.0, 0.25])
    results = {"grid": {"loss.beta": [0.25, 1.0, 4.0, 16.0]}, "rows": rows}
    (reading,) = beta_readings(results)
    assert reading["active"] == {"0.25": [3], "1.0": [2, 2], "4.0": [1, 2], "16.0": [0]}
    assert reading["predicted_active"] == {"0.25": 3, "1.0": 2, "4.0": 1, "16.0": 0}
    # the median at 4.0 is 1.5 > 1: variable 1 counts as active there -> (4, 16] for it, against 2: disagrees
    assert [(t["low"], t["high"], t["agrees"]) for t in reading["thresholds"]] == [
        (4.0, 16.0, True), (4.0, 16.0, False), (0.25, 1.0, True)]
    section = _beta_section(results)
    counts, thresholds = section.blocks[1], section.blocks[2]
    assert counts.rows[2] == ["all runs", "4.0", "1, 2", "1.5", "1"]
    assert thresholds.rows[1] == ["1", "1", "2", "(4, 16]", "no"]
    assert _beta_section({"grid": {"model.latent_dim": [2, 4]}, "rows": []}) is None


def test_the_factor_table_shows_mig_and_dci_of_each_run():
    row = {"run": "r", "latent_dim": 4, "seed": 0, "active_mu_variance": 2, "active_variables": [0, 1],
           "factors": {"names": ["a", "b"], "matches": [{"factor": "a", "variable": 0, "correlation": 0.9},
                                                        {"factor": "b", "variable": 1, "correlation": -0.8}],
                       "mig": 0.4321, "dci": {"disentanglement": 0.812, "completeness": 0.734, "informativeness": 0.9,
                                              "settings": "forest"}}}
    table = _factor_section({"rows": [row]}).blocks[1]
    assert table.rows[0][-2:] == ["0.43", "0.81 / 0.73 / 0.90"] and table.caption == "DCI: forest."


def test_a_beta_sweep_on_linear_data_writes_the_closed_form_beside_each_run(tmp_path):
    # lambda = (4, 1, 0.25) in 3 dimensions, sigma^2 0.5, latent 3: thresholds 8, 2, 0.5. Three epochs only:
    # the rows carry the closed form's counts and the estimates; the report reads them back.
    cfg = config_mod.resolve("linear", None, ["model.latent_dim=3", "data.source=synthetic:linear=4,1,0.25,n=1200,test=300"],
                             **{"train.epochs": 3})
    rows = sweep(cfg, tmp_path / "sw", {"loss.beta": [1.0, 16.0]}, seeds=1, workers=1, progress=False)
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    by_beta = {r["loss.beta"]: r for r in rows}
    assert by_beta[1.0]["oracle"]["predicted_active"] == 2 and by_beta[16.0]["oracle"]["predicted_active"] == 0
    assert by_beta[1.0]["oracle"]["eigenvalues"] == pytest.approx([4.0, 1.0, 0.25], rel=0.15)  # the sample spectrum
    assert saved["beta"][0]["predicted_active"] == {"1.0": 2, "16.0": 0}
    data = by_beta[1.0]["dimension"]["data"]
    assert data["n"] == 300 and data["ambient"] == 3  # the test split, all 300 points
    markdown = (tmp_path / "sw" / "report.md").read_text()
    assert "Active variables against beta" in markdown and "Intrinsic dimension, estimated" in markdown
    assert f"TwoNN {data['twonn']:.2f}" in markdown
