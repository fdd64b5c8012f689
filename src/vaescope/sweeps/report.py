"""The results of a sweep: ``sweep.json`` and ``sweep.csv`` from the rows, then ``report.html`` and
``report.md`` from ``sweep.json``'s content."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vaescope.core.config import Config
from vaescope.core.provenance import provenance
from vaescope.core.storage import atomic_write_json, atomic_write_text
from vaescope.measures.intrinsic import DEFAULT_TOLERANCE, intrinsic_dimension
from vaescope.measures.lesson import sweep_lesson
from vaescope.measures.oracle_comparison import collapse_thresholds
from vaescope.reports.figures.common import save_png
from vaescope.reports.figures.sweep import SweepCurve, active_count_figure, loss_figure, variance_law_figure
from vaescope.reports.html import Block, Image, Paragraph, Section, Table, write_report
from vaescope.reports.sections import lesson_section
from vaescope.runs.files import rows_to_csv
from vaescope.sweeps.plan import CRITERIA, CSV_COLUMNS, SWEEP_CSV, SWEEP_JSON, Execution


def intrinsic_readings(rows: Sequence[Mapping[str, Any]], grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The intrinsic dimension of each curve: rows grouped by the grid values other than
    ``model.latent_dim``, read under each criterion (failed runs left out)."""

    others = [k for k in grid if k != "model.latent_dim"]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("status") != "failed":
            groups.setdefault(json.dumps({k: row[k] for k in others}), []).append(row)
    readings = []
    for key, members in groups.items():
        entry: dict[str, Any] = {"group": json.loads(key)}
        for criterion in CRITERIA:
            curve: dict[int, list[int]] = {}
            for row in members:
                curve.setdefault(int(row["latent_dim"]), []).append(int(row[f"active_{criterion}"]))
            entry[criterion] = intrinsic_dimension(curve).to_dict()
        readings.append(entry)
    return readings


def write_results(out: Path, config: Config, grid: Mapping[str, Sequence[Any]], seeds: Sequence[int],
                  execution: Execution, rows: Sequence[Mapping[str, Any]],
                  seconds: float | None = None) -> dict[str, Any]:
    """``sweep.json`` (settings, rows, intrinsic dimension) and ``sweep.csv`` (the rows); returns the JSON."""
    results = {"config": config.to_dict(), "grid": dict(grid), "seeds": list(seeds),
               "execution": {"workers": execution.workers, "threads": execution.threads, "ray": execution.ray},
               "criteria": CRITERIA, "rows": list(rows), "intrinsic_dimension": intrinsic_readings(rows, grid),
               "provenance": provenance()}
    results["beta"] = beta_readings(results)
    if seconds is not None:
        results["seconds"] = round(seconds, 1)
    atomic_write_json(out / SWEEP_JSON, results)
    columns = ["run", *grid, *[c for c in CSV_COLUMNS if c != "run"]]
    names = next((r["factors"]["names"] for r in rows if "factors" in r), [])
    columns += [f"{kind}_{n}" for n in names for kind in ("follows", "correlation", "r2")]
    flat = []
    for row in rows:
        cells = {c: (json.dumps(row[c]) if isinstance(row[c], (list, dict)) else row[c]) for c in columns if c in row}
        for match in row.get("factors", {}).get("matches", []):
            cells[f"follows_{match['factor']}"] = "" if match["variable"] is None else match["variable"]
            cells[f"correlation_{match['factor']}"] = round(match["correlation"], 4)
            cells[f"r2_{match['factor']}"] = match.get("r2_active", "")
        flat.append(cells)
    atomic_write_text(out / SWEEP_CSV, rows_to_csv(columns, flat))
    return results


_CRITERION_WORDS = {"mu_variance": "Var(mu) < {mu_variance:g}", "sigma2": "mean sigma^2 > {sigma2_mean:g}",
                    "kl": "mean KL < {kl_mean:g} nats"}


def _group_label(group: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in group.items())


def _members(rows: Sequence[Mapping[str, Any]], group: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("status") != "failed" and all(r.get(k) == v for k, v in group.items())]


def _column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def curves(results: Mapping[str, Any]) -> list[SweepCurve]:
    """One :class:`SweepCurve` per group of the intrinsic-dimension readings."""
    out = []
    for reading in results["intrinsic_dimension"]:
        members = _members(results["rows"], reading["group"])
        columns = [_column(members, key) for key in ("latent_dim", "seed", "active_mu_variance", "test_loss",
                                                     "test_reconstruction", "variance_law_max_abs_dev")]
        out.append(SweepCurve(_group_label(reading["group"]), *columns, intrinsic=reading["mu_variance"]["value"]))
    return out


def _thresholds(results: Mapping[str, Any]) -> dict[str, float]:
    s = results["config"]["stats"]
    return {"mu_variance": s["mu_variance_threshold"], "sigma2_mean": s["sigma2_threshold"], "kl_mean": s["kl_threshold"]}


def _intrinsic_section(results: Mapping[str, Any]) -> Section:
    words = {c: w.format(**_thresholds(results)) for c, w in _CRITERION_WORDS.items()}
    blocks: list[Block] = [Paragraph(
        "How it is read: at each latent size, the median active count over the random seeds; the curve **levels off** "
        "at the smallest latent size L after which the median stays within "
        f"{DEFAULT_TOLERANCE:g} of its value at L at every larger size tried (at least one). The intrinsic "
        "dimension is that median. When no size qualifies (one size only, or the count still grows at the "
        "largest sizes) there is no number: the reason is given instead. After A. Asperti, \"Sparsity in "
        "Variational Autoencoders\": a VAE with no inactive variable wants a larger latent space; inactive "
        "variables mean the latent space is larger than the data needs.")]
    rows = []
    for reading in results["intrinsic_dimension"]:
        for criterion in _CRITERION_WORDS:
            r = reading[criterion]
            medians = ", ".join(f"{s}: {m:g}" for s, m in zip(r["latent_sizes"], r["median_active"]))
            rows.append([_group_label(reading["group"]) or "all runs", words[criterion],
                         f"**{r['value']:g}**" if r["reached"] else "not reached", medians, r["reason"]])
    blocks.append(Table(["curve", "inactive when", "intrinsic dimension", "median active by latent size", "reading"],
                        rows, caption="The main criterion is Var(mu) (the activity verdict); the others are shown beside it."))
    return Section("intrinsic", "The intrinsic dimension", blocks)


def _active_table(results: Mapping[str, Any]) -> Table:
    rows = []
    for reading in results["intrinsic_dimension"]:
        members = _members(results["rows"], reading["group"])
        for size in sorted({int(r["latent_dim"]) for r in members}):
            at = sorted((r for r in members if int(r["latent_dim"]) == size), key=lambda r: r["seed"])
            counts = [r["active_mu_variance"] for r in at]
            rows.append([_group_label(reading["group"]) or "all runs", str(size),
                         ", ".join(f"{c} (seed {r['seed']})" for c, r in zip(counts, at)),
                         f"{np.median(counts):g}", f"{min(counts)}-{max(counts)}",
                         ", ".join(str(r.get("in_between", "")) for r in at)])
    return Table(["curve", "latent size", "active per seed", "median", "spread", "in between, per seed"], rows,
                 caption="In between: variables that are neither clearly on nor clearly off by every rule with half "
                         "a decade to spare (Var(mu), mean sigma^2, KL; see vaescope.measures.criteria): half-active ones.")


def _factor_section(results: Mapping[str, Any]) -> Section | None:
    rows_with = [r for r in results["rows"] if "factors" in r]
    if not rows_with:
        return None
    names = rows_with[0]["factors"]["names"]
    table = []
    for row in sorted(rows_with, key=lambda r: (r["latent_dim"], r["seed"])):
        matches = row["factors"]["matches"]
        followers = {m["variable"] for m in matches if m["variable"] is not None}
        unmatched = [j for j in row["active_variables"] if j not in followers]
        dci = row["factors"].get("dci")
        scores = ([f"{row['factors']['mig']:.2f}", f"{dci['disentanglement']:.2f} / {dci['completeness']:.2f} / "
                   f"{dci['informativeness']:.2f}"] if dci else ["-", "-"])
        table.append([row["run"], f"{row['active_mu_variance']}/{row['latent_dim']}",
                      *[_match_cell(m) for m in matches],
                      ", ".join(f"z{j}" for j in unmatched) or "none", *scores])
    text = (f"The data have {len(names)} known factors ({', '.join(names)}). For each factor, the active "
            "variable whose test-set mean mu_j has the largest absolute Pearson correlation r with it (the sign is "
            "the direction), and R^2: the share of the factor's variance that a least-squares fit on all the "
            "active means explains (linearly; a code can hold a factor along a curve). A variable may follow two "
            "factors, and an active variable may follow none: the last column lists active variables that are no "
            "factor's best match. MIG (Chen et al. 2018; codes and factors in 20 equal-width bins) and DCI "
            "(disentanglement / completeness / informativeness, Eastwood and Williams 2018; one random forest per "
            "factor, R^2 on held-out points) are computed over the active means "
            "(vaescope.measures.factors); 1 is a code that is the factors one by one.")
    settings = next((r["factors"]["dci"]["settings"] for r in rows_with if r["factors"].get("dci")), "")
    return Section("factors", "Which variable follows which factor",
                   [Paragraph(text), Table(["run", "active", *names, "active, no factor's best match", "MIG", "DCI"],
                                           table, caption=f"DCI: {settings}." if settings else "")])


def beta_readings(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """For a sweep over ``loss.beta``: per group of the other grid values, the active counts by beta and,
    on ``synthetic:linear`` data, each variable's collapse threshold against the closed form's
    (:func:`vaescope.measures.oracle_comparison.collapse_thresholds`)."""
    if "loss.beta" not in results["grid"]:
        return []
    others = [k for k in results["grid"] if k != "loss.beta"]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in results["rows"]:
        if row.get("status") != "failed":
            groups.setdefault(json.dumps({k: row[k] for k in others}), []).append(row)
    readings = []
    for key, members in groups.items():
        counts: dict[float, list[int]] = {}
        for row in members:
            counts.setdefault(float(row["loss.beta"]), []).append(int(row["active_mu_variance"]))
        predicted = {float(r["loss.beta"]): r["oracle"]["predicted_active"] for r in members if "oracle" in r}
        entry: dict[str, Any] = {"group": json.loads(key), "active": {str(b): c for b, c in sorted(counts.items())},
                                 "predicted_active": {str(b): n for b, n in sorted(predicted.items())}}
        with_oracle = [r for r in members if "oracle" in r]
        if with_oracle:
            first = with_oracle[0]["oracle"]
            entry["sigma2"] = first["sigma2"]
            entry["thresholds"] = collapse_thresholds(counts, first["eigenvalues"], first["sigma2"])
        readings.append(entry)
    return readings


def _interval(threshold: Mapping[str, Any]) -> str:
    low = "0" if threshold["low"] is None else f"{threshold['low']:g}"
    high = "never (up to the largest beta)" if threshold["high"] is None else f"{threshold['high']:g}"
    return f"({low}, {high}]"


def _beta_section(results: Mapping[str, Any]) -> Section | None:
    readings = results.get("beta") or beta_readings(results)
    if not readings:
        return None
    blocks: list[Block] = [Paragraph(
        "Active variables (Var(mu) >= threshold) against the KL weight beta. On linear-Gaussian data the closed form "
        "(probabilistic PCA with noise beta sigma^2: Tipping and Bishop; Lucas et al.) predicts the count, and each "
        "variable's collapse at beta_j = lambda_j / sigma^2; a measured threshold lies between the largest beta at "
        "which the variable of that rank is active (median over seeds) and the next beta tried.")]
    for reading in readings:
        label = _group_label(reading["group"]) or "all runs"
        rows = [[label, b, ", ".join(map(str, c)), f"{np.median(c):g}", str(reading["predicted_active"].get(b, "-"))]
                for b, c in reading["active"].items()]
        blocks.append(Table(["curve", "beta", "active per seed", "median", "predicted (closed form)"], rows))
        if "thresholds" in reading:
            trows = [[f"{t['index']}", f"{t['eigenvalue']:.4g}", f"{t['predicted']:.4g}", _interval(t),
                      "yes" if t["agrees"] else "no"] for t in reading["thresholds"]]
            blocks.append(Table(["variable (by eigenvalue)", "lambda_j", "predicted beta_j = lambda_j / sigma^2",
                                 "measured: collapses in", "agrees"], trows,
                                caption=f"sigma^2 = {reading['sigma2']:g}; {label}."))
    return Section("beta", "Active variables against beta", blocks)


def _dimension_section(results: Mapping[str, Any]) -> Section | None:
    rows_with = [r for r in results["rows"] if r.get("dimension")]
    if not rows_with:
        return None
    data = rows_with[0]["dimension"]["data"]
    ks = list(data["mle"])
    text = (f"Independent estimates of the intrinsic dimension (scikit-dimension: TwoNN; Levina-Bickel MLE at k "
            f"neighbours), beside each run's active count. The data: TwoNN {data['twonn']:.2f}, "
            + ", ".join(f"MLE k = {k} {v:.2f}" for k, v in data["mle"].items()) + f" ({data['settings']}).")
    table = []
    for row in sorted(rows_with, key=lambda r: (r["latent_dim"], r["seed"], r["run"])):
        codes = row["dimension"]["codes"]
        cells = ([f"{codes['twonn']:.2f}", *[f"{codes['mle'][k]:.2f}" for k in ks]] if codes
                 else ["-"] * (1 + len(ks)))
        table.append([row["run"], f"{row['active_mu_variance']}/{row['latent_dim']}", *cells])
    return Section("dimension", "Intrinsic dimension, estimated", [Paragraph(text), Table(
        ["run", "active", "TwoNN (active means)", *[f"MLE k = {k}" for k in ks]], table,
        caption="On the test-set posterior means of each run's active variables, same subsample size and seed.")])


def _match_cell(match: Mapping[str, Any]) -> str:
    if match["variable"] is None:
        return "-"
    r2 = f"; R^2 {match['r2_active']:.2f}" if "r2_active" in match else ""
    return f"z{match['variable']} (r {match['correlation']:+.2f}{r2})"


def _runs_table(results: Mapping[str, Any]) -> Table:
    grid = list(results["grid"])
    rows = []
    for r in results["rows"]:
        if r.get("status") == "failed":
            rows.append([r["run"], *[str(r.get(k, "")) for k in grid], str(r["seed"]), "failed", "", "", "", "",
                         r.get("error", "")])
            continue
        rows.append([r["run"], *[json.dumps(r[k]) if isinstance(r[k], list) else str(r[k]) for k in grid],
                     str(r["seed"]), r["status"], f"{r['active_mu_variance']}/{r['active_sigma2']}/{r['active_kl']}",
                     f"{r['test_loss']:.2f}", f"{r['test_reconstruction']:.2f}", f"{r['variance_law_max_abs_dev']:.3f}",
                     f"{r['seconds']:.0f} s training"])
    return Table(["run", *grid, "seed", "status", "active (Var(mu) / sigma^2 / KL)", "test loss", "reconstruction",
                  "max abs(law - 1)", "time / error"], rows,
                 highlight=frozenset(i for i, r in enumerate(results["rows"]) if r.get("status") == "failed"))


def write_sweep_report(out: str | Path, results: Mapping[str, Any]) -> Path:
    """Figures into ``out/figures/``, then ``report.html`` and ``report.md``; returns the HTML path."""
    out = Path(out)
    drawn = curves(results)
    sections: list[Section] = [_intrinsic_section(results)]
    if drawn:
        save_png(active_count_figure(drawn), out / "figures" / "sweep_active.png")
        save_png(loss_figure(drawn), out / "figures" / "sweep_loss.png")
        save_png(variance_law_figure(drawn), out / "figures" / "sweep_variance_law.png")
        sections += [
            Section("active", "Active variables against latent size", [
                Image("figures/sweep_active.png", "Each dot a seed, the line the median, the band the spread; the "
                      "dashed diagonal is every variable active."), _active_table(results)]),
            Section("loss", "Test loss and reconstruction against latent size", [
                Image("figures/sweep_loss.png", "Negative ELBO and its reconstruction term on the test split, "
                      "with the evaluation noise of metrics.csv.")]),
            Section("variance-law", "The variance law", [
                Paragraph("Every variable, active or not, should obey Var_X(mu_j) + mean_X sigma_j^2 ~ 1 at "
                          "convergence (A. Asperti, \"Sparsity in Variational Autoencoders\"); shown is the largest "
                          "deviation over the variables of each run."),
                Image("figures/sweep_variance_law.png")]),
        ]
    for extra in (_beta_section(results), _dimension_section(results), _factor_section(results)):
        if extra is not None:
            sections.append(extra)
    sections.append(Section("runs", "Every run", [_runs_table(results)]))
    sections.append(lesson_section(sweep_lesson(results["rows"], _thresholds(results)["mu_variance"])))
    cfg = results["config"]
    grid = "; ".join(f"`{k}` = {', '.join(map(str, v))}" for k, v in results["grid"].items()) or "none"
    intro = [Paragraph(
        f"Config `{cfg['name']}` on data `{cfg['data']['source']}`, {cfg['train']['epochs']} epochs; grid: {grid}; "
        f"seeds {', '.join(map(str, results['seeds']))}: {len(results['rows'])} runs, each an ordinary run "
        "directory under `runs/`. Statistics are over the test split. Every number is in `sweep.json`.")]
    html_path, _ = write_report(out, "vaescope sweep: active variables against latent size", sections, intro)
    return html_path
